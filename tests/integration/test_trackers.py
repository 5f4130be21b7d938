"""Experiment trackers on a tiny run: what TensorBoard, MLflow and W&B hold afterwards, read back with
each tracker's own reader, and the run folder as their default home."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fnapi.events import ListSink, Log
from fnapi.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from fnapi.recipe import Recipe, TrainSection
from fnapi.report import ForgettingReport
from fnapi.trackers import SUMMARY_PREFIX
from fnapi.training import train
from tests.unit.test_training import tiny_data

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny run logged to all three trackers (W&B offline): its folder, report and events."""
    from fnapi.runner import run

    tmp = tmp_path_factory.mktemp("tracked")
    model = save_tiny("llama", tmp / "tiny-llama")
    recipe = Recipe.from_dict({
        "version": 1, "name": "tracked-tiny", "model": {"name": str(model)},
        "data": {"path": "builtin:skill", "max_length": 48, "max_samples": 32},
        "train": {"steps": STEPS, "batch_size": 2, "logging_steps": 1, "save_steps": 10, "validation_samples": 2,
                  "report_to": ["tensorboard", "mlflow", "wandb"]},
        "eval": {"task_samples": 3, "probe_samples": 6, "kl_prompts": 2, "max_new_tokens": 4},
    })
    sink = ListSink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        for name in ("WANDB_DIR", "MLFLOW_TRACKING_URI", "TENSORBOARD_LOGGING_DIR", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        result = run(recipe, sink=sink, output=tmp / "run")
    report = ForgettingReport.from_dict(json.loads((result.run_dir / "report.json").read_text()))
    return result.run_dir, report, sink


def headline_of(report: ForgettingReport) -> dict[str, float]:
    numbers = report.headline()
    # What a run's summary must carry, all measured on this run.
    for key in ("task_before", "task_after", "probes_before", "probes_after", "probes_retained", "probes_change",
                "probes_change_ci95_low", "probes_change_ci95_high", "text_nll_before", "text_nll_after",
                "kl_to_base", "final_loss"):
        assert key in numbers, key
    return numbers


def test_tensorboard_holds_the_loss_curve_and_the_report_numbers(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, report, _ = tracked
    folder = run_dir / "trackers" / "tensorboard"
    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = events.Tags()["scalars"]
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [step for step, _ in report.losses]
    assert [e.value for e in losses] == pytest.approx([loss for _, loss in report.losses], rel=1e-5)
    assert "eval/loss" in scalars  # the validation pass after training, in the same folder
    for key, value in headline_of(report).items():
        [point] = events.Scalars(SUMMARY_PREFIX + key)
        assert point.value == pytest.approx(value, rel=1e-6, abs=1e-7), key
        assert point.step == STEPS


def test_mlflow_file_store_holds_one_run_named_after_the_recipe(tracked):
    from mlflow.tracking import MlflowClient

    run_dir, report, _ = tracked
    client = MlflowClient(tracking_uri=(run_dir / "trackers" / "mlflow").as_uri())
    experiment = client.get_experiment_by_name("fnapi")
    runs = client.search_runs([experiment.experiment_id])
    [logged] = runs  # training, validation and summary all in one run, nothing in another experiment
    assert client.search_runs(["0"]) == []
    assert logged.info.run_name == "tracked-tiny"
    assert logged.info.status == "FINISHED"
    assert json.loads((run_dir / "trackers" / "runs.json").read_text())["mlflow"] == logged.info.run_id
    history = client.get_metric_history(logged.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v, rel=1e-6)) for s, v in report.losses]
    assert logged.data.params["learning_rate"] == str(Recipe.from_yaml(run_dir / "recipe.yaml").train.learning_rate)
    for key, value in headline_of(report).items():
        assert logged.data.metrics[SUMMARY_PREFIX + key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``), parsed with wandb's own protobuf types.

    wandb 0.19+ writes the file from its Go core and ships no Python reader any more; the framing is
    LevelDB's log format (32 KiB blocks of records with a 7-byte header: checksum, length, type) after
    a 7-byte ``:W&B`` file header.
    """
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(raw):
        left = block - position % block
        if left < 7:  # the rest of a block too short for a header is padding
            position += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        chunk = raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:  # a whole record
            records.append(chunk)
        elif kind == 2:  # first, middle and last pieces of a record spanning blocks
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    parsed = []
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        parsed.append(record)
    return parsed


def test_wandb_offline_run_holds_the_losses_and_the_summary(tracked):
    run_dir, report, sink = tracked
    [folder] = (run_dir / "trackers" / "wandb").glob("offline-run-*")
    [log] = folder.glob("run-*.wandb")
    records = wandb_records(log)
    [header] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert header.display_name == "tracked-tiny" and header.project == "fnapi"
    assert header.run_id == json.loads((run_dir / "trackers" / "runs.json").read_text())["wandb"]
    losses = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            if "train/loss" in items:
                losses.append((items["train/global_step"], items["train/loss"]))
    assert losses == [(s, pytest.approx(v, rel=1e-6)) for s, v in report.losses]
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
    for key, value in headline_of(report).items():
        assert summary[SUMMARY_PREFIX + key] == pytest.approx(value, rel=1e-9), key
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)
    # The run says where each tracker wrote.
    notes = [e.message for e in sink.events if isinstance(e, Log) and e.message.startswith("tracking to ")]
    assert [n.split(":")[0] for n in notes] == ["tracking to tensorboard", "tracking to mlflow", "tracking to wandb"]


def test_train_alone_writes_tensorboard_inside_its_output_folder(tmp_path):
    section = TrainSection(steps=2, batch_size=4, logging_steps=1, save_steps=10, report_to=["tensorboard"])
    result = train(tiny_model("llama"), tiny_tokenizer(), tiny_data(8), None, section, output_dir=tmp_path / "out",
                   save_model=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "trackers" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (s, pytest.approx(v, rel=1e-5)) for s, v in result.losses]


def test_only_the_main_process_logs(tmp_path, monkeypatch):
    from fnapi import distributed

    # What every process but rank 0 sees under a launcher.
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.chdir(tmp_path)  # where a tracker's own defaults (./mlruns, ./wandb, ./runs) would land
    section = TrainSection(steps=2, batch_size=4, logging_steps=1, save_steps=10,
                           report_to=["tensorboard", "mlflow", "wandb"])
    train(tiny_model("llama"), tiny_tokenizer(), tiny_data(8), None, section, output_dir=tmp_path / "out",
          save_model=False)
    assert (tmp_path / "out" / "checkpoints").is_dir()  # it trained
    assert not (tmp_path / "out" / "trackers").exists()
    assert not list(tmp_path.rglob("*tfevents*")) and not list(tmp_path.rglob("*.wandb"))
    assert not list(tmp_path.rglob("mlruns")) and not list(tmp_path.rglob("mlflow.db"))
