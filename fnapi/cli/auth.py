"""``fnapi auth status|login|logout``: the Hugging Face token, without ever printing it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

auth_app = typer.Typer(
    name="auth",
    help="Hugging Face token: which one is used, save it, remove it (only gated hub models need one).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

HOW_TO_PROVIDE = (
    "No Hugging Face token found. The embedded model and built-in data need none; for gated hub models "
    "provide one in any of these ways: export HF_TOKEN=hf_..., put HF_TOKEN=hf_... in a .env file "
    "(see .env.example), or run `fnapi auth login`. Create tokens at https://huggingface.co/settings/tokens."
)


@auth_app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {token, validation}"),
    env_file: Path | None = typer.Option(None, "--env-file", help=".env file to read (default ./.env)"),
    timeout: float = typer.Option(3.0, "--timeout", min=0.5, help="seconds to wait for the hub"),
) -> None:
    """Show which token is used (masked), where it comes from, and whether the hub accepts it."""
    from fnapi.auth import resolve_token, validate_token

    found = resolve_token(env_file=env_file)
    check = validate_token(found, timeout=timeout)
    if as_json:
        print(json.dumps({"token": found.to_dict(), "validation": check.to_dict()}, indent=2))
        return
    if not found.found:
        print(HOW_TO_PROVIDE)
        return
    print(f"token: {found.describe()}")
    user = f" (user {check.user})" if check.user else ""
    print(f"check: {check.state}{user}: {check.detail}")


@auth_app.command("login")
def login(
    token: str | None = typer.Option(
        None, "--token", help="the token (visible in shell history; prefer stdin or the prompt)"),
    dotenv: Path | None = typer.Option(
        None, "--dotenv", help="save to this .env file instead of the Hugging Face cache"),
    check: bool = typer.Option(True, "--check/--no-check", help="ask the hub whether the token works"),
) -> None:
    """Save a token (from --token, piped stdin, or a hidden prompt) to the HF cache or a .env file."""
    from fnapi import auth

    token = (token if token is not None else _read_token_interactively()).strip()
    saved = auth.login(token, save_to="dotenv" if dotenv is not None else "cache", path=dotenv)
    print(f"saved {auth.mask_token(token)} to {saved} (owner-only permissions)")
    if check:
        result = auth.validate_token(auth.TokenStatus(token, "explicit"))
        print(f"check: {result.state}{f' (user {result.user})' if result.user else ''}: {result.detail}")
    effective = auth.resolve_token(env_file=dotenv)
    if effective.found and effective.token != token:
        print(f"note: the token {effective.describe()} takes precedence over the one just saved")


def _read_token_interactively() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    import getpass

    return getpass.getpass("Hugging Face token (input hidden): ").strip()


@auth_app.command("logout")
def logout(
    env_file: Path | None = typer.Option(None, "--env-file", help=".env file to check (default ./.env)"),
) -> None:
    """Remove the cached login token, and say where a token is still configured."""
    from fnapi import auth

    result = auth.logout(env_file=env_file)
    print(f"removed {result.removed}" if result.removed else f"no cached token at {auth.hf_token_path()}")
    for where in result.still_configured:
        print(f"a token is still set in {where}; remove it there to stop using it")


def register(app: typer.Typer) -> None:
    app.add_typer(auth_app, name="auth")
