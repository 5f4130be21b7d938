"""The ``fnapi`` command line.

Each command group lives in its own module with a ``register(app)`` function. Heavy libraries
(torch, transformers) are imported inside commands so that ``fnapi --help`` answers at once.
Errors meant for the user (:class:`fnapi.errors.FnapiError`) print one paragraph and exit 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="fnapi",
    help="Fine-tune LLMs with functional-network masks: build templates, train with masks, measure forgetting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"fnapi {version('fntui')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Fine-tune LLMs with functional-network masks: build templates, train with masks, measure forgetting."""


# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = ("run", "recipe", "hardware", "auth", "model", "data", "template", "study", "compare", "continual",
                   "evaluate", "export", "cluster")

for _name in COMMAND_MODULES:
    importlib.import_module(f"fnapi.cli.{_name}").register(app)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and exit classes: typer >= 0.22 carries its own copy of click, older ones use click."""
    usage: list[type] = []
    leave: list[type] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            exceptions = importlib.import_module(module)
        except ImportError:
            continue
        usage.append(exceptions.ClickException)
        if hasattr(exceptions, "Exit"):  # typer's own copy raises typer.Exit, caught above
            leave.append(exceptions.Exit)
    return tuple(usage), tuple(leave)


def main(argv: list[str] | None = None, app: typer.Typer = app) -> int:
    """Entry point of the ``fnapi`` script (and of ``fntui``, which passes its own ``app``):
    run the app, turn user errors into exit code 2."""
    from fnapi.errors import FnapiError
    from fnapi.redaction import redact

    try:
        result = app(args=argv, standalone_mode=False)
    except FnapiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(exc.hint, file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors and the like
        from fnapi.errors import storage_error

        usage, leave = _click_exceptions()
        if isinstance(exc, usage):
            exc.show()
            return 2
        if isinstance(exc, leave):
            return exc.exit_code
        user_error = storage_error(exc)  # a full disk, a read-only folder: the user's to fix, not a bug
        if user_error is not None:
            print(f"error: {user_error.message}", file=sys.stderr)
            print(user_error.hint, file=sys.stderr)
            return user_error.exit_code
        print(redact(f"internal error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        print("This is a bug in fnapi; rerun with FNAPI_DEBUG=1 for the traceback.", file=sys.stderr)
        import os

        if os.environ.get("FNAPI_DEBUG"):
            raise
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
