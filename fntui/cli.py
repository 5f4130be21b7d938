"""The ``fntui`` command: the wizard, the template browser, and headless replay of a recipe.

Only typer is imported at start-up; textual, questionary and fnapi's heavy modules are imported
inside the commands, so ``fntui --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="fntui",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"fntui {version('fntui')}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    resume: bool = typer.Option(False, "--resume", help="reopen the last draft (asks which, when there are several)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Fine-tune LLMs with functional-network masks, step by step in the terminal.

    Without a command the wizard opens: it writes a recipe as you go (saved after every step) and
    can run it. The recipe replays headless with `fntui replay` or `fnapi run`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from fntui.drafts import DraftStore

    store = DraftStore()
    draft = None
    if resume:
        draft = choose_draft(store)
        if draft is None:
            print(f"no draft to resume in {store.root}; starting a new one", file=sys.stderr)
    from fntui.app import FntuiApp

    FntuiApp(drafts=store, draft=draft).run()


def choose_draft(store, ask=None):
    """The draft to reopen: the only one, or the one picked in a short list (newest first).

    ``ask`` chooses among several drafts (default: a questionary list on a terminal, else the newest).
    """
    drafts = store.list()
    if len(drafts) <= 1:
        return drafts[0] if drafts else None
    if ask is None:
        if not sys.stdin.isatty():
            return drafts[0]
        ask = _ask_with_questionary
    return ask(drafts)


def _ask_with_questionary(drafts):
    import questionary

    choices = [questionary.Choice(f"{d.recipe.name} · step {d.step} · saved {d.updated} · {d.id}", value=d)
               for d in drafts]
    picked = questionary.select("Which draft?", choices=choices, default=choices[0]).ask()
    if picked is None:  # ctrl+c in the prompt
        raise typer.Exit(130)
    return picked


@app.command()
def browse(
    template: Path = typer.Argument(..., help="template JSON file"),
    compare: Path | None = typer.Option(None, "--compare", help="another template to compare with (IoU per component)"),
) -> None:
    """Browse a template's networks; --compare shows IoU with another.

    A tree of template, components, layers and neurons with size, per-layer counts, stability and
    top tokens in context; / searches.
    """
    from fnapi.errors import TemplateError

    for path in (template, compare):
        if path is not None and not path.is_file():
            raise TemplateError(f"template file not found: {path}")
    from fntui.app import FntuiApp

    FntuiApp(browse=template, compare=compare).run()


@app.command()
def replay(
    recipe: Path = typer.Argument(..., help="recipe YAML file (for example one the wizard wrote)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="run directory (default: recipe output.dir)"),
) -> None:
    """Run a recipe headless, exactly like `fnapi run`.

    Console progress on stderr, events in the run directory, the run directory printed last.
    Replaying an interrupted run resumes it.
    """
    from fnapi.cli.run import run

    run(recipe, output=output, overrides=[])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fntui`` script: user errors print one paragraph and exit 2 (as in ``fnapi``)."""
    from fnapi.cli import main as run_cli

    return run_cli(argv, app=app)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
