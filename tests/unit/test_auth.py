"""Token resolution, validation (with a faked network) and saving; the real hub is never contacted."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from fnapi import auth
from fnapi.auth import login, logout, resolve_token, validate_token
from fnapi.cli import main
from fnapi.redaction import redact

EXPLICIT = "hf_explicitExplicitExplicit0001"
ENV = "hf_environmentEnvironment000002"
LEGACY_ENV = "hf_legacyLegacyLegacyLegacy0003"
DOTENV = "hf_dotenvDotenvDotenvDotenv0004"
CACHED = "hf_cachedCachedCachedCached0005"


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """All four sources present: env var, ./.env, and a cached token file under a fake HF_HOME."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    (workdir / ".env").write_text(f"OTHER=1\nHF_TOKEN={DOTENV}\n")
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    (hf_home / "token").write_text(CACHED + "\n")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HF_TOKEN", ENV)
    return workdir, hf_home


def test_precedence_walks_down_the_sources(sources, monkeypatch):
    workdir, hf_home = sources
    found = resolve_token(EXPLICIT)
    assert (found.token, found.source) == (EXPLICIT, "explicit")

    found = resolve_token()
    assert (found.token, found.source, found.source_detail) == (ENV, "env", "HF_TOKEN")

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", LEGACY_ENV)
    found = resolve_token()
    assert (found.token, found.source_detail) == (LEGACY_ENV, "HUGGING_FACE_HUB_TOKEN")

    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN")
    found = resolve_token()
    assert (found.token, found.source, found.source_detail) == (DOTENV, "dotenv", str(workdir / ".env"))
    assert "HF_TOKEN" not in os.environ  # the .env file is read, not loaded into the environment

    (workdir / ".env").unlink()
    found = resolve_token()
    assert (found.token, found.source, found.source_detail) == (CACHED, "cached", str(hf_home / "token"))

    (hf_home / "token").unlink()
    found = resolve_token()
    assert not found.found and found.source is None and found.masked is None


def test_explicit_env_file_and_blank_values(sources, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "   ")  # blank counts as unset
    other = tmp_path / "other.env"
    other.write_text("HF_TOKEN=hf_otherOtherOtherOtherOther06\n")
    found = resolve_token(env_file=other)
    assert (found.source, found.source_detail) == ("dotenv", str(other))


def test_token_never_in_dict_or_repr_and_is_registered(sources):
    found = resolve_token()
    assert found.masked == "hf_***0002"
    assert ENV not in json.dumps(found.to_dict()) and ENV not in repr(found)
    assert ENV not in found.describe()
    assert redact(f"x {ENV} y") == "x hf_*** y"


def test_registration_covers_tokens_that_do_not_look_like_hf_tokens(monkeypatch):
    odd = "plainSecretWithoutPrefix42"
    monkeypatch.setenv("HF_TOKEN", odd)
    assert resolve_token().masked == "***ix42"
    assert odd not in redact(f"leaked {odd}")


def test_mask_shows_at_most_four_characters():
    assert auth.mask_token("hf_" + "a" * 30 + "wxyz") == "hf_***wxyz"
    assert auth.mask_token("short") == "***"
    assert auth.mask_token(None) is None


def test_offline_env_means_no_network_attempt(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _must_not_be_called)
    monkeypatch.setattr(auth, "_whoami", _must_not_be_called)
    result = validate_token(auth.TokenStatus(ENV, "env", "HF_TOKEN"))
    assert result.state == "offline" and "HF_HUB_OFFLINE" in result.detail


