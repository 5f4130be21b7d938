"""Bad input shows inline next to its field and blocks Next until it is fixed; fnapi errors show
as readable messages, not crashes."""

from __future__ import annotations

import pytest
from textual.widgets import Button, Checkbox, Collapsible, Input, Select, Static

from fnapi.errors import HardwareError
from fnapi.recipe import Recipe
from fntui.screens.model import ModelCheck
from fntui.widgets.fields import Field
from tests.tui.helpers import TERMINAL, FakeRun, make_app, settle, text_of

pytestmark = pytest.mark.anyio


def error_of(screen, control_id: str) -> str | None:
    """The inline error shown under the field holding ``control_id``."""
    return next(f.error for f in screen.query(Field) if f.control.id == control_id)


async def enter(pilot, control_id: str, text: str) -> None:
    """Put ``text`` into a field (as typing would: the field posts Changed) and let it settle."""
    field = pilot.app.screen.query_one(f"#{control_id}", Input)
    field.focus()
    field.value = text
    await settle(pilot)


async def test_invalid_numbers_block_next_until_fixed(drafts):
    app = make_app(drafts, step="training")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await enter(pilot, "steps", "ten")
        await enter(pilot, "learning-rate", "fast")
        await enter(pilot, "batch-size", "0")
        screen = app.screen
        assert error_of(screen, "steps") == "'ten' is not a whole number"
        assert error_of(screen, "learning-rate").startswith("'fast' is not a number")
        assert error_of(screen, "batch-size") == "must be at least 1"
        assert screen.query_one("#next", Button).disabled
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "training" and app.screen is screen
        assert app.focused.id == "steps"  # Next took the cursor to the first problem
        banner = text_of(screen.query_one("#banner"))  # and says why, in case the field is off screen
        assert banner.startswith("Next needs a fix: Steps: 'ten' is not a whole number (and 2 more)")

        await enter(pilot, "steps", "10")
        await enter(pilot, "learning-rate", "1e-4")
        await enter(pilot, "batch-size", "2")
        assert [error_of(screen, i) for i in ("steps", "learning-rate", "batch-size")] == [None, None, None]
        assert not screen.query_one("#next", Button).disabled
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "run"
        assert app.draft.recipe.train.steps == 10 and app.draft.recipe.train.learning_rate == 1e-4


async def test_a_mask_preset_without_networks_is_refused_at_the_preset(drafts):
    app = make_app(drafts, step="training")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#preset").focus()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert "protect needs networks" in error_of(app.screen, "preset-row")
        await pilot.press("ctrl+n")
        assert app.draft.step == "training"


async def test_missing_model_path_is_shown_at_once_and_a_failed_load_stays_inline(drafts):
    app = make_app(drafts, step="model")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await enter(pilot, "model-spec", "./models/missing")
        assert error_of(app.screen, "model-spec") == "model path ./models/missing does not exist"
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "model"

        await enter(pilot, "model-spec", "data")  # a folder, but not a model folder: fnapi says why
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "model"
        assert "is not a model folder: it has no config.json" in error_of(app.screen, "model-spec")
        assert app.screen.query_one("#next", Button).disabled


