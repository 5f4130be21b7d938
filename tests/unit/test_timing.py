"""The time estimate: its arithmetic, the rates it measures, and a whole recipe on the tiny model."""

from __future__ import annotations

import pytest

from fnapi.models.loading import load_model
from fnapi.models.tiny import save_tiny
from fnapi.recipe import Recipe
from fnapi.timing import (
    Rates,
    Sizes,
    TimeEstimate,
    estimate_template_time,
    estimate_time,
    expected_padded_length,
    format_duration,
    time_model_passes,
    time_stages,
    training_steps,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_model(Recipe().replace(**{"model.name": str(tiny)}).model)


def _recipe(tiny, **changes):
    base = {"model.name": str(tiny), "data.path": "builtin:skill", "data.max_length": 48, "data.max_samples": 40,
            "train.steps": 6, "train.batch_size": 4, "train.validation_samples": 5,
            "eval.task_samples": 4, "eval.probe_samples": 10, "eval.kl_prompts": 3, "eval.max_new_tokens": 4}
    return Recipe().replace(**{**base, **changes})


def test_stage_seconds_are_work_times_rate():
    rates = Rates(forward_token=0.001, train_token=0.003, task_item=0.5, probe_item=0.1, text_item=0.2,
                  ica_row=0.01, load_seconds=7.0)
    sizes = Sizes(steps=10, batch_tokens=128, validation_tokens=400, task_items=4, probe_items=20, text_items=5,
                  task_check_items=8, capture_tokens=1000, ica_runs=3)
    estimate = time_stages(rates, sizes)
    assert [s.stage for s in estimate.stages] == ["model", "capture", "ica", "baseline", "train", "validate",
                                                  "evaluate"]
    assert estimate.stage("model") == 7.0
    assert estimate.stage("capture") == pytest.approx(1.0)
    assert estimate.stage("ica") == pytest.approx(10.0)
    assert estimate.stage("baseline") == pytest.approx(4 * 0.5 + 20 * 0.1 + 5 * 0.2)
    assert estimate.stage("evaluate") == estimate.stage("baseline")
    assert estimate.stage("train") == pytest.approx(10 * 128 * 0.003 + 8 * 0.5)  # steps, plus the task checks
    assert estimate.stage("validate") == pytest.approx(0.4)
    assert estimate.seconds == pytest.approx(sum(s.seconds for s in estimate.stages))
    assert TimeEstimate.from_dict(estimate.to_dict()).stage("train") == pytest.approx(estimate.stage("train"), abs=0.05)


def test_stages_without_work_are_left_out_and_attribution_costs_backward_passes():
    estimate = time_stages(Rates(forward_token=0.001, train_token=0.002),
                           Sizes(steps=3, batch_tokens=100, attribution_tokens=500))
    assert [s.stage for s in estimate.stages] == ["attribution", "train"]
    assert estimate.stage("attribution") == pytest.approx(1.0)


def test_durations_read_in_whole_units():
    assert format_duration(44.6) == "45 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3725) == "1 h 02 min"
    assert TimeEstimate(()).describe() == "about 0 s"


def test_padded_length_and_steps_follow_the_collator_and_the_trainer():
    assert expected_padded_length([10, 20, 30], rows=8) == 30.0  # one batch holds everything
    assert expected_padded_length([16] * 50, rows=4) == 16.0
    mixed = expected_padded_length([10] * 40 + [40] * 10, rows=4)
    assert 10 < mixed < 40  # some batches hold a long row, most do not
    recipe = Recipe()
    assert training_steps(recipe.train, 1000) == recipe.train.steps
    by_epochs = recipe.replace(**{"train.steps": None, "train.epochs": 2.0, "train.batch_size": 4}).train
    assert training_steps(by_epochs, 10) == 6  # ceil(10 / 4) batches per epoch, two epochs


def test_timing_the_passes_leaves_the_model_as_it_was(loaded):
    model = loaded.model
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    forward, train = time_model_passes(model, rows=2, length=16, full=True)
    assert 0 < forward < train  # a backward pass costs more than no backward pass
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_a_recipe_is_timed_stage_by_stage_from_its_own_sizes(tiny, loaded):
    recipe = _recipe(tiny, **{"template.data": ["builtin:text"], "template.samples": 6, "template.max_length": 16,
                              "template.components": 3, "template.runs": 2})
    cache: dict = {}
    estimate = estimate_time(recipe, loaded, cache=cache)
    stages = {s.stage: s for s in estimate.stages}
    assert set(stages) == {"capture", "ica", "baseline", "train", "validate", "evaluate"}
    assert all(s.seconds > 0 for s in estimate.stages)
    # 4 task conversations, 10 probe items and 3 text paragraphs, as the recipe's eval section says, and
    # by default the first 100 probe questions asked open-ended and 24 general prompts
    assert stages["baseline"].detail == "141 items scored on the base model"
    assert stages["train"].detail.startswith("6 steps of about ")
    # Twice the steps is twice the training time, from the rates already measured (the cache)
    longer = estimate_time(recipe.replace(**{"train.steps": 12}), loaded, cache=cache)
    assert longer.stage("train") == pytest.approx(2 * estimate.stage("train"))
    assert longer.stage("baseline") == estimate.stage("baseline")
    quiet = estimate_time(recipe.replace(**{"eval.enabled": False, "template": None}), loaded, cache=cache)
    assert {s.stage for s in quiet.stages} == {"train", "validate"}


def test_a_template_build_is_timed_before_it_starts(tiny, loaded):
    recipe = _recipe(tiny, **{"template.data": ["builtin:text"], "template.samples": 6, "template.max_length": 16,
                              "template.components": 3, "template.runs": 2})
    cache: dict = {}
    ica = estimate_template_time(recipe.template, ["builtin:text"], loaded, cache=cache)
    assert [s.stage for s in ica.stages] == ["capture", "ica"]
    more = estimate_template_time(recipe.template.model_copy(update={"samples": 12}), ["builtin:text"], loaded,
                                  cache=cache)
    assert more.stage("capture") > ica.stage("capture")
    attribution = estimate_template_time(recipe.template.model_copy(update={"method": "attribution"}),
                                         ["builtin:text"], loaded)
    assert [s.stage for s in attribution.stages] == ["attribution"]
    assert attribution.seconds > 0