def test_unreachable_hub_says_offline_quickly(monkeypatch):
    """A connection that hangs (like a black-holed network) is abandoned within the timeout."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    def hanging_connect(*args, **kwargs):
        release.wait(30)
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    monkeypatch.setattr(auth, "_whoami", _must_not_be_called)
    start = time.monotonic()
    try:
        result = validate_token(auth.TokenStatus(ENV, "env", "HF_TOKEN"), timeout=3.0)
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert result.state == "offline" and "huggingface.co" in result.detail


def test_refused_connection_is_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert validate_token(auth.TokenStatus(ENV, "env", "HF_TOKEN")).state == "offline"


@pytest.fixture
def reachable_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(auth, "hub_reachable", lambda *args, **kwargs: None)


def test_valid_token_reports_the_user(reachable_hub, monkeypatch):
    monkeypatch.setattr(auth, "_whoami", lambda token: {"name": "ada"} if token == ENV else {})
    result = validate_token(auth.TokenStatus(ENV, "env", "HF_TOKEN"))
    assert (result.state, result.user) == ("ok", "ada")


def test_rejected_token_is_invalid(reachable_hub, monkeypatch):
    class Response:
        status_code = 401

    class Rejected(Exception):
        response = Response()

    def whoami(token):
        raise Rejected(f"Invalid user token {token}")

    monkeypatch.setattr(auth, "_whoami", whoami)
    result = validate_token(auth.TokenStatus(ENV, "env", "HF_TOKEN"))
    assert result.state == "invalid"
    assert ENV not in json.dumps(result.to_dict())


def test_missing_token_is_not_checked(monkeypatch):
    monkeypatch.setattr(auth, "_whoami", _must_not_be_called)
    assert validate_token(auth.TokenStatus()).state == "missing"


def test_login_to_dotenv_keeps_other_lines_and_is_owner_only(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("# settings\nOTHER=keep\nHF_TOKEN=hf_oldOldOldOldOldOldOldOld07\nexport HF_TOKEN=dup\n")
    env_file.chmod(0o644)
    calls = []
    real = auth.atomic_write_text
    monkeypatch.setattr(auth, "atomic_write_text", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    written = login(DOTENV, save_to="dotenv", path=env_file)
    assert written == env_file and calls and calls[0][1]["mode"] == 0o600
    assert env_file.read_text() == f"# settings\nOTHER=keep\nHF_TOKEN={DOTENV}\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert resolve_token(env_file=env_file).token == DOTENV


def test_login_to_new_dotenv_and_to_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    login(DOTENV, save_to="dotenv")
    assert (tmp_path / ".env").read_text() == f"HF_TOKEN={DOTENV}\n"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cached = login(CACHED)
    assert cached == tmp_path / "hf" / "token" and cached.read_text() == CACHED
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600


def test_login_rejects_empty_or_spaced_tokens(tmp_path):
    from fnapi.errors import FnapiError

    with pytest.raises(FnapiError, match="no token"):
        login("  ", path=tmp_path / "t")
    with pytest.raises(FnapiError, match="spaces"):
        login("hf_a b", path=tmp_path / "t")


def test_logout_removes_cache_and_names_remaining_dotenv(sources, monkeypatch):
    workdir, hf_home = sources
    monkeypatch.delenv("HF_TOKEN")
    result = logout()
    assert result.removed == str(hf_home / "token") and not (hf_home / "token").exists()
    assert result.still_configured == [str(workdir / ".env")]
    assert logout().removed is None


# ---- CLI ---------------------------------------------------------------------------------------


def test_status_without_token_explains_and_exits_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    assert main(["auth", "status"]) == 0
    out = capsys.readouterr().out
    assert "No Hugging Face token found" in out and "HF_TOKEN" in out and "fnapi auth login" in out


def test_status_json_names_the_source(sources, capsys):
    assert main(["auth", "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["token"] == {"found": True, "source": "env", "source_detail": "HF_TOKEN", "masked": "hf_***0002"}
    assert data["validation"]["state"] == "offline"  # conftest sets HF_HUB_OFFLINE=1


def test_cli_login_from_stdin_then_logout(tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("sys.stdin", io.StringIO(CACHED + "\n"))
    assert main(["auth", "login", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert CACHED not in out and "hf_***0005" in out
    assert (tmp_path / "hf" / "token").read_text() == CACHED

    assert main(["auth", "login", "--token", DOTENV, "--dotenv", str(tmp_path / ".env"), "--no-check"]) == 0
    assert "hf_***0004" in capsys.readouterr().out

    assert main(["auth", "logout"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and str(tmp_path / ".env") in out
    assert not (tmp_path / "hf" / "token").exists()


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("the network must not be touched here")
