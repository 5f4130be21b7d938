"""Run directories never destroy earlier work; reports hold computed numbers in three forms."""

from __future__ import annotations

import json

import pytest

from fnapi.errors import RecipeError
from fnapi.recipe import Recipe
from fnapi.report import ForgettingReport, Score, write_report
from fnapi.rundir import claim_run_dir


def test_new_run_dir_records_the_recipe(tmp_path):
    recipe = Recipe(name="a")
    run = claim_run_dir(recipe, tmp_path / "run")
    assert not run.resumed
    assert Recipe.from_yaml(run.path / "recipe.yaml") == recipe


def test_unfinished_run_with_same_recipe_resumes(tmp_path):
    recipe = Recipe(name="a")
    first = claim_run_dir(recipe, tmp_path / "run")
    (first.path / "checkpoints").mkdir()
    again = claim_run_dir(recipe, tmp_path / "run")
    assert again.resumed and again.path == first.path


def test_unfinished_run_with_changed_recipe_is_refused_and_untouched(tmp_path):
    first = claim_run_dir(Recipe(name="a"), tmp_path / "run")
    (first.path / "checkpoints").mkdir()
    before = (first.path / "recipe.yaml").read_text()
    with pytest.raises(RecipeError, match="interrupted run of a different recipe"):
        claim_run_dir(Recipe(name="a", seed=1), tmp_path / "run")
    assert (first.path / "recipe.yaml").read_text() == before


def test_finished_run_is_kept_and_a_numbered_dir_is_used(tmp_path):
    recipe = Recipe(name="a")
    first = claim_run_dir(recipe, tmp_path / "run")
    (first.path / "report.json").write_text("{}")
    second = claim_run_dir(recipe, tmp_path / "run")
    assert second.path == tmp_path / "run-2" and not second.resumed
    assert (first.path / "report.json").read_text() == "{}"


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
