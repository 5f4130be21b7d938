"""`fnapi run` end to end on a tiny model: outputs, report numbers, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnapi.events import ListSink, Log, Metric, Progress, RunFinished, StageFinished, StageStarted
from fnapi.models.tiny import save_tiny
from fnapi.recipe import Recipe
from fnapi.runner import run

RECIPE = """
version: 1
name: tiny
model: {{name: {model}}}
data: {{path: builtin:skill, max_length: 48, max_samples: 64}}
template: {{data: [builtin:text], samples: 12, max_length: 32, components: 4, runs: 2}}
mask: {{preset: protect, components: stable, top_stable: 2}}
train: {{steps: {steps}, batch_size: 4, logging_steps: 1, save_steps: 2, learning_rate: 1e-3}}
eval: {{task_samples: 6, probe_samples: 12, kl_prompts: 3, max_new_tokens: 6,
       generative: {{samples: 12, max_new_tokens: 6, chat_prompts: 4}}}}
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny-llama")


def _recipe(tmp_path, model, steps=6):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(model=model, steps=steps))
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_run_writes_every_output_with_computed_numbers(tmp_path, tiny_dir):
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir)).replace(**{"train.validation_samples": 3})
    sink = ListSink()
    result = run(recipe, sink=sink, output=tmp_path / "run")
    run_dir = result.run_dir
    for name in ("recipe.yaml", "events.jsonl", "template.json", "report.json", "report.md", "loss.png",
                 "baseline.json", "adapter", "checkpoints", "finished.json"):
        assert (run_dir / name).exists(), name
    assert Recipe.from_yaml(run_dir / "recipe.yaml") == recipe.replace(**{"output.dir": str(tmp_path / "run")})
    assert not (run_dir / ".fnapi.pid").exists()  # the lock is given up when the run ends
    # The validation pass is a stage with a bar: one progress event per batch, up to its total.
    started = next(e for e in sink.events if isinstance(e, StageStarted) and e.stage == "validate")
    assert started.description == "validation loss on 3 examples (train.validation_samples)"
    ticks = [e for e in sink.events if isinstance(e, Progress) and e.stage == "validate"]
    batch = recipe.train.batch_size
    assert started.total == -(-3 // batch) and ticks and ticks[-1].completed == started.total
    assert any(isinstance(e, StageFinished) and e.stage == "validate" for e in sink.events)
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("before", "after"):
        assert 0.0 <= report["task"][key] <= 1.0
        assert 0.0 <= report["probes"][key] <= 1.0
    assert report["kl_to_base"] > 0  # the adapter moved the model a little
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    assert report["final_loss"] == pytest.approx(report["losses"][-1][1])
    assert report["frozen_weights_unchanged"] is True
    # Every measure carries its 95% interval; the probe change is paired per item.
    for key in ("probes", "task"):
        low, high = report[key]["ci95"]
        assert low <= report[key]["after"] <= high
    low, high = report["probes"]["change_ci95"]
    assert low <= report["probes"]["after"] - report["probes"]["before"] <= high
    assert report["text_nll"]["before"] > 0 and report["text_nll"]["after"] > 0
    assert report["kl_ci95"][0] <= report["kl_to_base"] <= report["kl_ci95"][1]
    measures = json.loads((run_dir / "measures.json").read_text())
    assert len(measures["before"]["probes"][0]["correct"]) == len(measures["after"]["probes"][0]["correct"]) == 12
    assert report["steps"] == 6 and len(report["losses"]) == 6
    # What a user sees: the probe questions asked open-ended (the headline), chat drift, the leak flag.
    generative = report["generative"]
    assert generative["samples"] == 12 and 0.0 <= generative["before"] <= 1.0
    low, high = generative["change_ci95"]
    assert low <= generative["after"] - generative["before"] <= high
    assert report["chat_kl"]["prompts"] == 4 and report["chat_kl"]["value"] > 0
    assert report["chat_kl"]["ci95"][0] <= report["chat_kl"]["value"] <= report["chat_kl"]["ci95"][1]
    assert set(report["format_leak"]) >= {"share", "flag", "base_share"}
    assert len(measures["after"]["generative"][0]["replies"]) == 12
    markdown = (run_dir / "report.md").read_text()
    assert "General questions still answered (open-ended) retained" in markdown and "Chat drift" in markdown
    stages = [e.stage for e in sink.of_type(StageFinished)]
    for name in ("hardware", "model", "capture", "ica", "baseline", "train", "evaluate"):
        assert name in stages
    assert sink.of_type(RunFinished)
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "run_started" and lines[-1]["type"] == "run_finished"


def _final_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "report.json").read_text())["final_loss"]


