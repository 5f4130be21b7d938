"""A planted token must never show up in anything fnapi prints or writes.

Each producer below gets a :class:`Context` (planted token, scratch folder, CLI runner), does one
thing a user could do, and returns everything that came out (stdout, stderr, file contents) as one
string. To cover a new output, add a function decorated with ``@producer``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fnapi.auth import resolve_token
from fnapi.cli import main


@dataclass
class Context:
    """What a producer gets: the planted token, a scratch folder, and a way to run the CLI."""

    token: str
    tmp: Path
    capsys: pytest.CaptureFixture

    def cli(self, *argv: str) -> str:
        """Run ``fnapi ARGV`` in-process; its exit code, stdout and stderr as one string."""
        code = main(list(argv))
        captured = self.capsys.readouterr()
        return f"exit {code}\n{captured.out}\n{captured.err}"

    def files(self) -> str:
        """The contents of every file under the scratch folder."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.rglob("*")) if p.is_file())


Producer = Callable[[Context], str]
PRODUCERS: list[Producer] = []


def producer(fn: Producer) -> Producer:
    """Add ``fn`` to the outputs checked for leaks."""
    PRODUCERS.append(fn)
    return fn


# ---- producers ---------------------------------------------------------------------------------


@producer
def auth_status(ctx: Context) -> str:
    return ctx.cli("auth", "status")


@producer
def auth_status_json(ctx: Context) -> str:
    return ctx.cli("auth", "status", "--json")


@producer
def detect_json(ctx: Context) -> str:
    return ctx.cli("detect", "--json")


@producer
def cli_error_message(ctx: Context) -> str:
    # A user error that quotes the offending value: the token pasted into the wrong recipe field.
    recipe = ctx.tmp.parent / "bad.yaml"
    recipe.write_text(f"version: 1\nname: demo\ntrain: {{learning_rate: {ctx.token}}}\n")
    return ctx.cli("validate", str(recipe))


@producer
def fnapi_error(ctx: Context) -> str:
    from fnapi.errors import FnapiError

    error = FnapiError(f"could not use token {ctx.token}", hint=f"check {ctx.token}")
    return f"{error}\n{error.message}\n{error.hint}\n{error!r}"


@producer
def jsonl_event_log(ctx: Context) -> str:
    from fnapi.events import JsonlSink, Log

    sink = JsonlSink(ctx.tmp / "events.jsonl")
    sink.emit(Log(message=f"authenticating with {ctx.token}"))
    sink.close()
    return ctx.files()


@producer
def recipe_yaml(ctx: Context) -> str:
    # A recipe field holding the token is refused, and the refusal names the field, not the value.
    from fnapi.errors import RecipeError
    from fnapi.recipe import Recipe

    with pytest.raises(RecipeError) as refused:
        Recipe().replace(**{"data.system_prompt": f"use {ctx.token} please"})
    assert "data.system_prompt" in str(refused.value)
    return str(refused.value) + ctx.files()


@producer
def failed_run(ctx: Context) -> str:
    # The token pasted into the model path: the error, events.jsonl and recipe.yaml all mention the path.
    recipe = ctx.tmp.parent / "run.yaml"
    recipe.write_text(f"version: 1\nname: leak\nmodel: {{name: ./models/{ctx.token}}}\n")
    output = ctx.cli("run", str(recipe), "--output", str(ctx.tmp / "run"))
    assert output.startswith("exit 2") and "model.name" in output, output
    return output + ctx.files()


@producer
def finished_run(ctx: Context) -> str:
    from fnapi.models.tiny import save_tiny

    model = save_tiny("llama", ctx.tmp.parent / "tiny")
    recipe = ctx.tmp.parent / "run.yaml"
    recipe.write_text(
        f"version: 1\nname: leak\nmodel: {{name: {model}}}\n"
        "data: {path: builtin:skill, max_samples: 16, max_length: 32}\n"
        "train: {steps: 2, batch_size: 2, save_steps: 1}\neval: {enabled: false}\n"
    )
    return ctx.cli("run", str(recipe), "--output", str(ctx.tmp / "run")) + ctx.files()


@producer
def tracked_run(ctx: Context) -> str:
    # Every tracker's files after a run: the Trainer logs its arguments and the model config to them
    # (TensorBoard text, MLflow params, W&B config and run metadata), and fnapi its summary numbers.
    from fnapi.models.tiny import save_tiny

    model = save_tiny("llama", ctx.tmp.parent / "tiny")
    recipe = ctx.tmp.parent / "run.yaml"
    recipe.write_text(
        f"version: 1\nname: leak\nmodel: {{name: {model}}}\n"
        "data: {path: builtin:skill, max_samples: 16, max_length: 48}\n"
        "train: {steps: 2, batch_size: 2, save_steps: 1, report_to: [tensorboard, mlflow, wandb]}\n"
        "eval: {enabled: false}\n"
    )
    output = ctx.cli("run", str(recipe), "--output", str(ctx.tmp / "run"))
    assert output.startswith("exit 0"), output
    written = sorted(p.name for p in (ctx.tmp / "run" / "trackers").rglob("*") if p.is_file())
    assert any("tfevents" in n for n in written) and any(n.endswith(".wandb") for n in written), written
    assert "learning_rate" in written, written  # an MLflow parameter file: the Trainer's arguments were logged
    return output + ctx.files()


# ---- the check ---------------------------------------------------------------------------------


def _random_token(prefix: str) -> str:
    rng = random.Random()
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(34))


@pytest.fixture(params=["hf_", "plain"], ids=["hf-shaped", "any-shape"])
def planted(request, monkeypatch):
    """A token in HF_TOKEN, read once as any fnapi process does (which registers it for redaction).

    The second shape has no ``hf_`` prefix, so only registration can hide it.
    """
    token = _random_token("hf_" if request.param == "hf_" else "")
    monkeypatch.setenv("HF_TOKEN", token)
    assert resolve_token().token == token
    return token


@pytest.mark.parametrize("make_output", PRODUCERS, ids=[p.__name__ for p in PRODUCERS])
def test_token_never_leaks(make_output, planted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = make_output(Context(token=planted, tmp=out_dir, capsys=capsys))
    assert output.strip(), "the producer produced nothing, so the check would prove nothing"
    assert planted not in output
