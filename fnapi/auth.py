"""Hugging Face token: where it comes from, whether it works, and saving or removing it.

Precedence (first found wins): an explicit token, the ``HF_TOKEN`` (or legacy
``HUGGING_FACE_HUB_TOKEN``) environment variable, a ``.env`` file in the current folder, then the
token cached by ``hf auth login`` under ``HF_HOME``. Every token read is registered with
:mod:`fnapi.redaction` at once, and no ``to_dict`` here ever contains it.

The embedded model and built-in data need no token; it only matters for gated hub models.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from fnapi.errors import FnapiError
from fnapi.paths import atomic_write_text
from fnapi.redaction import redact, register_secret

Source = Literal["explicit", "env", "dotenv", "cached"]
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
#: Seconds to wait for a TCP connection to the hub before calling it offline.
CONNECT_TIMEOUT = 2.0
#: Seconds a hub check may take in all, connection and first answer (``$FNAPI_HUB_TIMEOUT``).
DEFAULT_HUB_BUDGET = 10.0
_SECRET_MODE = 0o600


@dataclass(frozen=True)
class TokenStatus:
    """The token in effect and where it came from. ``token`` is never printed or serialised."""

    token: str | None = field(default=None, repr=False)
    source: Source | None = None
    source_detail: str | None = None  # the variable name, or the path of the .env / token file

    @property
    def found(self) -> bool:
        return self.token is not None

    @property
    def masked(self) -> str | None:
        """``hf_***abcd``: the prefix and at most the last 4 characters (fewer for short tokens)."""
        return mask_token(self.token)

    def describe(self) -> str:
        """One line for people: ``hf_***abcd from HF_TOKEN environment variable``."""
        if not self.found:
            return "no token"
        where = {
            "explicit": "given explicitly",
            "env": f"from the {self.source_detail} environment variable",
            "dotenv": f"from {self.source_detail}",
            "cached": f"from the cached login {self.source_detail}",
        }[self.source]
        return f"{self.masked} {where}"

    def to_dict(self) -> dict[str, Any]:
        """Source and masked token only, never the token itself."""
        return {"found": self.found, "source": self.source, "source_detail": self.source_detail, "masked": self.masked}


def mask_token(token: str | None) -> str | None:
    """``hf_***abcd`` for a normal token; shorter tokens show fewer (or no) trailing characters."""
    if not token:
        return None
    prefix = "hf_" if token.startswith("hf_") else ""
    shown = 4 if len(token) >= 16 else (2 if len(token) >= 10 else 0)
    return f"{prefix}***{token[-shown:] if shown else ''}"


def hf_token_path() -> Path:
    """The token file huggingface_hub reads and writes (``$HF_TOKEN_PATH`` or ``$HF_HOME/token``).

    Computed from the environment at each call, unlike ``huggingface_hub.constants`` which freezes
    it at import.
    """
    explicit = os.environ.get("HF_TOKEN_PATH")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "token"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "token"


def resolve_token(explicit: str | None = None, env_file: Path | None = None) -> TokenStatus:
    """Find the token in effect: explicit > environment > ``.env`` > cached login.

    ``env_file`` defaults to ``.env`` in the current folder; it is read without changing
    ``os.environ``.
    """
    found = _find_token(explicit, env_file)
    if found.token:
        register_secret(found.token)
    return found


def _find_token(explicit: str | None, env_file: Path | None) -> TokenStatus:
    if _clean(explicit):
        return TokenStatus(_clean(explicit), "explicit", None)
    for name in TOKEN_VARIABLES:
        value = _clean(os.environ.get(name))
        if value:
            return TokenStatus(value, "env", name)
    dotenv_path = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    value = _token_in_dotenv(dotenv_path)
    if value:
        return TokenStatus(value, "dotenv", str(dotenv_path))
    cached = hf_token_path()
    value = _read_token_file(cached)
    if value:
        return TokenStatus(value, "cached", str(cached))
    return TokenStatus()


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _token_in_dotenv(path: Path) -> str | None:
    if not path.is_file():
        return None
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError):
        return None
    for name in TOKEN_VARIABLES:
        value = _clean(values.get(name))
        if value:
            return value
    return None


def _read_token_file(path: Path) -> str | None:
    try:
        return _clean(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


# ---- validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationResult:
    """``state`` is ok, invalid, offline (hub not reachable) or missing (no token to check)."""

    state: Literal["ok", "invalid", "offline", "missing"]
    detail: str
    user: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "detail": redact(self.detail), "user": self.user, "seconds": round(self.seconds, 3)}


def hub_endpoint() -> str:
    """The hub URL huggingface_hub talks to (``$HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_budget() -> float:
    """Seconds a hub check may take in all: ``$FNAPI_HUB_TIMEOUT``, default 10."""
    raw = os.environ.get("FNAPI_HUB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_HUB_BUDGET
    try:
        value = float(raw)
    except ValueError:
        raise FnapiError(f"FNAPI_HUB_TIMEOUT={raw!r} is not a number of seconds",
                         hint="Set it to a positive number, for example FNAPI_HUB_TIMEOUT=10.") from None
    if not value > 0:
        raise FnapiError(f"FNAPI_HUB_TIMEOUT={raw!r} must be above 0 seconds",
                         hint="Set it to a positive number, for example FNAPI_HUB_TIMEOUT=10.")
    return value


def offline_flag(*also: str) -> str | None:
    """``"HF_HUB_OFFLINE/... is set"`` when any of ``HF_HUB_OFFLINE`` and the library flags ``also``
    (``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``) is set, else None."""
    names = ("HF_HUB_OFFLINE", *also)
    if any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in names):
        return f"{'/'.join(names)} is set"
    return None


def hub_problem(*also: str, timeout: float = CONNECT_TIMEOUT, budget: float | None = None) -> str | None:
    """Why the hub cannot be used now, or None: the one offline check of fnapi.

    An offline flag (see :func:`offline_flag`) answers at once; otherwise the hub must answer
    within ``timeout``/``budget`` (:func:`hub_reachable`), so an offline machine learns it in
    seconds rather than after a minute of HTTP retries.
    """
    flag = offline_flag(*also)
    if flag:
        return flag
    return hub_reachable(timeout) if budget is None else hub_reachable(timeout, budget=budget)


def hub_reachable(timeout: float = CONNECT_TIMEOUT, budget: float | None = None) -> str | None:
    """None when the hub answers an HTTP request in time, else the reason it counts as offline.

    The connection must open within ``timeout`` seconds (a machine without network learns it at
    once) and the first bytes of an HTTP answer must arrive within ``budget`` seconds in all
    (default :func:`hub_budget`): a server that accepts connections but never answers would
    otherwise hang every later hub call. Any HTTP status counts as an answer. Runs in a daemon
    thread, because name resolution ignores socket timeouts.
    """
    import http.client
    import ssl

    budget = hub_budget() if budget is None else budget
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    https = url.scheme != "http"
    port = url.port or (443 if https else 80)
    start = time.monotonic()
    phase = ["connect"]

    def ask() -> None:
        connect = min(timeout, budget)
        if https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=connect, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect)
        try:
            conn.connect()
            phase[0] = "answer"
            conn.sock.settimeout(max(budget - (time.monotonic() - start), 0.05))
            conn.request("HEAD", "/", headers={"Connection": "close"})
            conn.getresponse()
        finally:
            conn.close()

    error = _run_with_deadline(ask, budget + 0.5)
    if error is None:
        _bound_hub_client_calls(budget)
        return None
    if phase[0] == "answer":
        return f"{host}:{port} accepted a connection but sent no HTTP answer within {budget:g}s ({error})"
    return f"{host}:{port} not reachable ({error})"


