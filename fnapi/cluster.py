"""SLURM batch scripts that replay a recipe on a cluster through torchrun or accelerate launch.

fnapi launches nothing itself: the script asks SLURM for nodes, and ``srun`` starts one launcher
per node (``torchrun``, or ``accelerate launch`` when the recipe names an accelerate config for
FSDP/DeepSpeed). The launchers meet at the allocation's first node (c10d rendezvous) and start one
``fnapi run`` process per GPU; :mod:`fnapi.distributed` does the rest.

Settings come from the recipe's ``distributed.slurm`` section, overridden by ``fnapi slurm``
flags. The script records where it came from (recipe file and fingerprint, fnapi version) and
refuses to run if the recipe file changed after it was written. Submitting the same script again
after a time-out or preemption resumes the run from its last checkpoint.

>>> from fnapi.recipe import Recipe
>>> settings = slurm_settings(Recipe(), time="01:00:00", nodes=2)
>>> settings.nodes, settings.time
(2, '01:00:00')
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fnapi.errors import FnapiError, HardwareError, Problem, RecipeError
from fnapi.paths import atomic_write_text
from fnapi.recipe import ContinualRecipe, Recipe, SlurmSection, validation_problems

#: Flags of ``fnapi slurm`` and the recipe fields they override.
FLAG_FIELDS = {"nodes": "--nodes", "gpus_per_node": "--gpus-per-node", "processes_per_node": "--procs-per-node",
               "cpus_per_task": "--cpus-per-task", "mem": "--mem", "time": "--time", "partition": "--partition",
               "account": "--account", "qos": "--qos", "constraint": "--constraint", "env": "--env",
               "log_dir": "--log-dir", "master_port": "--port"}


def slurm_settings(recipe: Recipe | ContinualRecipe, **overrides: Any) -> SlurmSection:
    """The recipe's ``distributed.slurm`` settings with ``overrides`` (None means "keep") applied.

    Raises :class:`RecipeError` naming the field and flag for a missing time limit or a bad value,
    and :class:`HardwareError` for a recipe that needs GPUs in a job that asks for none.
    """
    if isinstance(recipe, ContinualRecipe):
        base = recipe.slurm
    else:
        base = recipe.distributed.slurm if recipe.distributed is not None else SlurmSection()
    unknown = set(overrides) - set(FLAG_FIELDS)
    if unknown:
        raise TypeError(f"unknown SLURM settings: {', '.join(sorted(unknown))}")
    values = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    from pydantic import ValidationError

    try:
        settings = SlurmSection.model_validate(values)
    except ValidationError as exc:
        section = "slurm" if isinstance(recipe, ContinualRecipe) else "distributed.slurm"
        problems = [Problem(f"{FLAG_FIELDS.get(p.path, '')} / {section}.{p.path}", p.message)
                    for p in validation_problems(exc, SlurmSection)]
        raise RecipeError("invalid SLURM settings:\n  " + "\n  ".join(map(str, problems)), problems=problems) from None
    if settings.time is None:
        raise RecipeError("the SLURM time limit is missing",
                          "give --time HH:MM:SS (or D-HH:MM:SS), or set "
                          f"{'slurm' if isinstance(recipe, ContinualRecipe) else 'distributed.slurm'}.time in the recipe")
    gpu_only = _gpu_only_features(recipe)
    if settings.gpus_per_node == 0 and gpu_only:
        raise HardwareError(f"the recipe asks for {', '.join(gpu_only)}, which need CUDA GPUs, but the job asks for none",
                            "give --gpus-per-node 1 (or more), or change the recipe")
    return settings


def _gpu_only_features(recipe: Recipe | ContinualRecipe) -> list[str]:
    from fnapi import distributed

    features = []
    if recipe.model.quantization != "none":
        features.append(f"model.quantization {recipe.model.quantization}")
    if recipe.train.method == "qlora":
        features.append("train.method qlora")
    if isinstance(recipe, ContinualRecipe):
        features += [f"methods[{i}].train.method qlora" for i, m in enumerate(recipe.methods)
                     if m.train.get("method") == "qlora"]
    if recipe.model.device == "cuda":
        features.append("model.device cuda")
    scaling = getattr(recipe, "distributed", None)
    if scaling is not None and scaling.accelerate_config:
        kind = distributed.accelerate_kind(scaling.accelerate_config)
        if kind != "DDP":
            features.append(f"{kind} (distributed.accelerate_config)")
    return features


def check_data_covers(recipe: Recipe, processes: int) -> None:
    """Refuse a job with more processes than training examples (each process needs one).

    Data that cannot be read here (for example a hub dataset on an offline login node) is left to
    the run, which checks again.
    """
    from fnapi.data import load_data

    try:
        examples = len(load_data(recipe.data, seed=recipe.seed).train)
    except FnapiError:
        return
    if examples < processes:
        raise RecipeError(
            f"{recipe.data.path}: {examples} training examples for {processes} processes; every process needs at "
            "least one", f"ask for at most {examples} processes (--nodes, --gpus-per-node), or add data")


def processes_per_node(settings: SlurmSection) -> int:
    """One process per GPU; without GPUs ``processes_per_node`` (default 1)."""
    if settings.processes_per_node is not None:
        return settings.processes_per_node
    return settings.gpus_per_node or 1


def activation_line(settings: SlurmSection) -> str:
    """The shell line that makes ``fnapi`` available: the given one, else the environment running now."""
    if settings.env:
        return settings.env
    prefix = Path(sys.prefix)
    if os.environ.get("CONDA_PREFIX") and Path(os.environ["CONDA_PREFIX"]) == prefix:
        return f'eval "$(conda shell.bash hook)" && conda activate {shlex.quote(str(prefix))}'
    if sys.prefix != sys.base_prefix and (prefix / "bin" / "activate").is_file():
        return f"source {shlex.quote(str(prefix / 'bin' / 'activate'))}"
    return f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"'


def slurm_script(recipe_path: str | os.PathLike, recipe: Recipe, settings: SlurmSection, *,
                 workdir: str | os.PathLike | None = None) -> str:
    """The text of an sbatch script that runs ``recipe_path`` with ``settings``.

    Relative paths in the recipe resolve against ``workdir`` (default: the current directory),
    where the job starts. Logs go to ``settings.log_dir`` (relative to ``workdir``).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    recipe_file = Path(recipe_path).resolve()
    file_hash = hashlib.sha256(recipe_file.read_bytes()).hexdigest()
    logs = (workdir / settings.log_dir).resolve()
    per_node = processes_per_node(settings)
    accelerate_config = recipe.distributed.accelerate_config if recipe.distributed is not None else None
    written = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()

    directives = [
        f"--job-name={_job_name(recipe.name)}",
        f"--nodes={settings.nodes}",
        "--ntasks-per-node=1",  # one launcher per node; it starts the per-GPU processes
        f"--cpus-per-task={settings.cpus_per_task}",
    ]
    if settings.gpus_per_node:
        directives.append(f"--gres=gpu:{settings.gpus_per_node}")
    if settings.mem:
        directives.append(f"--mem={settings.mem}")
    directives.append(f"--time={settings.time}")
    for flag in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, flag)
        if value:
            directives.append(f"--{flag}={value}")
    directives += [f"--chdir={workdir}", f"--output={logs}/%x-%j.out", f"--error={logs}/%x-%j.err"]

    port = (f"MASTER_PORT={settings.master_port}" if settings.master_port else
            "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))  # from the job id: jobs sharing a node do not collide")
    if accelerate_config:
        config = Path(accelerate_config).expanduser()
        config = config if config.is_absolute() else workdir / config
        launch = [
            f"export FNAPI_ACCELERATE_CONFIG={shlex.quote(str(config))}",
            "# $SLURM_NODEID differs per node, so it is read inside the task started by srun.",
            "srun --kill-on-bad-exit=1 bash -c 'accelerate launch \\",
            '  --config_file "$FNAPI_ACCELERATE_CONFIG" \\',
            '  --num_machines "$SLURM_JOB_NUM_NODES" \\',
            f'  --num_processes "$((SLURM_JOB_NUM_NODES * {per_node}))" \\',
            '  --machine_rank "$SLURM_NODEID" \\',
            '  --main_process_ip "$MASTER_ADDR" \\',
            '  --main_process_port "$MASTER_PORT" \\',
            "  --rdzv_backend c10d \\",
            "  \"$(command -v fnapi)\" run \"$FNAPI_RECIPE\"'",
        ]
    else:
        launch = [
            "srun --kill-on-bad-exit=1 torchrun \\",
            '  --nnodes "$SLURM_JOB_NUM_NODES" \\',
            f"  --nproc_per_node {per_node} \\",
            '  --rdzv_id "$SLURM_JOB_ID" \\',
            "  --rdzv_backend c10d \\",
            '  --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \\',
            '  "$(command -v fnapi)" run "$FNAPI_RECIPE"',
        ]
    threads = max(settings.cpus_per_task // per_node, 1)
    lines = [
        "#!/bin/bash",
        f"# fnapi SLURM job for recipe {recipe.name!r}, written by fnapi {package_version()} at {written}",
        f"# recipe: {recipe_file}",
        f"# recipe fingerprint {recipe.fingerprint()} (as in report.json), file sha256 {file_hash}",
        f"# {settings.nodes} node(s) x {per_node} process(es) via "
        f"{'accelerate launch (' + str(accelerate_config) + ')' if accelerate_config else 'torchrun (DDP)'}",
        "# Submit: sbatch THIS_FILE. Submitting it again after a time-out resumes from the last checkpoint.",
        *[f"#SBATCH {d}" for d in directives],
        "",
        "set -euo pipefail",
        "",
        activation_line(settings),
        'command -v fnapi >/dev/null || { echo "error: fnapi is not on PATH after activating the environment" >&2; exit 2; }',
        "",
        f"export FNAPI_RECIPE={shlex.quote(str(recipe_file))}",
        f'echo "{file_hash}  $FNAPI_RECIPE" | sha256sum --check --status || {{',
        '  echo "error: $FNAPI_RECIPE changed after this script was written; write it again with fnapi slurm" >&2',
        "  exit 2",
        "}",
        "",
        "# The launchers of all nodes meet at the first node of the allocation.",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        port,
        "export MASTER_ADDR MASTER_PORT",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}",
        f'echo "fnapi: $SLURM_JOB_NUM_NODES node(s) x {per_node} process(es), rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
        *launch,
        "",
    ]
    return "\n".join(lines)


