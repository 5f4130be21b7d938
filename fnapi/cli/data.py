"""``fnapi data``: look at a dataset the way training will see it."""

from __future__ import annotations

import json
import sys

import typer

data_app = typer.Typer(
    name="data",
    help="Inspect datasets: detected format, kept and skipped rows, and the tokens the loss trains on.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("inspect")
def inspect(
    path: str = typer.Argument(..., help="file, folder, hub dataset id, or builtin:NAME (fnapi data list)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="model whose tokenizer and chat template render the examples"),
    format: str = typer.Option("auto", "--format", "-f",
                               help="auto, or a format name (alpaca, messages, sharegpt, ...)"),
    fields: str = typer.Option("", "--fields", help="field mapping SOURCE=ROLE,... (roles: user, assistant, "
                               "system, context, text, messages, conversations)"),
    split: str = typer.Option("train", "--split", help="train, validation or test"),
    template: str = typer.Option("auto", "--template", help="auto, model, chatml, alpaca or plain"),
    system_prompt: str = typer.Option("", "--system-prompt", help="system prompt for examples that have none"),
    max_length: int = typer.Option(256, "--max-length", min=1, help="tokens per example; longer ones are cut"),
    examples: int = typer.Option(3, "--examples", "-n", min=0, help="how many examples to render"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of text"),
) -> None:
    """Show the detected format, row counts with skip reasons, and examples with trained spans marked.

    In plain output trained tokens are inside ⟦ ⟧; on a terminal they are highlighted instead.
    """
    from fnapi.data.inspect import inspect_data, render_text
    from fnapi.models.source import load_tokenizer

    tokenizer = load_tokenizer(model)
    preview = inspect_data(path, tokenizer, tokenizer_name=model, format=format, fields=_parse_fields(fields),
                           split=split, chat_template=template, max_length=max_length, examples=examples,
                           system_prompt=system_prompt or None)
    if as_json:
        print(json.dumps(preview.to_dict(), ensure_ascii=False, indent=2))
    elif sys.stdout.isatty():
        _print_rich(preview)
    else:
        print(render_text(preview))


@data_app.command("list")
def list_builtins(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of text"),
) -> None:
    """List the built-in datasets (builtin:NAME): generated here, no download."""
    from fnapi.data.builtin import BUILTIN_TASKS, BUILTINS

    if as_json:
        print(json.dumps({"builtins": [{"name": f"builtin:{name}", "description": text, "trainable": name in BUILTIN_TASKS}
                                       for name, text in BUILTINS.items()]}, indent=2))
        return
    width = max(len(name) for name in BUILTINS) + len("builtin:")
    print("Trainable tasks (train/validation/test splits, scored by exact match):")
    for name in BUILTIN_TASKS:
        print(f"  {'builtin:' + name:<{width}}  {BUILTINS[name]}")
    print("For measuring:")
    for name, text in BUILTINS.items():
        if name not in BUILTIN_TASKS:
            print(f"  {'builtin:' + name:<{width}}  {text}")


def _parse_fields(text: str) -> dict[str, str]:
    from fnapi.errors import DataError

    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, role = item.partition("=")
        if not sep or not source.strip() or not role.strip():
            raise DataError(f"--fields: {item!r} is not SOURCE=ROLE (for example question=user,answer=assistant)")
        mapping[source.strip()] = role.strip()
    return mapping


def _print_rich(preview) -> None:
    from rich.console import Console
    from rich.text import Text

    from fnapi.data.inspect import render_text

    console = Console(highlight=False)
    head, _, _ = render_text(preview).partition("\n\n--- ")
    console.print(Text(head.replace("Trained tokens are inside ⟦ ⟧", "Trained tokens are highlighted")))
    for example in preview.examples:
        cut = f", cut by {example['tokens_cut']} tokens" if example["truncated"] else ""
        console.print(Text(f"\n--- row {example['row']}: {example['tokens']} tokens, "
                           f"{example['trained_tokens']} trained{cut} ---", style="bold"))
        text = Text()
        for segment in example["segments"]:
            text.append(segment["text"], style="bold green reverse" if segment["trained"] else "dim")
        console.print(text)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