def _bound_hub_client_calls(budget: float) -> None:
    """Give huggingface_hub's own metadata and read timeouts the same budget, unless the user set them."""
    seconds = str(max(int(round(budget)), 1))
    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(name, seconds)


def _whoami(token: str) -> dict:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint()).whoami(token=token)


def validate_token(status: TokenStatus, timeout: float = 3.0) -> ValidationResult:
    """Ask the hub who the token belongs to, giving up as "offline" within about ``timeout`` seconds.

    With ``HF_HUB_OFFLINE=1`` nothing is tried. Otherwise a quick TCP connect comes first, so a
    machine without network answers in seconds instead of waiting on HTTP retries.
    """
    start = time.monotonic()

    def result(state, detail, user=None):
        return ValidationResult(state, redact(detail), user, time.monotonic() - start)

    if not status.found:
        return result("missing", "no token to check")
    flag = offline_flag()
    if flag:
        return result("offline", f"{flag}, so the hub was not contacted")
    problem = hub_problem(timeout=min(CONNECT_TIMEOUT, timeout), budget=timeout)
    if problem:
        return result("offline", problem)
    answer: dict = {}

    def ask() -> None:
        answer["whoami"] = _whoami(status.token)

    remaining = max(timeout - (time.monotonic() - start), 1.0)
    error = _run_with_deadline(ask, remaining)
    if error is None:
        info = answer["whoami"]
        return result("ok", "the hub accepted the token", user=info.get("name"))
    if _is_auth_failure(error):
        return result("invalid", "the hub rejected the token (HTTP 401); create a new one at https://huggingface.co/settings/tokens")
    return result("offline", f"the hub did not answer properly ({error})")


