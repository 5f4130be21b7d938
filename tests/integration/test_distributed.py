"""Two CPU processes (gloo) under torchrun and accelerate launch: `fnapi run` writes once and resumes,
ranks agree bit for bit, and a template built by two processes equals a single-process build.

Each test starts torchrun on 127.0.0.1 only; the tiny model keeps every launch to seconds of work.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fnapi.models.tiny import save_tiny

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
WORKER = Path(__file__).with_name("_distributed_worker.py")
LAUNCH_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    return [str(VENV_BIN / "torchrun"), "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny llama, training rows, capture text and a recipe that builds a template and trains under it."""
    root = tmp_path_factory.mktemp("distributed")
    save_tiny("llama", root / "model")
    rows = [{"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(1, 6))} for i in range(40)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Long rows: 200 sequences of 64 tokens fill several capture batches, so both processes capture.
    text = [{"text": " ".join(f"the {w} number {i * 7 + k}" for k, w in enumerate(["red", "blue", "green"] * 6))}
            for i in range(200)]
    (root / "capture.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    (root / "recipe.yaml").write_text(f"""version: 1
name: dist
seed: 0
model: {{name: {root / 'model'}, device: cpu}}
data: {{path: {root / 'data.jsonl'}, max_length: 48, validation_split: 0.0}}
template: {{samples: 16, max_length: 32, components: 3, runs: 2}}
mask: {{preset: protect, components: [0, 1]}}
train: {{method: lora, steps: 40, batch_size: 4, learning_rate: 0.01, logging_steps: 1, save_steps: 4}}
eval: {{enabled: false}}
output: {{dir: "{root / 'runs'}/{{name}}"}}
""")
    return root


def test_fnapi_run_on_two_processes_writes_once_and_resumes(workspace):
    run_dir = workspace / "runs" / "dist"
    command = torchrun(str(VENV_BIN / "fnapi"), "run", "recipe.yaml")
    # First launch: killed (all processes, kill -9) as soon as a checkpoint is complete.
    log = workspace / "first-launch.log"
    with log.open("w") as output:
        first = subprocess.Popen(command, cwd=workspace, env=environment(), stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not any(run_dir.glob("checkpoints/checkpoint-*/fnapi_state.json")):
        assert first.poll() is None, f"the first launch ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    # torchrun starts its workers in sessions of their own: kill the launcher and every worker.
    launched = psutil.Process(first.pid)
    for process in [launched, *launched.children(recursive=True)]:
        process.kill()
    first.wait()
    assert not (run_dir / "report.json").exists(), "the run finished before it could be interrupted"

    second = subprocess.run(command, cwd=workspace, env=environment(), capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("report: ") == 1  # only the main process speaks for the run

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    second_launch = events[max(i for i, e in enumerate(events) if e["type"] == "run_started"):]
    kinds = Counter(e["type"] for e in events)
    assert kinds["run_started"] == 2 and kinds["run_finished"] == 1  # one per launch, not one per process
    logs = [e["message"] for e in second_launch if e["type"] == "log"]
    assert any(m.startswith("resuming the interrupted run") for m in logs)
    assert any(m.startswith("resuming from checkpoint-") for m in logs)
    assert "frozen weights bit-identical on all 2 processes" in logs
    steps = [e["step"] for e in second_launch if e["type"] == "metric" and "loss" in e["values"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # every step reported once
    state = json.loads(sorted(run_dir.glob("checkpoints/checkpoint-*/fnapi_state.json"))[-1].read_text())
    assert state["processes"] == 2

    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == 40 and report["frozen_weights_unchanged"] is True
    losses = [loss for _, loss in report["losses"]]
    assert [step for step, _ in report["losses"]] == list(range(1, 41))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1

    # The saved adapter leaves the protected rows of every down-projection untouched (LoRA B rows zero).
    template = json.loads((run_dir / "template.json").read_text())
    protected: dict[int, set[int]] = {}
    for component in template["components"]:
        if component["id"] in (0, 1):
            for layer, channels in component["neurons"].items():
                protected.setdefault(int(layer), set()).update(channels)
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    for layer, channels in protected.items():
        (name,) = [k for k in adapter if f"layers.{layer}.mlp.down_proj.lora_B" in k]
        rows = adapter[name]
        assert torch.count_nonzero(rows[sorted(channels)]) == 0
        assert torch.count_nonzero(rows) > 0
    assert not list(run_dir.glob("**/*.partial")) and not list(run_dir.glob("**/.*.tmp"))


def test_two_processes_capture_shares_and_agree_bit_for_bit(workspace):
    from fnapi.models.loading import load_model
    from fnapi.networks.build import build_template
    from fnapi.networks.capture import batch_plan, load_sequences

    sys.path.insert(0, str(WORKER.parent))
    from _distributed_worker import TEMPLATE

    done = subprocess.run(torchrun(str(WORKER), str(workspace)), env=environment(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((workspace / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Both processes hold the same weights, and the frozen rows are the ones they started from.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for record in ranks:
        assert record["frozen_before"] and record["frozen_after"] == record["frozen_before"]
        assert record["frozen_unchanged"] is True
    assert ranks[0]["frozen_after"] == ranks[1]["frozen_after"]
    assert ranks[0]["losses"][-1][1] < ranks[0]["losses"][0][1]
    assert len(list((workspace / "out" / "model").glob("*.safetensors"))) == 1

    # The capture really was split, and the gathered template equals one process building it alone.
    loaded = load_model(str(workspace / "model"))
    sequences = load_sequences([str(workspace / "capture.jsonl")], loaded.tokenizer, samples=TEMPLATE.samples,
                               max_length=TEMPLATE.max_length).sequences
    assert len(batch_plan(sequences, max_length=TEMPLATE.max_length)) >= 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes (torchrun sets OMP_NUM_THREADS=1)
    try:
        single = build_template(loaded, TEMPLATE, [str(workspace / "capture.jsonl")], seed=0)
    finally:
        torch.set_num_threads(threads)
    expected = {k: v for k, v in json.loads(json.dumps(single.to_dict())).items() if k != "created"}
    for record in ranks:
        assert {k: v for k, v in record["template"].items() if k != "created"} == expected


def test_fnapi_run_under_accelerate_launch(workspace, tmp_path):
    recipe = (workspace / "recipe.yaml").read_text()
    recipe = recipe.replace("name: dist", "name: accelerated").replace("steps: 40", "steps: 4")
    recipe = "\n".join(line for line in recipe.splitlines() if not line.startswith(("template:", "mask:")))
    (tmp_path / "recipe.yaml").write_text(recipe + "\n")
    command = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(free_port()), str(VENV_BIN / "fnapi"), "run", "recipe.yaml"]
    done = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = workspace / "runs" / "accelerated"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert Counter(e["type"] for e in events)["run_started"] == 1
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "fnapi_state.json").read_text())
    assert state["processes"] == 2  # both processes trained together
    assert json.loads((run_dir / "report.json").read_text())["steps"] == 4


def test_template_build_on_two_processes_saves_once(workspace, tmp_path):
    out = tmp_path / "two.json"
    done = subprocess.run(torchrun(str(VENV_BIN / "fnapi"), "template", "build", "--model", str(workspace / "model"),
                                   "--data", str(workspace / "capture.jsonl"), "--samples", "16", "--max-length", "32",
                                   "--components", "3", "--runs", "2", "--out", str(out)),
                          cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # One process prints the path, nobody else.
    assert done.stdout.strip().splitlines() == [str(out)], done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(out.read_text())["components"]
    assert [p.name for p in tmp_path.iterdir()] == ["two.json"]  # no stray temp files from other ranks


def test_more_processes_than_examples_stops_every_process_with_exit_code_2(workspace, tmp_path):
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (tmp_path / "recipe.yaml").write_text(f"""version: 1
name: too-few
model: {{name: {workspace / 'model'}, device: cpu}}
data: {{path: one.jsonl, validation_split: 0.0}}
eval: {{enabled: false}}
""")
    done = subprocess.run(torchrun(str(VENV_BIN / "fnapi"), "run", "recipe.yaml"), cwd=tmp_path, env=environment(),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    output = done.stdout + done.stderr
    # Each fnapi process exits 2 with the reason; torchrun reports that exit code and fails itself (1).
    assert done.returncode != 0
    assert "one.jsonl: training examples: 1 for 2 processes; every process needs at least one" in output
    assert "exitcode: 2" in output
    assert not list((tmp_path / "runs" / "too-few").glob("checkpoints"))
