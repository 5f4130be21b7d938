"""Asking a run and its base model the same question (the Summary's "try it" box)."""

from __future__ import annotations

import pytest

from fnapi.errors import RecipeError
from fnapi.eval_target import ask_run
from fnapi.models.generation import answer
from fnapi.models.loading import load_model
from fnapi.models.tiny import save_tiny
from fnapi.recipe import ModelSection, Recipe
from tests.tui.helpers import add_random_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


def test_the_run_and_its_base_answer_side_by_side_and_the_base_stays_plain(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Recipe().replace(**{"model.name": str(tiny)}).to_yaml(run_dir / "recipe.yaml")
    add_random_adapter(run_dir, str(tiny))
    loaded = load_model(ModelSection(name=str(tiny)))
    before = answer(loaded.model, loaded.tokenizer, "What is two plus two?", max_new_tokens=8)
    answers = ask_run(run_dir, "What is two plus two?", loaded=loaded, max_new_tokens=8)
    assert answers.base == before
    assert answers.tuned != answers.base  # the adapter is in the fine-tuned answer
    assert answer(loaded.model, loaded.tokenizer, "What is two plus two?", max_new_tokens=8) == before
    again = ask_run(run_dir, "What is two plus two?", max_new_tokens=8)  # loads the recipe's model itself
    assert (again.tuned, again.base) == (answers.tuned, answers.base)


def test_a_run_without_weights_is_a_clear_error(tmp_path, tiny):
    Recipe().replace(**{"model.name": str(tiny)}).to_yaml(tmp_path / "recipe.yaml")
    with pytest.raises(RecipeError, match="has no trained weights"):
        ask_run(tmp_path, "hello", max_new_tokens=4)
