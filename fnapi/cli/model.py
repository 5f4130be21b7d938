"""``fnapi model info`` and ``fnapi ask``: look at a model, and ask it one question."""

from __future__ import annotations

import json

import typer

from fnapi.models.source import EMBEDDED_MODEL

model_app = typer.Typer(help="Inspect models.", no_args_is_help=True, add_completion=False)


@model_app.command("info")
def info(
    model_spec: str = typer.Argument(EMBEDDED_MODEL, metavar="MODEL", help="embedded name, hub id, local folder or .gguf file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Load a model and print its architecture, shapes, parameter count and weight fingerprint."""
    from fnapi.events import console_sink
    from fnapi.models.loading import load_model

    loaded = load_model(model_spec, sink=console_sink())
    facts = {**loaded.info.to_dict(), "source": loaded.source,
             "pad_token": loaded.tokenizer.pad_token, "pad_is_eos": loaded.pad_is_eos}
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    width = max(len(key) for key in facts)
    for key, value in facts.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        print(f"{key.replace('_', ' '):<{width}}  {shown}")


def ask(
    prompt: str = typer.Argument(..., help="the question"),
    model: str = typer.Option(EMBEDDED_MODEL, "--model", "-m", help="embedded name, hub id, local folder or .gguf file"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="longest answer, in tokens"),
    system: str | None = typer.Option(None, "--system", help="system prompt (default: the model's own)"),
) -> None:
    """Ask a model one question and print its greedy answer (uses the model's chat template)."""
    from fnapi.events import console_sink
    from fnapi.models.generation import answer
    from fnapi.models.loading import load_model

    loaded = load_model(model, sink=console_sink())
    print(answer(loaded.model, loaded.tokenizer, prompt, system=system, max_new_tokens=max_new_tokens))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.command("ask")(ask)
