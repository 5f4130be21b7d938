"""`fnapi continual` end to end on a tiny model: the matrix and its measures, a fresh schedule per task,
resume after kill -9, bad input, the SLURM array."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnapi.cli import main
from fnapi.events import ListSink, Metric
from fnapi.models.tiny import save_tiny
from fnapi.recipe import ContinualRecipe

ALL_METHODS = """
  - sequential_lora
  - {method: replay, per_task: 4}
  - {method: ewc, fisher_samples: 4}
  - {method: lwf}
  - {method: olora}
  - {method: protect, template: {site: mlp.out, samples: 8, max_length: 24, components: 3, runs: 2}, top_stable: 2}
  - {method: subspace, samples: 6}
  - {method: masked, template: {method: attribution, site: mlp.out, data: [builtin:text], samples: 6, max_length: 24,
                                selection: {rule: percentile, value: 80}},
     mask: {preset: target, components: [1]}, train: {method: full}}
"""

RECIPE = """
version: 1
kind: continual
name: tiny-continual
model: {{name: {model}}}
seeds: {seeds}
tasks:
  - {{name: zorbic, data: {{path: builtin:skill, max_length: 40, max_samples: 48}}}}
  - {{name: reverse, data: {{path: {reverse}, max_length: 40}}}}
{more_tasks}
orders: {orders}
methods: {methods}
train: {{steps: {steps}, batch_size: 4, logging_steps: 1, save_steps: 2, learning_rate: 1e-3}}
eval: {{task_samples: 4, probe_samples: 8, max_new_tokens: 6}}
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def reverse_file(tmp_path_factory):
    """A second task: say two or three words in reverse order."""
    words = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "stone", "bird"]
    rng = random.Random(0)
    rows = []
    for _ in range(60):
        phrase = rng.sample(words, rng.choice((2, 3)))
        rows.append({"prompt": f"Reverse: {' '.join(phrase)}", "response": " ".join(reversed(phrase))})
    path = tmp_path_factory.mktemp("data") / "reverse.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _write(tmp_path: Path, model: Path, reverse: Path, *, methods: str = "[sequential_lora]", steps: int = 3,
           seeds: str = "[0]", orders: str = "[]", more_tasks: str = "") -> Path:
    path = tmp_path / "continual.yaml"
    path.write_text(RECIPE.format(model=model, reverse=reverse, methods=methods, steps=steps, seeds=seeds,
                                  orders=orders, more_tasks=more_tasks))
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_every_method_fills_its_matrix_and_the_summary_follows_from_it(tmp_path, tiny_dir, reverse_file):
    from fnapi.continual_learning.runner import continual

    recipe = ContinualRecipe.from_yaml(_write(tmp_path, tiny_dir, reverse_file, methods=ALL_METHODS,
                                              orders="[[zorbic, reverse], [reverse, zorbic]]"))
    out = tmp_path / "out"
    continual(recipe, output=out, sink=ListSink())
    for name in ("continual.json", "continual.md", "matrix.png", "recipe.yaml"):
        assert (out / name).exists(), name
    data = json.loads((out / "continual.json").read_text())
    assert data["tasks"] == ["zorbic", "reverse"]
    assert set(data["methods"]) == {m.label for m in recipe.methods}
    base_rows = set()
    for name, method in data["methods"].items():
        matrix = method["matrix"]
        assert len(matrix) == 3 and all(len(row) == 2 for row in matrix), name
        assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
        assert len(method["runs"]) == 2  # two orders, one seed
        for run in method["runs"]:
            rows = run["matrix"]
            assert run["aa"] == pytest.approx(sum(rows[-1]) / 2)
            assert run["bwt"] == pytest.approx(rows[2][0] - rows[1][0])
            base_rows.add(tuple(sorted(rows[0])))
        assert len(method["single_task"]) == 2
        assert 0.0 < method["probes_retained"] < 2.0
    assert len(base_rows) == 1  # every sequence starts from the same base model scores
    assert "| method |" in (out / "continual.md").read_text()
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_task_starts_a_fresh_learning_rate_schedule(tmp_path, tiny_dir, reverse_file):
    from fnapi.continual_learning.runner import continual

    steps, rate = 4, 1e-3
    recipe = ContinualRecipe.from_yaml(_write(tmp_path, tiny_dir, reverse_file, steps=steps)).replace(
        **{"single_task": False})
    sink = ListSink()
    continual(recipe, output=tmp_path / "out", sink=sink)
    rates = [e.values["learning_rate"] for e in sink.events
             if isinstance(e, Metric) and e.stage == "train" and e.step == 1 and "learning_rate" in e.values]
    # One first step per task, logged with the rate it trained at: the configured one for every
    # task. A schedule carried over from task 1 (linear decay to 0 over its steps) would log 0.
    assert rates == pytest.approx([rate] * 2)


