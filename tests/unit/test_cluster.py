"""`fnapi slurm`: the sbatch script's fields, provenance and rendezvous, refusals with exit code 2, and a
real run of the script through stand-ins for sbatch/srun/scontrol that execute it here as a 1-node job."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fnapi.cli import main
from fnapi.cluster import slurm_settings
from fnapi.errors import RecipeError
from fnapi.models.tiny import save_tiny
from fnapi.recipe import Recipe

VENV_BIN = Path(sys.executable).parent

STANDIN_SBATCH = f"""#!{sys.executable}
\"\"\"Stand-in for sbatch: runs the batch script at once, here, as job 4242 on one node.\"\"\"
import os, re, subprocess, sys
script = sys.argv[-1]
options = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", open(script).read(), re.M))
job, name = "4242", options.get("job-name", "job")
env = {{**os.environ, "SLURM_JOB_ID": job, "SLURM_JOB_NAME": name, "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
       "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
       "SLURM_CPUS_PER_TASK": options.get("cpus-per-task", "1"), "SLURM_SUBMIT_DIR": os.getcwd()}}
log = lambda key: options[key].replace("%x", name).replace("%j", job)
print("Submitted batch job " + job, flush=True)
with open(log("output"), "w") as out, open(log("error"), "w") as err:
    code = subprocess.run(["bash", script], cwd=options["chdir"], env=env, stdout=out, stderr=err).returncode
open(log("output") + ".exit", "w").write(str(code))
"""
STANDIN_SRUN = """#!/bin/bash
# Stand-in for srun: one task on this machine (options are dropped).
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
"""
STANDIN_SCONTROL = """#!/bin/bash
# Stand-in for scontrol: only `show hostnames LIST`.
[[ "$1 $2" == "show hostnames" ]] && tr ',' '\\n' <<< "$3"
"""


@pytest.fixture
def standins(tmp_path, monkeypatch) -> Path:
    """sbatch, srun and scontrol stand-ins first on PATH."""
    folder = tmp_path / "standins"
    folder.mkdir()
    for name, text in (("sbatch", STANDIN_SBATCH), ("srun", STANDIN_SRUN), ("scontrol", STANDIN_SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    return folder


def write_recipe(folder: Path, extra: str = "", **train) -> Path:
    """A recipe on a tiny local model: a few steps, no template, no evaluation (seconds to run)."""
    save_tiny("llama", folder / "model")
    rows = [{"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(1, 4))} for i in range(16)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"method": "lora", "steps": 3, "batch_size": 4, "save_steps": 3, **train}
    path = folder / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: cluster-demo
        model: {{name: model, device: cpu}}
        data: {{path: data.jsonl, max_length: 32, validation_split: 0.0}}
        train: {json.dumps(settings)}
        eval: {{enabled: false}}
        """) + extra)
    return path


