"""Run directories never destroy earlier work; reports hold computed numbers in three forms."""

from __future__ import annotations

import json

import pytest

from fnapi.errors import RecipeError
from fnapi.recipe import Recipe
from fnapi.report import ForgettingReport, Score, write_report
from fnapi.rundir import claim_run_dir


def test_new_run_dir_records_the_recipe_with_its_real_path(tmp_path):
    recipe = Recipe(name="a")
    run = claim_run_dir(recipe, tmp_path / "run")
    assert not run.resumed
    recorded = Recipe.from_yaml(run.path / "recipe.yaml")
    assert recorded.output.dir == str(tmp_path / "run")  # so `fnapi run DIR/recipe.yaml` comes back here
    assert recorded.replace(**{"output.dir": recipe.output.dir}) == recipe
    assert recorded.fingerprint() == recipe.fingerprint()
    run.release()
    assert claim_run_dir(recorded).path == run.path  # the resume hint, followed from anywhere


def test_unfinished_run_with_same_recipe_resumes(tmp_path):
    recipe = Recipe(name="a")
    first = claim_run_dir(recipe, tmp_path / "run")
    (first.path / "checkpoints").mkdir()
    first.release()
    again = claim_run_dir(recipe, tmp_path / "run")
    assert again.resumed and again.path == first.path


def test_unfinished_run_with_changed_recipe_is_refused_and_untouched(tmp_path):
    first = claim_run_dir(Recipe(name="a"), tmp_path / "run")
    (first.path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    first.release()
    before = (first.path / "recipe.yaml").read_text()
    with pytest.raises(RecipeError, match="interrupted run of a different recipe"):
        claim_run_dir(Recipe(name="a", seed=1), tmp_path / "run")
    assert (first.path / "recipe.yaml").read_text() == before


def test_finished_run_is_kept_and_a_numbered_dir_is_used(tmp_path):
    recipe = Recipe(name="a")
    first = claim_run_dir(recipe, tmp_path / "run")
    (first.path / "report.json").write_text("{}")
    first.mark_finished(1.0)
    first.release()
    second = claim_run_dir(recipe, tmp_path / "run")
    assert second.path == tmp_path / "run-2" and not second.resumed
    assert (first.path / "report.json").read_text() == "{}"


def test_a_live_run_directory_is_refused_naming_its_holder(tmp_path):
    import os

    recipe = Recipe(name="a")
    live = claim_run_dir(recipe, tmp_path / "run")
    with pytest.raises(RecipeError, match=f"in use by a live run \\(process {os.getpid()}\\)"):
        claim_run_dir(recipe, tmp_path / "run")
    live.release()
    assert claim_run_dir(recipe, tmp_path / "run").resumed


def test_reports_without_the_finished_marker_are_an_unfinished_run(tmp_path):
    # A disk that filled while the outputs were written: the run resumes instead of a new -2 folder.
    recipe = Recipe(name="a")
    first = claim_run_dir(recipe, tmp_path / "run")
    (first.path / "report.json").write_text("{}")
    (first.path / "report.md").write_text("# a")
    first.release()
    again = claim_run_dir(recipe, tmp_path / "run")
    assert again.path == first.path and again.resumed


def test_a_run_that_failed_before_training_gives_its_folder_to_the_corrected_recipe(tmp_path):
    first = claim_run_dir(Recipe(name="a", data={"path": "missing.jsonl"}), tmp_path / "run")
    (first.path / "events.jsonl").write_text('{"type": "run_failed"}\n')
    (first.path / "template.json").write_text("{}")
    first.release()
    fixed = Recipe(name="a", data={"path": "builtin:skill"})
    again = claim_run_dir(fixed, tmp_path / "run")
    assert again.path == first.path and not again.resumed and again.taken_over
    assert Recipe.from_yaml(again.path / "recipe.yaml").data.path == "builtin:skill"
    assert not (again.path / "events.jsonl").exists() and not (again.path / "template.json").exists()


def test_a_file_as_the_run_directory_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RecipeError, match="is a file"):
        claim_run_dir(Recipe(name="a"), tmp_path / "run")


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="not an fnapi run"):
        claim_run_dir(Recipe(name="a"), tmp_path / "run")


def test_report_files(tmp_path):
    report = ForgettingReport(
        name="r", task=Score(0.1, 0.7, 20, "exact match"), probes=Score(0.8, 0.6, 40, "accuracy"),
        kl_to_base=0.05, trainable_parameters=25, total_parameters=100, train_seconds=2.0,
        final_loss=0.5, steps=4, losses=[(1, 2.0), (2, 1.5), (3, 1.0), (4, 0.5)],
    )
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["task"]["before"] == 0.1 and data["task"]["after"] == 0.7
    assert data["probes"]["retained"] == pytest.approx(0.75)
    assert data["trainable_fraction"] == pytest.approx(0.25)
    assert data["final_loss"] == 0.5 and data["kl_to_base"] == 0.05
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths["markdown"].read_text()
    assert "75.0%" in markdown and "0.0500" in markdown
    assert ForgettingReport.from_dict(data).to_dict() == data


def test_divergence_is_named_from_the_loss_curve():
    from fnapi.runner import divergence

    assert "rose from 6.0 at step 1 to 10.8" in divergence([(1, 6.0), (5, 8.0), (10, 10.8), (15, 10.8), (20, 10.8)])
    assert "became nan at step 5" in divergence([(1, 3.0), (5, float("nan"))])
    assert divergence([(1, 3.1), (5, 1.2), (10, 0.4)]) is None  # fine-tuning lowers the loss
    assert divergence([(1, 3.1), (5, 3.3)]) is None  # a little noise is not divergence
    assert divergence([(1, 2.0)]) is None


def test_a_report_says_in_words_what_went_wrong_and_what_it_could_not_measure(tmp_path):
    from types import SimpleNamespace

    from fnapi.runner import run_warnings

    recipe = Recipe.from_yaml_text("version: 1\nname: r\ndata: {path: one.jsonl}\n")
    report = ForgettingReport(name="r", losses=[(1, 6.0), (5, 9.0), (10, 10.8)])
    data = SimpleNamespace(train=[object()], validation=[], test=None)
    report.warnings = run_warnings(recipe, data, report)
    text = " | ".join(report.warnings)
    assert "training diverged" in text and "lower train.learning_rate" in text
    assert "the task score could not be measured: one.jsonl left 0 test or validation rows" in text
    write_report(report, tmp_path)
    assert "**Warning**: training diverged" in (tmp_path / "report.md").read_text()
    assert ForgettingReport.from_dict(json.loads((tmp_path / "report.json").read_text())).warnings == report.warnings