def test_kill_and_rerun_resumes_to_the_same_final_loss(tmp_path, tiny_dir):
    recipe_path = _recipe(tmp_path, tiny_dir, steps=12)
    fnapi = [sys.executable, "-m", "fnapi", "run", str(recipe_path)]

    reference = subprocess.run(fnapi + ["--output", str(tmp_path / "straight")], env=_env(),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    assert reference.stdout.strip().splitlines()[-1] == str(tmp_path / "straight")

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(fnapi + ["--output", str(run_dir)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    checkpoints = run_dir / "checkpoints"
    while time.monotonic() < deadline:
        done = list(checkpoints.glob("checkpoint-*/fnapi_state.json")) if checkpoints.exists() else []
        if done or process.poll() is not None:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "report.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(fnapi + ["--output", str(run_dir)], env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert _final_loss(run_dir) == pytest.approx(_final_loss(tmp_path / "straight"), rel=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_a_step_saves_a_checkpoint_and_the_hint_resumes(tmp_path, tiny_dir, signum):
    recipe_path = _recipe(tmp_path, tiny_dir, steps=60)
    run_dir = tmp_path / "stopped"
    fnapi = [sys.executable, "-m", "fnapi", "run", str(recipe_path), "--output", str(run_dir)]
    process = subprocess.Popen(fnapi, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoints.exists() and list(checkpoints.glob("checkpoint-*/fnapi_state.json")):
            break
        time.sleep(0.2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    hint = f"fnapi run {run_dir / 'recipe.yaml'}"
    assert f"resume with `{hint}`" in err
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "run_cancelled" and last["exit_code"] == 128 + signum and last["stage"] == "train"
    assert last["resume"] == hint
    saved = sorted(checkpoints.glob("checkpoint-*/fnapi_state.json"))
    assert saved and not (run_dir / "finished.json").exists()
    if signum == signal.SIGTERM:  # the printed command resumes the same run (once is enough)
        stopped_at = max(int(p.parent.name.split("-")[1]) for p in saved)
        assert stopped_at < 60
        command = [sys.executable, "-m", *hint.split()]  # `fnapi run DIR/recipe.yaml`, as printed
        resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming from checkpoint-{stopped_at}" in resumed.stderr
        # The scores measured before training are reported again, so every view of the run shows them.
        assert "base model scores: read from baseline.json" in resumed.stderr
        assert "[baseline] task_before=" in resumed.stderr
        assert (run_dir / "finished.json").exists()


def test_a_template_made_for_another_model_is_refused_unless_the_recipe_allows_it(tmp_path, tiny_dir, capsys):
    from fnapi.cli import main
    from fnapi.networks.template import Component, Template

    foreign = tmp_path / "foreign.json"
    Template(site="mlp.out", width=64, num_layers=2, components=[Component(0, {0: [1, 2], 1: [3]})],
             model={"name": "meta-llama/Llama-3.2-1B"}, method={"name": "imported"},
             warnings=["imported from old.json, which records no weights fingerprint"]).save(foreign)
    recipe = _recipe(tmp_path, tiny_dir, steps=2)
    text = recipe.read_text().replace(
        "template: {data: [builtin:text], samples: 12, max_length: 32, components: 4, runs: 2}",
        f"template: {{path: '{foreign}'}}").replace("components: stable, top_stable: 2", "components: [0]")
    recipe.write_text(text)
    code = main(["run", str(recipe), "--output", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "names the model 'meta-llama/Llama-3.2-1B'" in err and "template.allow_other_model: true" in err
    assert "records no weights fingerprint" in err  # the template's own warnings are shown
    assert not list((tmp_path / "refused").glob("checkpoints/checkpoint-*"))

    recipe.write_text(text.replace(f"{{path: '{foreign}'}}", f"{{path: '{foreign}', allow_other_model: true}}"))
    assert main(["run", str(recipe), "--output", str(tmp_path / "allowed")]) == 0
    assert (tmp_path / "allowed" / "finished.json").exists()


def test_a_second_process_into_a_live_run_folder_is_refused_naming_the_first(tmp_path, tiny_dir):
    # Long enough that the first run is still training when the second has started up; SIGTERM ends it.
    recipe_path = _recipe(tmp_path, tiny_dir, steps=2000)
    run_dir = tmp_path / "shared"
    fnapi = [sys.executable, "-m", "fnapi", "run", str(recipe_path), "--output", str(run_dir)]
    first = subprocess.Popen(fnapi, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            if list((run_dir / "checkpoints").glob("checkpoint-*/fnapi_state.json")):
                break
            time.sleep(0.2)
        second = subprocess.run(fnapi, env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"in use by a live run (process {first.pid})" in second.stderr
    started = [json.loads(line)["type"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert started.count("run_started") == 1  # the refused run wrote nothing into the live run's log


def test_changed_recipe_on_interrupted_run_is_refused(tmp_path, tiny_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir))
    recipe.to_yaml(run_dir / "recipe.yaml")
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    changed = _recipe(tmp_path, tiny_dir, steps=9)
    out = subprocess.run([sys.executable, "-m", "fnapi", "run", str(changed), "--output", str(run_dir)],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "different recipe" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == ["checkpoints", "recipe.yaml"]


def test_a_batch_too_big_for_the_memory_is_refused_before_training(tmp_path, tiny_dir):
    recipe = _recipe(tmp_path, tiny_dir)
    recipe.write_text(recipe.read_text().replace("batch_size: 4", "batch_size: 4000000"))
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "fnapi", "run", str(recipe), "--output", str(run_dir)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "train.batch_size 4000000" in out.stderr and "gradient_accumulation" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "report.json").exists()
    # Nothing was trained, so the corrected recipe takes the directory over and runs there.
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "run_failed" and events[-1]["exit_code"] == 2
    recipe.write_text(recipe.read_text().replace("batch_size: 4000000", "batch_size: 4"))
    again = subprocess.run([sys.executable, "-m", "fnapi", "run", str(recipe), "--output", str(run_dir)],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "failed before training" in again.stderr
    assert (run_dir / "finished.json").exists()
    assert Recipe.from_yaml(run_dir / "recipe.yaml").train.batch_size == 4
    assert all(json.loads(line)["type"] != "run_failed" for line in (run_dir / "events.jsonl").read_text().splitlines())


def test_eval_scores_a_run_on_a_probe_file_with_the_change_against_its_base(tmp_path, tiny_dir):
    run(Recipe.from_yaml(_recipe(tmp_path, tiny_dir, steps=2)), output=tmp_path / "run")
    probes = tmp_path / "arc.jsonl"
    probes.write_text("\n".join(json.dumps({"question": {"stem": f"Pick {i}?", "choices": [
        {"text": str(i), "label": "A"}, {"text": str(i + 1), "label": "B"}, {"text": str(i + 2), "label": "C"}]},
        "answerKey": "A"}) for i in range(10)) + "\n{broken\n")
    out = subprocess.run([sys.executable, "-m", "fnapi", "eval", str(tmp_path / "run"), "--probes", str(probes),
                          "--text", "builtin:text", "--text-samples", "3", "--json"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    probe = data["probes"][0]
    assert probe["source"] == str(probes) and probe["n"] == 10
    assert probe["ci95"][0] <= probe["accuracy"] <= probe["ci95"][1] and probe["logprob"] < 0
    assert "skipped 1 bad row(s), the first at line 11" in out.stderr
    assert data["base"]["probes"][0]["n"] == 10
    change = data["change"]["probe_sets"][0]["accuracy"]
    assert change["change"] == pytest.approx(probe["accuracy"] - data["base"]["probes"][0]["accuracy"])
    assert data["change"]["texts"][0]["kl"]["mean"] > 0
    missing = subprocess.run([sys.executable, "-m", "fnapi", "eval", str(tmp_path / "run"), "--probes",
                              str(tmp_path / "nope.jsonl")], env=_env(), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope.jsonl does not exist" in missing.stderr
    assert "[model]" not in missing.stderr  # refused before any weights load
    assert "Traceback" not in missing.stderr


def test_a_second_run_on_the_same_base_and_evaluation_data_reuses_the_base_scores(tmp_path, tiny_dir):
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir, steps=2))
    first = run(recipe, output=tmp_path / "a")
    sink = ListSink()
    second = run(recipe.replace(**{"name": "other", "mask.preset": "none", "mask.components": [], "template": None}),
                 sink=sink, output=tmp_path / "b")
    assert any("reused" in getattr(e, "message", "") for e in sink.events)
    assert (first.run_dir / "baseline.json").read_text() == (second.run_dir / "baseline.json").read_text()
    assert second.report.probes.before == first.report.probes.before
    changed = recipe.replace(**{"name": "third", "eval.probe_samples": 10})
    sink = ListSink()
    third = run(changed, sink=sink, output=tmp_path / "c")
    assert not any("reused" in getattr(e, "message", "") for e in sink.events)
    assert third.report.probes.samples == 10


@pytest.mark.parametrize("damage, says", [
    ('{"format": "fnapi.train-state/1", "step": 2', "cannot be read (JSONDecodeError"),
    ('{"format": "fnapi.train-state/1", "step": "two", "seed": 0}', "step: Input should be a valid integer"),
])
def test_a_damaged_checkpoint_state_is_named_on_resume(tmp_path, tiny_dir, damage, says):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir)).replace(**{"output.dir": str(run_dir)})
    recipe.to_yaml(run_dir / "recipe.yaml")  # an interrupted run: its recipe, and a checkpoint
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "fnapi_state.json").write_text(damage)
    out = subprocess.run([sys.executable, "-m", "fnapi", "run", str(run_dir / "recipe.yaml")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{checkpoint / 'fnapi_state.json'}" in out.stderr and says in out.stderr
    assert f"delete {checkpoint} to resume from the checkpoint before it" in out.stderr


def test_a_measure_that_cannot_be_taken_is_named_with_what_to_add(tmp_path, tiny_dir):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi.", "completion": "hi"}) + "\n")
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir, steps=2)).replace(
        **{"data.path": str(data), "data.max_samples": None, "template": None, "mask.preset": "none",
           "mask.components": [], "eval.probes": []})
    result = run(recipe, sink=ListSink(), output=tmp_path / "run")
    warnings = " | ".join(result.report.warnings)
    assert "the task score could not be measured" in warnings and "data.validation_path" in warnings
    assert "open-ended answers could not be measured" in warnings


def test_replay_and_the_kl_penalty_train_on_the_base_models_own_replies(tmp_path, tiny_dir):
    recipe = Recipe.from_yaml(_recipe(tmp_path, tiny_dir, steps=4)).replace(
        **{"template": None, "mask.preset": "none", "mask.components": [],
           "train.replay": {"samples": 6, "ratio": 0.5, "max_new_tokens": 4},
           "train.kl_to_base": {"samples": 4, "max_new_tokens": 4, "batch_size": 2}})
    sink = ListSink()
    result = run(recipe, sink=sink, output=tmp_path / "run")
    replay = json.loads((result.run_dir / "replay.json").read_text())
    assert len(replay["prompts"]) == 6 and replay["source"] == "builtin:chat-train"
    mixed = next(e.message for e in sink.of_type(Log) if e.message.startswith("replay: "))
    trained = int(mixed.split(" mixed into ")[1].split()[0])
    assert result.report.replay["rows"] == round(0.5 * trained) > 0
    assert result.report.replay["source"] == "builtin:chat-train"
    assert result.report.kl_penalty["prompts"] <= 4 and (result.run_dir / "kl_to_base.json").is_file()
    terms = [e.values["loss_term"] for e in sink.of_type(Metric) if "loss_term" in e.values]
    assert terms and all(value >= 0 for value in terms)
    markdown = (result.run_dir / "report.md").read_text()
    assert f"Replay: {result.report.replay['rows']} rows" in markdown and "KL-to-base penalty" in markdown