async def test_data_path_and_forced_format_errors_land_next_to_their_fields(drafts):
    app = make_app(drafts, step="data", **{"data.path": "data/sums.jsonl"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert error_of(app.screen, "data-path") is None
        assert "alpaca" in text_of(app.screen.query_one("#data-report", Static))

        await enter(pilot, "data-path", "data/nope.jsonl")
        assert error_of(app.screen, "data-path") == "no such file or folder: data/nope.jsonl"
        await enter(pilot, "data-path", "data/sums.jsonl")
        await enter(pilot, "data-fields", "instruction:user")
        assert "write source=role pairs" in error_of(app.screen, "data-fields")
        await enter(pilot, "data-fields", "")

        app.screen.query_one("#data-format").value = "sharegpt"  # a layout the file does not have
        await settle(pilot)
        assert "sharegpt" in (error_of(app.screen, "data-format") or "")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "data"

        app.screen.query_one("#data-format").value = "auto"
        await enter(pilot, "max-length", "8")  # shorter than any prompt: no answer token survives
        await pilot.press("enter")
        await settle(pilot)
        assert "every example is cut before its answer" in (error_of(app.screen, "max-length") or "")
        assert app.screen.query_one("#next", Button).disabled


async def test_welcome_open_recipe_reports_an_invalid_file_inline(drafts, workdir):
    (workdir / "broken.yaml").write_text("train:\n  stepz: 3\n")
    app = make_app(drafts)
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#start").focus()
        await pilot.press("down", "enter")  # "Open a recipe file"
        await enter(pilot, "recipe-file", "broken.yaml")
        assert "train.stepz: unknown key; did you mean 'steps'?" in error_of(app.screen, "recipe-file")
        await pilot.press("ctrl+n")
        assert app.draft.step == "welcome"


async def test_a_token_with_spaces_is_refused(drafts):
    app = make_app(drafts, step="auth")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#token").focus()
        await pilot.press(*"hf_abc def")  # typed key by key into the masked field
        assert error_of(app.screen, "token").startswith("a token has no spaces")
        await pilot.press("ctrl+n")
        assert app.draft.step == "auth"


async def test_an_fnapi_error_during_the_run_is_a_readable_message(drafts):
    error = HardwareError("train.method qlora needs a CUDA GPU", hint="use lora on this machine")
    app = make_app(drafts, step="run", run_fn=FakeRun(error=error))
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        banner = text_of(app.screen.query_one("#banner", Static))
        assert "train.method qlora needs a CUDA GPU" in banner and "use lora on this machine" in banner
        assert app.screen.state == "failed" and app.is_running


async def test_qlora_on_a_machine_without_cuda_is_refused_at_the_method(drafts):
    from textual.widgets import Select

    app = make_app(drafts, step="training")  # the fixed hardware has no CUDA device
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#method", Select).value = "qlora"
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "training"
        message = error_of(app.screen, "method")
        assert message is not None and "qlora needs a CUDA GPU" in message and "train.method: lora" in message
        app.screen.query_one("#method", Select).value = "lora"
        await settle(pilot)
        assert error_of(app.screen, "method") is None


async def test_the_validation_size_is_a_training_field_written_to_the_recipe(drafts):
    app = make_app(drafts, step="training")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#validation-samples", Input).value == "64"  # the recipe default
        await enter(pilot, "validation-samples", "none")
        assert error_of(app.screen, "validation-samples") == "'none' is not a whole number"
        await enter(pilot, "validation-samples", "")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "run" and app.draft.recipe.train.validation_samples is None


async def test_a_batch_that_cannot_fit_in_memory_is_refused_at_the_field(drafts, tiny_model_dir):
    app = make_app(drafts, step="training")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        # what the Model step leaves behind
        app.session.model = ModelCheck.of(app.engine, app.engine.load_model(app.draft.recipe.model), app.draft.recipe)
        await enter(pilot, "batch-size", "100000000")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "training"
        message = error_of(app.screen, "batch-size")
        assert message is not None and "batch 100000000" in message and "is available" in message
        await enter(pilot, "batch-size", "2")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "run" and app.draft.recipe.train.batch_size == 2


async def test_max_tokens_beyond_what_the_model_reads_are_refused_at_the_field(drafts):
    app = make_app(drafts, step="data", **{"data.path": "data/sums.jsonl"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.session.model = ModelCheck.of(app.engine, app.engine.load_model(app.draft.recipe.model), app.draft.recipe)
        longest = app.session.model.info.context_length
        assert longest and longest < 99999
        await enter(pilot, "max-length", "99999")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "data"
        assert error_of(app.screen, "max-length") == f"the model reads at most {longest:,} tokens; use {longest:,} or fewer"


async def test_a_changed_data_path_hides_the_preview_of_the_old_one(drafts):
    app = make_app(drafts, step="data", **{"data.path": "data/sums.jsonl"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#data-preview").display  # sums.jsonl was read and shown
        await enter(pilot, "data-path", "data/missing.jsonl")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert error_of(app.screen, "data-path") == "no such file or folder: data/missing.jsonl"
        assert not app.screen.query_one("#data-preview").display
        assert text_of(app.screen.query_one("#data-report")).strip() == ""


async def test_unticking_the_recommended_settings_says_what_the_recipe_keeps(drafts):
    from textual.widgets import Checkbox

    app = make_app(drafts, step="hardware")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        effect = app.screen.query_one("#apply-effect")
        assert text_of(effect).startswith("Next writes device cpu, dtype float32, quantization none")
        app.screen.query_one("#apply", Checkbox).value = False
        await settle(pilot)
        assert text_of(effect).startswith("The recipe keeps device auto, dtype auto, quantization none")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert (app.draft.recipe.model.device, app.draft.recipe.model.dtype) == ("auto", "auto")


async def test_a_bad_layer_filter_is_shown_at_its_field_before_any_model_loads(drafts):
    app = make_app(drafts, step="template")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await enter(pilot, "tpl-layers", "0:99,foo")
        assert app.session.model is None  # nothing was loaded to find this out
        assert error_of(app.screen, "tpl-layers").startswith("layer filter '0:99,foo': cannot read 'foo'")


async def test_the_template_build_time_is_estimated_and_follows_the_settings(drafts):
    import asyncio

    from tests.tui.helpers import fixed_timer

    asked = []

    def timer(recipe, what=None):
        asked.append((what, recipe.template.samples if recipe.template else None))
        return fixed_timer(recipe, what) if what else fixed_timer(recipe)

    app = make_app(drafts, step="template")
    app.engine._timer = timer
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        line = app.screen.query_one("#tpl-estimate", Static)
        assert text_of(line).strip() == "Build time on this machine: about 52 s (ica 40 s, capture 12 s)"
        await enter(pilot, "tpl-samples", "99")
        await asyncio.sleep(1.0)  # the estimate waits until the settings stop changing
        await settle(pilot)
        assert asked[-1] == ("template", 99)
        await enter(pilot, "tpl-samples", "x")
        await asyncio.sleep(1.0)
        await settle(pilot)
        assert text_of(line).strip() == ""  # nothing is estimated for settings that are wrong


async def test_loading_a_model_shows_a_moving_bar_that_goes_when_it_is_loaded(drafts):
    import threading

    from textual.widgets import ProgressBar

    app = make_app(drafts, step="model")
    release = threading.Event()
    load = app.engine.load_model

    def slow_load(*args, **kwargs):
        release.wait(10)  # a first conversion takes about half a minute
        return load(*args, **kwargs)

    app.engine.load_model = slow_load
    async with app.run_test(size=TERMINAL) as pilot:
        await pilot.pause()
        bar = app.screen.query_one("#model-wait", ProgressBar)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert bar.display and bar.total is None  # indeterminate: it animates while nothing is known
        assert text_of(app.screen.query_one("#model-status")).startswith("Loading")
        release.set()
        await settle(pilot)
        assert app.draft.step == "data"  # loaded, checked, and on to the next step


async def test_the_advanced_fold_writes_every_setting_to_the_recipe(drafts, tiny_model_dir):
    app = make_app(drafts, step="training", **{"train.steps": 40})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        # what the Model step leaves behind
        app.session.model = ModelCheck.of(app.engine, app.engine.load_model(app.draft.recipe.model), app.draft.recipe)
        assert app.screen.query_one("#advanced", Collapsible).collapsed  # folded away at first
        assert app.screen.query_one("#save-steps", Input).value == "20"  # 40 steps: two checkpoints, not none
        await enter(pilot, "steps", "")  # by epochs
        await enter(pilot, "epochs", "2.5")
        await enter(pilot, "warmup", "0.1")
        app.screen.query_one("#scheduler", Select).value = "cosine"
        await enter(pilot, "weight-decay", "0.01")
        await enter(pilot, "lora-r", "4")
        await enter(pilot, "lora-alpha", "8")
        await enter(pilot, "lora-dropout", "0.05")
        await enter(pilot, "lora-targets", "q_proj, v_proj")
        app.screen.query_one("#gradient-checkpointing", Checkbox).value = True
        await enter(pilot, "save-steps", "7")
        await enter(pilot, "seed", "123")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "run", text_of(app.screen.query_one("#banner"))
        train = app.draft.recipe.train
        assert (train.steps, train.epochs, train.warmup_ratio, train.scheduler, train.weight_decay) == (
            None, 2.5, 0.1, "cosine", 0.01)
        assert (train.lora.r, train.lora.alpha, train.lora.dropout, train.lora.target_modules) == (
            4, 8.0, 0.05, ["q_proj", "v_proj"])
        assert train.gradient_checkpointing and train.save_steps == 7 and app.draft.recipe.seed == 123
        assert Recipe.from_yaml(app.draft.choices.recipe_path) == app.draft.recipe


async def test_bad_advanced_settings_open_the_fold_and_say_what_is_wrong(drafts, tiny_model_dir):
    app = make_app(drafts, step="training")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.session.model = ModelCheck.of(app.engine, app.engine.load_model(app.draft.recipe.model), app.draft.recipe)
        await enter(pilot, "warmup", "1.5")
        await enter(pilot, "lora-dropout", "-0.1")
        await enter(pilot, "lora-targets", "q_proj, attention")
        await enter(pilot, "seed", "-1")
        app.screen.query_one("#advanced", Collapsible).collapsed = True
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        assert app.draft.step == "training" and not screen.query_one("#advanced", Collapsible).collapsed
        assert error_of(screen, "warmup").startswith("a share of the steps")
        assert error_of(screen, "lora-dropout").startswith("at least 0 and below 1")
        message = error_of(screen, "lora-targets")
        assert message.startswith("attention is not a linear layer of this model") and "q_proj" in message
        assert error_of(screen, "seed") == "must be at least 0"


async def test_the_checkpoint_interval_follows_steps_until_it_is_edited(drafts):
    app = make_app(drafts, step="training", **{"train.steps": 15})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        save = app.screen.query_one("#save-steps", Input)
        assert save.value == "7"  # checkpoints at 7 and 14 (the default 50 would leave none)
        await enter(pilot, "steps", "300")
        assert save.value == "50"  # long runs keep the recipe's interval
        await enter(pilot, "save-steps", "25")
        await enter(pilot, "steps", "10")
        assert save.value == "25"  # the user's number wins


async def test_the_batch_prefill_says_it_is_working_and_says_when_it_could_not(drafts):
    import threading

    app = make_app(drafts, step="training", extras={})
    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(10)
        raise HardwareError("the model could not be loaded here")

    app.engine.load_model = slow_load
    async with app.run_test(size=TERMINAL) as pilot:
        await pilot.pause()
        note = app.screen.query_one("#prefill-note", Static)
        assert text_of(note).startswith("Working out the batch size for this machine and model")
        release.set()
        await settle(pilot)
        assert text_of(note).startswith("The batch size was not worked out (the model could not be loaded here")
