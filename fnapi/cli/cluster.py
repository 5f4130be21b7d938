"""``fnapi slurm`` and ``fnapi estimate``: take a recipe to a cluster, and know beforehand if it fits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def slurm(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML file"),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="machines (default: distributed.slurm.nodes, 1)"),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help="GPUs per machine, one process each"),
    procs_per_node: Optional[int] = typer.Option(None, "--procs-per-node",
                                                 help="processes per machine (default: one per GPU, 1 without)"),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="CPU cores per machine"),
    mem: Optional[str] = typer.Option(None, "--mem", help="memory per machine, e.g. 64G"),
    time: Optional[str] = typer.Option(None, "--time", help="wall-time limit, HH:MM:SS or D-HH:MM:SS (required)"),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition"),
    account: Optional[str] = typer.Option(None, "--account", help="SLURM account to charge"),
    qos: Optional[str] = typer.Option(None, "--qos", help="SLURM quality of service"),
    constraint: Optional[str] = typer.Option(None, "--constraint", help="SLURM node constraint, e.g. a100"),
    env: Optional[str] = typer.Option(None, "--env", help="shell line activating the environment, e.g. "
                                                          "'conda activate fnapi' (default: the current one)"),
    log_dir: Optional[str] = typer.Option(None, "--log-dir", help="folder for the job's logs (default slurm_logs)"),
    port: Optional[int] = typer.Option(None, "--port", help="rendezvous port (default: derived from the job id)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="script file (default: <recipe name>.sbatch)"),
    do_submit: bool = typer.Option(False, "--submit", help="submit the script with sbatch"),
) -> None:
    """Write a SLURM script that runs the recipe on cluster nodes.

    The script starts torchrun (or accelerate launch, for an accelerate config in the recipe) on every
    node; the nodes meet at the first one. Flags override the recipe's distributed.slurm section. Prints the script's path (and the job id
    with --submit).
    """
    from fnapi.cluster import check_data_covers, processes_per_node, slurm_settings, submit, write_script
    from fnapi.recipe import Recipe

    recipe = Recipe.from_yaml(recipe_path)
    settings = slurm_settings(recipe, nodes=nodes, gpus_per_node=gpus_per_node, processes_per_node=procs_per_node,
                              cpus_per_task=cpus_per_task, mem=mem, time=time, partition=partition,
                              account=account, qos=qos, constraint=constraint, env=env, log_dir=log_dir,
                              master_port=port)
    total = settings.nodes * processes_per_node(settings)
    check_data_covers(recipe, total)
    script = write_script(recipe_path, recipe, settings, out=out)
    print(f"wrote {script} ({settings.nodes} node(s), {total} process(es), time limit {settings.time})")
    if do_submit:
        print(f"submitted job {submit(script)}")
    else:
        print(f"submit it with: sbatch {script}")


def estimate(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML file"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: this machine's best device)"),
    memory: Optional[str] = typer.Option(None, "--memory", help="memory of the device to check against, e.g. 24G "
                                                                 "(default: detected)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Predict the peak memory of a recipe's stages.

    Lists each stage's biggest terms; warns (and exits 1) when a stage will not fit the device's memory.
    """
    import json

    from fnapi.estimate import estimate_recipe, parse_size, render_text

    result = estimate_recipe(recipe_path, device=device, memory=parse_size(memory) if memory else None)
    print(json.dumps(result.to_dict(), indent=2) if as_json else render_text(result))
    if not result.fits:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("slurm")(slurm)
    app.command("estimate")(estimate)
