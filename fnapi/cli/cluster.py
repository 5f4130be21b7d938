"""``fnapi slurm`` and ``fnapi estimate``: take a recipe to a cluster, and know beforehand if it fits."""

from __future__ import annotations

from pathlib import Path

import typer


def slurm(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML file"),
    nodes: int | None = typer.Option(None, "--nodes", help="machines (default: distributed.slurm.nodes, 1)"),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", help="GPUs per machine, one process each"),
    procs_per_node: int | None = typer.Option(None, "--procs-per-node",
                                                 help="processes per machine (default: one per GPU, 1 without)"),
    cpus_per_task: int | None = typer.Option(None, "--cpus-per-task", help="CPU cores per machine"),
    mem: str | None = typer.Option(None, "--mem", help="memory per machine, e.g. 64G"),
    time: str | None = typer.Option(None, "--time", help="wall-time limit, HH:MM:SS or D-HH:MM:SS (required)"),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition"),
    account: str | None = typer.Option(None, "--account", help="SLURM account to charge"),
    qos: str | None = typer.Option(None, "--qos", help="SLURM quality of service"),
    constraint: str | None = typer.Option(None, "--constraint", help="SLURM node constraint, e.g. a100"),
    env: str | None = typer.Option(None, "--env", help="shell line activating the environment, e.g. "
                                                          "'conda activate fnapi' (default: the current one)"),
    log_dir: str | None = typer.Option(None, "--log-dir", help="folder for the job's logs (default slurm_logs)"),
    port: int | None = typer.Option(None, "--port", help="rendezvous port (default: derived from the job id)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="script file (default: <recipe name>.sbatch)"),
    output: Path | None = typer.Option(None, "--output", help="continual recipes: the results folder (default: the "
                                                              "recipe's output.dir)"),
    do_submit: bool = typer.Option(False, "--submit", help="submit the script with sbatch"),
) -> None:
    """Write a SLURM script that runs the recipe on cluster nodes.

    A continual recipe gets an array job instead, one element per sequence (method, order, seed)
    and per seed's single-task baselines, and a second script that summarises the finished elements
    into one continual.json once the array has ended.

    The script starts torchrun (or accelerate launch, for an accelerate config in the recipe) on every
    node; the nodes meet at the first one. Flags override the recipe's distributed.slurm section. Prints the script's path (and the job id
    with --submit).
    """
    from fnapi.cluster import check_data_covers, processes_per_node, slurm_settings, submit, write_script
    from fnapi.recipe import ContinualRecipe, load_recipe

    recipe = load_recipe(recipe_path)
    settings = slurm_settings(recipe, nodes=nodes, gpus_per_node=gpus_per_node, processes_per_node=procs_per_node,
                              cpus_per_task=cpus_per_task, mem=mem, time=time, partition=partition,
                              account=account, qos=qos, constraint=constraint, env=env, log_dir=log_dir,
                              master_port=port)
    if isinstance(recipe, ContinualRecipe):
        _continual_job(recipe_path, recipe, settings, out, output, do_submit)
        return
    total = settings.nodes * processes_per_node(settings)
    check_data_covers(recipe, total)
    script = write_script(recipe_path, recipe, settings, out=out)
    print(f"wrote {script} ({settings.nodes} node(s), {total} process(es), time limit {settings.time})")
    if do_submit:
        print(f"submitted job {submit(script)}")
    else:
        print(f"submit it with: sbatch {script}")


def _continual_job(recipe_path: Path, recipe, settings, out: Path | None, output: Path | None,
                   do_submit: bool) -> None:
    from fnapi.cluster import submit_continual, write_continual_scripts
    from fnapi.continual_learning.runner import elements
    from fnapi.preflight import check_continual

    check_continual(recipe, str(recipe_path))
    array, summary = write_continual_scripts(recipe_path, recipe, settings, out=out, output=output)
    print(f"wrote {array} (array of {len(elements(recipe))} elements, time limit {settings.time} each) and {summary}")
    if do_submit:
        array_id, summary_id = submit_continual(array, summary)
        print(f"submitted array job {array_id} and summary job {summary_id} (runs after the array)")
    else:
        print(f"submit them with: jid=$(sbatch --parsable {array}) && sbatch --dependency=afterany:$jid {summary}")


def estimate(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML file"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: this machine's best device)"),
    memory: str | None = typer.Option(None, "--memory", help="memory of the device to check against, e.g. 24G "
                                                                 "(default: detected)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    timed: bool = typer.Option(False, "--time", help="also time every stage on this machine (loads the model and "
                                                     "measures its throughput: seconds to a minute)"),
) -> None:
    """Predict the peak memory of a recipe's stages, and with --time how long each takes here.

    Lists each stage's biggest terms; warns (and exits 1) when a stage will not fit the device's memory.
    """
    import json

    from fnapi.estimate import estimate_recipe, parse_size, render_text

    result = estimate_recipe(recipe_path, device=device, memory=parse_size(memory) if memory else None)
    duration = _time_recipe(recipe_path) if timed else None
    if as_json:
        print(json.dumps({**result.to_dict(), **({"time": duration.to_dict()} if duration else {})}, indent=2))
    else:
        print(render_text(result))
        if duration is not None:
            from fnapi.timing import format_duration

            print(f"\ntime on this machine: {duration.describe()}")
            for item in duration.stages:
                print(f"  {item.stage:<12} {format_duration(item.seconds):>12}  {item.detail}")
    if not result.fits:
        raise typer.Exit(1)


def _time_recipe(recipe_path: Path):
    import sys
    import time

    from fnapi.events import console_sink
    from fnapi.models.loading import load_model
    from fnapi.recipe import Recipe
    from fnapi.timing import estimate_time

    recipe = Recipe.from_yaml(recipe_path)
    started = time.perf_counter()
    sink = console_sink(sys.stderr)
    loaded = load_model(recipe.model, sink=sink)
    return estimate_time(recipe, loaded, load_seconds=time.perf_counter() - started, sink=sink)


def register(app: typer.Typer) -> None:
    app.command("slurm")(slurm)
    app.command("estimate")(estimate)