def slurm(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["slurm", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_script_holds_every_field_provenance_and_the_rendezvous(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe_path = write_recipe(tmp_path)
    code, out, _ = slurm(capsys, str(recipe_path), "--nodes", "2", "--gpus-per-node", "4", "--cpus-per-task", "32",
                         "--mem", "128G", "--time", "1-12:00:00", "--partition", "gpu", "--account", "proj42",
                         "--constraint", "a100", "--env", "module load anaconda3 && conda activate fnapi",
                         "--out", "job.sbatch")
    assert code == 0, out
    script = (tmp_path / "job.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.M))
    assert directives == {
        "job-name": "cluster-demo", "nodes": "2", "ntasks-per-node": "1", "cpus-per-task": "32", "gres": "gpu:4",
        "mem": "128G", "time": "1-12:00:00", "partition": "gpu", "account": "proj42", "constraint": "a100",
        "chdir": str(tmp_path), "output": f"{tmp_path}/slurm_logs/%x-%j.out",
        "error": f"{tmp_path}/slurm_logs/%x-%j.err",
    }
    assert (tmp_path / "slurm_logs").is_dir()  # SLURM would not create it and the job would vanish silently
    recipe = Recipe.from_yaml(recipe_path)
    import hashlib

    assert f"recipe fingerprint {recipe.fingerprint()}" in script
    assert hashlib.sha256(recipe_path.read_bytes()).hexdigest() in script
    assert re.search(r"written by fnapi \d+\.\d+\.\d+", script)
    assert "\nmodule load anaconda3 && conda activate fnapi\n" in script
    launch = script[script.index("srun "):]
    for part in ('--nnodes "$SLURM_JOB_NUM_NODES"', "--nproc_per_node 4", '--rdzv_id "$SLURM_JOB_ID"',
                 "--rdzv_backend c10d", '--rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"',
                 '"$(command -v fnapi)" run "$FNAPI_RECIPE"'):
        assert part in launch
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}" in script  # 32 cores over 4 processes
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)  # valid shell


def test_recipe_defaults_apply_and_flags_override_them(tmp_path):
    recipe = Recipe.from_yaml(write_recipe(tmp_path, "distributed:\n  slurm: {time: '2:00:00', partition: a, "
                                                     "account: b, nodes: 3, log_dir: logs}\n"))
    settings = slurm_settings(recipe, partition="override")
    assert (settings.time, settings.partition, settings.account, settings.nodes) == ("2:00:00", "override", "b", 3)
    # scheduling settings do not change what the run computes, so its fingerprint ignores them
    assert recipe.fingerprint() == recipe.replace(**{"distributed.slurm.nodes": 8}).fingerprint()


def test_accelerate_config_launches_accelerate_on_every_node(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nfsdp_config: {fsdp_sharding_strategy: FULL_SHARD}\n")
    recipe_path = write_recipe(tmp_path, "distributed: {accelerate_config: fsdp.yaml}\n")
    code, out, err = slurm(capsys, str(recipe_path), "--nodes", "2", "--gpus-per-node", "8", "--time", "60")
    assert code == 0, err
    script = (tmp_path / "cluster-demo.sbatch").read_text()
    assert f"export FNAPI_ACCELERATE_CONFIG={tmp_path / 'fsdp.yaml'}" in script
    for part in ('--config_file "$FNAPI_ACCELERATE_CONFIG"', '--num_processes "$((SLURM_JOB_NUM_NODES * 8))"',
                 '--machine_rank "$SLURM_NODEID"', '--main_process_ip "$MASTER_ADDR"', "#SBATCH --time=60"):
        assert part in script
    assert "torchrun" not in script
    subprocess.run(["bash", "-n", str(tmp_path / "cluster-demo.sbatch")], check=True)


@pytest.mark.parametrize("args, extra, train, message", [
    ((), "", {}, "SLURM time limit is missing"),
    (("--time", "3 hours"), "", {}, "--time / distributed.slurm.time: '3 hours' is not a SLURM time"),
    (("--time", "1:00:00", "--nodes", "0"), "", {}, "--nodes / distributed.slurm.nodes"),
    (("--time", "1:00:00", "--gpus-per-node", "0"), "", {"method": "qlora"}, "train.method qlora, which need CUDA"),
    (("--time", "1:00:00",), "distributed: {accelerate_config: missing.yaml}\n", {}, "missing.yaml: file not found"),
    (("--time", "1:00:00", "--nodes", "5", "--gpus-per-node", "4"), "", {},
     "16 training examples for 20 processes"),
])
def test_bad_or_missing_settings_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, args, extra, train, message):
    monkeypatch.chdir(tmp_path)
    recipe_path = write_recipe(tmp_path, extra, **train)
    code, _, err = slurm(capsys, str(recipe_path), *args)
    assert code == 2
    assert message in err
    assert not list(tmp_path.glob("*.sbatch"))


def test_submit_without_sbatch_explains_and_keeps_the_script(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    code, _, err = slurm(capsys, str(write_recipe(tmp_path)), "--time", "10", "--submit")
    assert code == 2 and "sbatch is not on PATH" in err
    assert (tmp_path / "cluster-demo.sbatch").is_file()


def test_the_script_runs_the_recipe_under_a_stand_in_scheduler(tmp_path, monkeypatch, capsys, standins):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = slurm(capsys, str(write_recipe(tmp_path)), "--time", "00:10:00", "--gpus-per-node", "0",
                           "--cpus-per-task", "1", "--port", str(port), "--submit")
    assert code == 0, err
    assert "submitted job 4242" in out
    logs = tmp_path / "slurm_logs"
    job_out, job_err = (logs / "cluster-demo-4242.out").read_text(), (logs / "cluster-demo-4242.err").read_text()
    assert (logs / "cluster-demo-4242.out.exit").read_text() == "0", job_out[-2000:] + job_err[-3000:]
    assert f"1 node(s) x 1 process(es), rendezvous 127.0.0.1:{port}" in job_out
    run_dir = tmp_path / "runs" / "cluster-demo"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == 3
    assert (run_dir / "adapter").is_dir() and (run_dir / "events.jsonl").is_file()
    assert job_out.rstrip().endswith("runs/cluster-demo")  # fnapi run prints the run directory last


def test_the_script_refuses_a_recipe_changed_after_it_was_written(tmp_path, monkeypatch, capsys, standins):
    monkeypatch.chdir(tmp_path)
    recipe_path = write_recipe(tmp_path)
    assert slurm(capsys, str(recipe_path), "--time", "5")[0] == 0
    recipe_path.write_text(recipe_path.read_text().replace("steps\": 3", "steps\": 4"))
    done = subprocess.run(["bash", str(tmp_path / "cluster-demo.sbatch")], capture_output=True, text=True,
                          env={**os.environ, "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "127.0.0.1",
                               "SLURM_JOB_NUM_NODES": "1"})
    assert done.returncode == 2
    assert "changed after this script was written" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_settings_reject_unknown_names():
    with pytest.raises(TypeError):
        slurm_settings(Recipe(), hours=3)
    with pytest.raises(RecipeError, match="time limit is missing"):
        slurm_settings(Recipe())