def test_a_sequence_killed_mid_task_resumes_after_its_last_finished_task(tmp_path, tiny_dir, reverse_file):
    third = "  - {name: zorbic2, data: {path: builtin:skill, max_length: 40, max_samples: 40, validation_split: 0.2}}"
    recipe_path = _write(tmp_path, tiny_dir, reverse_file, steps=10, more_tasks=third)
    recipe_path.write_text(recipe_path.read_text().replace("name: tiny-continual", "name: tiny-continual\n"
                                                           "single_task: false"))
    command = [sys.executable, "-m", "fnapi", "continual", str(recipe_path)]
    straight = subprocess.run(command + ["--output", str(tmp_path / "straight")], env=_env(), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    sequence = out / "runs" / "sequential_lora" / "order-0" / "seed-0"
    process = subprocess.Popen(command + ["--output", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if list((sequence / "task-2" / "checkpoints").glob("checkpoint-*/fnapi_state.json")) or process.poll() is not None:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (sequence / "result.json").exists(), "the sequence finished before it could be killed"
    assert (sequence / "progress.json").exists()

    resumed = subprocess.run(command + ["--output", str(out)], env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after task 1 of 3" in resumed.stderr
    assert "resuming from checkpoint" in resumed.stderr
    done = json.loads((sequence / "progress.json").read_text())["finished"]
    reference = json.loads((tmp_path / "straight" / sequence.relative_to(out) / "progress.json").read_text())["finished"]
    assert [t["final_loss"] for t in done] == pytest.approx([t["final_loss"] for t in reference], rel=1e-5)
    assert [t["row"] for t in done] == [t["row"] for t in reference]


@pytest.mark.parametrize("change, field", [
    ({"tasks": []}, "tasks"),
    ({"methods": ["sequential_lora", "elastic"]}, "methods[1]"),
    ({"tasks": [{"name": "a", "data": "builtin:skill"}, {"name": "b", "data": "builtin:skill", "metric": "contains"}]},
     "tasks[1].metric"),
    ({"orders": [["zorbic", "zorbic"]]}, "orders[0]"),
], ids=["no-tasks", "unknown-method", "mismatched-metrics", "bad-order"])
def test_bad_continual_recipes_exit_2_naming_the_field(tmp_path, tiny_dir, reverse_file, capsys, change, field):
    import yaml

    path = _write(tmp_path, tiny_dir, reverse_file)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    assert main(["continual", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err
    assert not (tmp_path / "out").exists()  # nothing written for a recipe that does not validate


def test_a_folder_of_another_recipe_is_refused(tmp_path, tiny_dir, reverse_file, capsys):
    path = _write(tmp_path, tiny_dir, reverse_file)
    out = tmp_path / "out"
    out.mkdir()
    other = ContinualRecipe.from_yaml(path).replace(**{"train.learning_rate": 5e-4})
    other.to_yaml(out / "recipe.yaml")
    assert main(["continual", str(path), "--output", str(out)]) == 2
    assert "holds the results of another continual recipe" in capsys.readouterr().err


def test_slurm_writes_an_array_with_one_element_per_unit_and_a_summary_step(tmp_path, tiny_dir, reverse_file,
                                                                            monkeypatch, capsys):
    from fnapi.continual_learning.runner import elements

    path = _write(tmp_path, tiny_dir, reverse_file, methods="[sequential_lora, ewc]", seeds="[0, 1, 2]",
                  orders="[[zorbic, reverse], [reverse, zorbic]]")
    monkeypatch.chdir(tmp_path)
    assert main(["slurm", str(path), "--time", "02:00:00", "--gpus-per-node", "0", "--output", "results"]) == 0
    units = elements(ContinualRecipe.from_yaml(path))
    assert len(units) == 3 + 2 * 2 * 3  # per seed: its single-task baselines, then method x order
    array = (tmp_path / "tiny-continual.sbatch").read_text()
    summary = (tmp_path / "tiny-continual-summary.sbatch").read_text()
    assert f"#SBATCH --array=0-{len(units) - 1}" in array
    assert '--element "$SLURM_ARRAY_TASK_ID"' in array
    assert f"FNAPI_OUTPUT={tmp_path / 'results'}" in array
    assert "--summarize" in summary and "--array" not in summary
    assert "--dependency=afterany:$jid" in capsys.readouterr().out
    listed = subprocess.run([sys.executable, "-m", "fnapi", "continual", str(path), "--list"], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert listed.stdout.splitlines()[:2] == ["0\tsingle-task baselines, seed 0", "1\tsequential_lora, order 1, seed 0"]
    assert listed.stdout.splitlines()[-1] == f"{len(units) - 1}\tewc, order 2, seed 2"


def test_a_recipe_adding_a_method_joins_the_folder_and_its_recipe_becomes_the_union(tmp_path, tiny_dir,
                                                                                     reverse_file):
    path = _write(tmp_path, tiny_dir, reverse_file)
    out = tmp_path / "out"
    out.mkdir()
    recipe = ContinualRecipe.from_yaml(path)
    earlier = recipe.replace(**{"methods": [{"method": "ewc", "name": "ewc-strong", "strength": 50.0}]})
    earlier.to_yaml(out / "recipe.yaml")
    assert main(["continual", str(path), "--output", str(out), "--element", "0"]) == 0
    stored = ContinualRecipe.from_yaml(out / "recipe.yaml")
    assert [m.label for m in stored.methods] == ["ewc-strong"] + [m.label for m in recipe.methods]
