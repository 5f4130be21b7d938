"""train.report_to: the names a recipe accepts, trackers that are not installed refused before any weight
loads, where each tracker writes by default and which settings of the environment win."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fnapi import trackers
from fnapi.cli import main
from fnapi.errors import RecipeError
from fnapi.models.tiny import save_tiny
from fnapi.recipe import Recipe
from fnapi.report import ForgettingReport, Score


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny-llama")


def write_recipe(tmp_path: Path, model: Path, report_to) -> Path:
    body = {"version": 1, "name": "tracked", "model": {"name": str(model)},
            "data": {"path": "builtin:skill"}, "train": {"report_to": report_to}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_validate_names_an_unknown_tracker_and_the_closest_one(tmp_path, tiny_folder, capsys):
    code = main(["validate", str(write_recipe(tmp_path, tiny_folder, ["wandb", "tensorbord"]))])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.report_to[1]: not a tracker; did you mean 'tensorboard'?" in err, err
    assert "train.report_to[0]" not in err


def not_installed(*modules: str):
    real = trackers.is_installed
    return lambda module: False if module in modules else real(module)


def test_validate_refuses_a_tracker_that_is_not_installed_naming_the_extra(tmp_path, tiny_folder, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(trackers, "is_installed", not_installed("wandb"))
    code = main(["validate", str(write_recipe(tmp_path, tiny_folder, ["tensorboard", "wandb"]))])
    err = capsys.readouterr().err
    assert code == 2
    line = next(line for line in err.splitlines() if "train.report_to[" in line)
    assert line.strip().startswith("train.report_to[1]: wandb is not installed")
    assert "pip install 'fntui[track]'" in line


def test_run_refuses_a_missing_tracker_before_the_model_loads(tmp_path, tiny_folder, capsys, monkeypatch):
    monkeypatch.setattr(trackers, "is_installed", not_installed("mlflow"))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("fnapi.models.loading.load_model", no_loading)
    code = main(["run", str(write_recipe(tmp_path, tiny_folder, ["mlflow"])), "--output", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert code == 2
    assert "train.report_to[0]: mlflow is not installed" in out.err + out.out
    assert not (tmp_path / "run").exists()  # refused before a run folder was claimed


def test_the_availability_check_looks_the_module_up():
    assert trackers.is_installed("tensorboard")
    assert not trackers.is_installed("fnapi_no_such_tracker_module")


def test_report_to_reads_one_name_or_a_list_and_refuses_repeats():
    assert Recipe.from_yaml_text("version: 1\ntrain: {report_to: mlflow}").train.report_to == ["mlflow"]
    assert Recipe.from_yaml_text("version: 1\ntrain: {report_to: null}").train.report_to == []
    with pytest.raises(RecipeError) as refused:
        Recipe.from_yaml_text("version: 1\ntrain: {report_to: [wandb, mlflow, wandb]}")
    assert refused.value.problems[0].path == "train.report_to"
    assert "wandb is listed more than once" in refused.value.problems[0].message


def test_where_a_run_is_tracked_is_not_part_of_what_it_computes():
    plain = Recipe()
    tracked = plain.replace(**{"train.report_to": ["tensorboard", "wandb"]})
    assert tracked.fingerprint() == plain.fingerprint()
    assert Recipe.from_yaml_text(tracked.to_yaml_text()) == tracked


def test_a_run_interrupted_without_trackers_resumes_with_them(tmp_path):
    from fnapi.models.tiny import tiny_model, tiny_tokenizer
    from fnapi.recipe import TrainSection
    from fnapi.training import train
    from tests.unit.test_training import tiny_data

    def once(**changes):
        section = TrainSection(steps=2, batch_size=4, logging_steps=1, save_steps=2, **changes)
        return train(tiny_model("llama"), tiny_tokenizer(), tiny_data(8), None, section, output_dir=tmp_path / "out",
                     save_model=False)

    first = once()
    again = once(report_to=["tensorboard"])  # refused if report_to were part of the checkpoint's identity
    assert again.resumed_from == 2 and again.losses == first.losses


# ---- where trackers write ------------------------------------------------------------------------------

def test_a_session_points_trackers_into_the_run_folder_and_restores_the_environment(tmp_path):
    import wandb

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    with trackers.session(["tensorboard", "wandb"], tmp_path / "run", "demo") as tracking:
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run" / "trackers" / "tensorboard")
        assert wandb.run.id == tracking.runs["wandb"] and wandb.run.name == "demo"
        assert wandb.run.project == "fnapi" and wandb.run.offline
        assert Path(wandb.run.dir).is_relative_to(tmp_path / "run" / "trackers" / "wandb")
        # Entered again for the same run (training inside a run), it is the same session.
        with trackers.session(["tensorboard"], tmp_path / "run", "other") as inner:
            assert inner is tracking
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and wandb.run is None
    # A later session for the same folder continues the same W&B run; one for another folder writes there.
    with trackers.session(["wandb"], tmp_path / "run", "demo") as later:
        assert later.runs["wandb"] == tracking.runs["wandb"]
    with trackers.session(["wandb"], tmp_path / "second", "demo") as other:
        assert other.runs["wandb"] != tracking.runs["wandb"]
        assert Path(wandb.run.dir).is_relative_to(tmp_path / "second" / "trackers" / "wandb")


def test_the_environment_overrides_the_defaults(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    store = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "shared")
    with trackers.session(["tensorboard", "mlflow", "wandb"], tmp_path / "run", "demo") as tracking:
        assert tracking.tensorboard_dir() == tmp_path / "tb"
        assert Path(wandb.run.dir).is_relative_to(tmp_path / "wb") and wandb.run.project == "mine"
        run_id = tracking.runs["mlflow"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    logged = client.get_run(run_id)
    assert logged.info.run_name == "demo" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "shared"
    assert not (tmp_path / "run" / "trackers" / "mlflow").exists()


def test_wandb_goes_online_only_with_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert trackers.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert trackers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == "disabled"


def test_a_failed_run_marks_its_mlflow_run_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError), trackers.session(["mlflow"], tmp_path / "run", "demo") as tracking:
        raise RuntimeError("training broke")
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "trackers" / "mlflow").as_uri())
    assert client.get_run(tracking.runs["mlflow"]).info.status == "FAILED"


def test_headline_leaves_out_what_was_not_measured():
    report = ForgettingReport(name="r", probes=Score(0.5, 0.4, 10, "acc", None, None, [-0.2, 0.0]), kl_to_base=0.01)
    assert report.headline() == pytest.approx({
        "probes_before": 0.5, "probes_after": 0.4, "probes_change": -0.1, "probes_change_ci95_low": -0.2,
        "probes_change_ci95_high": 0.0, "probes_retained": 0.8, "probes_retained_ci95_low": 0.6,
        "probes_retained_ci95_high": 1.0, "kl_to_base": 0.01})


def test_a_tracker_that_cannot_start_is_named_and_the_others_are_ended(tmp_path, monkeypatch):
    import mlflow
    import wandb
    from mlflow.tracking import MlflowClient

    from fnapi.errors import TrackerError

    monkeypatch.setenv("WANDB_MODE", "sideways")  # not a mode wandb knows
    with pytest.raises(TrackerError) as refused, trackers.session(["mlflow", "wandb"], tmp_path / "run", "demo"):
        raise AssertionError("the session should not have started")
    assert refused.value.problems[0].path == "train.report_to[1]"
    assert refused.value.message.startswith("wandb could not start") and "WANDB_MODE" in refused.value.hint
    # The MLflow run it had started is ended as failed, not left active for the next run in this process.
    assert mlflow.active_run() is None and wandb.run is None
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "trackers" / "mlflow").as_uri())
    [logged] = client.search_runs([client.get_experiment_by_name("fnapi").experiment_id])
    assert logged.info.status == "FAILED"
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    with trackers.session(["mlflow"], tmp_path / "run", "demo") as first:
        pass
    with trackers.session(["mlflow"], tmp_path / "run", "demo") as again:
        assert again.runs["mlflow"] == first.runs["mlflow"]
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "trackers" / "mlflow").as_uri())
    assert len(client.search_runs([client.get_experiment_by_name("fnapi").experiment_id])) == 1