def _is_auth_failure(error: str) -> bool:
    return bool(re.search(r"\b(401|403)\b|Invalid user token|Unauthorized", error))


def _run_with_deadline(work: Callable[[], None], seconds: float) -> str | None:
    """Run ``work`` in a daemon thread; None on success, else a short error (or "timed out")."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the caller, the thread must not die noisily
            errors.append(exc)

    thread = threading.Thread(target=target, name="fnapi-hub-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return f"no answer within {seconds:.0f}s"
    if errors:
        exc = errors[0]
        status = getattr(getattr(exc, "response", None), "status_code", None)
        code = f"HTTP {status}: " if status else ""
        return redact(f"{code}{type(exc).__name__}: {exc}")
    return None


# ---- saving and removing ---------------------------------------------------------------------


def login(token: str, save_to: Literal["cache", "dotenv"] = "cache", path: Path | None = None) -> Path:
    """Save ``token`` with owner-only permissions and return the file written.

    ``cache``: huggingface_hub's token file (``path`` overrides it). ``dotenv``: the ``HF_TOKEN``
    line of ``path`` (default ``./.env``) is replaced or added; other lines stay as they are.
    """
    token = _clean(token)
    if not token:
        raise FnapiError("no token given", hint="Create one at https://huggingface.co/settings/tokens and pass it "
                                                "with --token or on stdin.")
    if any(c.isspace() for c in token) or "'" in token or '"' in token:
        raise FnapiError("the token contains spaces or quotes; paste the token alone")
    register_secret(token)
    if save_to == "cache":
        target = Path(path) if path is not None else hf_token_path()
        return atomic_write_text(target, token, mode=_SECRET_MODE)
    if save_to == "dotenv":
        target = Path(path) if path is not None else Path.cwd() / ".env"
        return atomic_write_text(target, _with_token_line(target, token), mode=_SECRET_MODE)
    raise FnapiError(f"save_to must be 'cache' or 'dotenv', got {save_to!r}")


_HF_TOKEN_LINE = re.compile(r"^\s*(export\s+)?HF_TOKEN\s*=")


def _with_token_line(path: Path, token: str) -> str:
    """The .env text with one ``HF_TOKEN=...`` line (the first one replaced, later ones dropped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise FnapiError(f"cannot read {path}: {exc}") from None
    out, replaced = [], False
    for line in lines:
        if _HF_TOKEN_LINE.match(line):
            if not replaced:
                out.append(f"HF_TOKEN={token}")
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(f"HF_TOKEN={token}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class LogoutResult:
    """What :func:`logout` removed, and where a token is still configured (so it keeps working)."""

    removed: str | None
    still_configured: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "still_configured": list(self.still_configured)}


def logout(env_file: Path | None = None) -> LogoutResult:
    """Delete the cached login token; report environment variables and ``.env`` files still holding one."""
    path = hf_token_path()
    try:
        path.unlink()
        removed = str(path)
    except FileNotFoundError:
        removed = None
    still = [f"{name} environment variable" for name in TOKEN_VARIABLES if _clean(os.environ.get(name))]
    dotenv_path = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    if _token_in_dotenv(dotenv_path):
        still.append(str(dotenv_path))
    return LogoutResult(removed=removed, still_configured=still)