def package_version() -> str:
    """The installed fnapi version (the distribution is called fntui)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fntui")
    except PackageNotFoundError:
        return "unknown"


def _job_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "fnapi"


def write_script(recipe_path: str | os.PathLike, recipe: Recipe, settings: SlurmSection, *,
                 out: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None) -> Path:
    """Write the sbatch script (default ``<recipe name>.sbatch`` in ``workdir``) and create the log folder.

    SLURM does not create the folder of ``--output`` itself; a job whose log folder is missing
    fails without a word, so it is made here.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    target = Path(out) if out is not None else workdir / f"{_job_name(recipe.name)}.sbatch"
    text = slurm_script(recipe_path, recipe, settings, workdir=workdir)
    (workdir / settings.log_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    target.chmod(0o755)
    return target


def submit(script: str | os.PathLike, *options: str) -> str:
    """Submit ``script`` with ``sbatch`` (and ``options`` before it) and return the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise HardwareError(f"sbatch is not on PATH, so {script} was written but not submitted",
                            f"submit it from a SLURM login node: sbatch {script}")
    done = subprocess.run([sbatch, *options, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise FnapiError(f"sbatch refused {script}: {(done.stderr or done.stdout).strip()}",
                         "check partition, account and limits with your cluster's documentation (sinfo, sacctmgr)")
    found = re.search(r"(\d+)\s*$", done.stdout.strip())
    if not found:
        raise FnapiError(f"sbatch accepted {script} but printed no job id: {done.stdout.strip()!r}")
    return found.group(1)


# ---- continual recipes: an array job ---------------------------------------------------------------

def continual_scripts(recipe_path: str | os.PathLike, recipe: ContinualRecipe, settings: SlurmSection, *,
                      output: str | os.PathLike | None = None,
                      workdir: str | os.PathLike | None = None) -> tuple[str, str]:
    """The texts of two sbatch scripts for a continual recipe: an array job with one element per
    unit of work (each sequence, and each seed's single-task baselines; see
    :func:`fnapi.continual_learning.runner.elements`), and the step that summarises the finished elements
    into one continual.json (submitted after the array, ``--dependency=afterany``).

    Every element is one process (a sequence trains one task at a time), so ``settings.nodes`` and
    processes per node do not apply; each element gets ``gpus_per_node`` GPUs (0: CPU only).
    """
    from fnapi.continual_learning.runner import elements

    workdir = Path(workdir or os.getcwd()).resolve()
    recipe_file = Path(recipe_path).resolve()
    file_hash = hashlib.sha256(recipe_file.read_bytes()).hexdigest()
    logs = (workdir / settings.log_dir).resolve()
    folder = Path(output) if output is not None else recipe.output_dir()
    folder = folder if folder.is_absolute() else workdir / folder
    units = elements(recipe)
    written = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    common = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={settings.cpus_per_task}"]
    if settings.gpus_per_node:
        common.append(f"--gres=gpu:{min(settings.gpus_per_node, 1)}")
    if settings.mem:
        common.append(f"--mem={settings.mem}")
    for flag in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, flag)
        if value:
            common.append(f"--{flag}={value}")
    header = [
        "#!/bin/bash",
        f"# fnapi SLURM job for continual recipe {recipe.name!r}, written by fnapi {package_version()} at {written}",
        f"# recipe: {recipe_file}",
        f"# recipe fingerprint {recipe.fingerprint()}, file sha256 {file_hash}",
    ]
    check = [
        "set -euo pipefail",
        "",
        activation_line(settings),
        'command -v fnapi >/dev/null || { echo "error: fnapi is not on PATH after activating the environment" >&2; exit 2; }',
        "",
        f"export FNAPI_RECIPE={shlex.quote(str(recipe_file))}",
        f"export FNAPI_OUTPUT={shlex.quote(str(folder))}",
        f'echo "{file_hash}  $FNAPI_RECIPE" | sha256sum --check --status || {{',
        '  echo "error: $FNAPI_RECIPE changed after this script was written; write it again with fnapi slurm" >&2',
        "  exit 2",
        "}",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{settings.cpus_per_task}}}",
        "",
    ]
    listing = [f"#   {number}: {unit.describe()}" for number, unit in enumerate(units)]
    array_script = "\n".join([
        *header,
        f"# {len(units)} elements, one per unit of work (resubmitting resumes the unfinished ones):",
        *listing,
        f"#SBATCH --job-name={_job_name(recipe.name)}",
        f"#SBATCH --array=0-{len(units) - 1}",
        *[f"#SBATCH {d}" for d in common],
        f"#SBATCH --time={settings.time}",
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --output={logs}/%x-%A_%a.out",
        f"#SBATCH --error={logs}/%x-%A_%a.err",
        "",
        *check,
        'fnapi continual "$FNAPI_RECIPE" --output "$FNAPI_OUTPUT" --element "$SLURM_ARRAY_TASK_ID"',
        "",
    ])
    summary_script = "\n".join([
        *header,
        "# Summarises the finished elements of the array into continual.json, continual.md and matrix.png.",
        f"#SBATCH --job-name={_job_name(recipe.name)}-summary",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=00:15:00",
        *[f"#SBATCH --{flag}={getattr(settings, flag)}" for flag in ("partition", "account", "qos")
          if getattr(settings, flag)],
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --output={logs}/%x-%j.out",
        f"#SBATCH --error={logs}/%x-%j.err",
        "",
        *check,
        'fnapi continual "$FNAPI_RECIPE" --output "$FNAPI_OUTPUT" --summarize',
        "",
    ])
    return array_script, summary_script


def write_continual_scripts(recipe_path: str | os.PathLike, recipe: ContinualRecipe, settings: SlurmSection, *,
                            out: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
                            workdir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write the array script (default ``<recipe name>.sbatch``) and the summary script beside it
    (``<name>-summary.sbatch``), and create the log folder."""
    workdir = Path(workdir or os.getcwd()).resolve()
    target = Path(out) if out is not None else workdir / f"{_job_name(recipe.name)}.sbatch"
    summary = target.with_name(f"{target.stem}-summary{target.suffix or '.sbatch'}")
    array_text, summary_text = continual_scripts(recipe_path, recipe, settings, output=output, workdir=workdir)
    (workdir / settings.log_dir).mkdir(parents=True, exist_ok=True)
    for path, text in ((target, array_text), (summary, summary_text)):
        atomic_write_text(path, text)
        path.chmod(0o755)
    return target, summary


def submit_continual(array: str | os.PathLike, summary: str | os.PathLike) -> tuple[str, str]:
    """Submit the array, then the summary to run once every element has ended; both job ids."""
    array_id = submit(array)
    return array_id, submit(summary, f"--dependency=afterany:{array_id}")
