"""Where fnapi keeps files it makes for itself (converted models, tokenised data)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$FNAPI_CACHE``, else ``$XDG_CACHE_HOME/fnapi``, else ``~/.cache/fnapi``."""
    explicit = os.environ.get("FNAPI_CACHE")
    if explicit:
        root, origin = Path(explicit).expanduser(), f"FNAPI_CACHE={explicit}"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        root, origin = base / "fnapi", f"the cache folder {base / 'fnapi'}"
    if root.exists() and not root.is_dir():
        from fnapi.errors import StorageError

        raise StorageError(f"{origin} is a file, not a folder",
                           hint="Point FNAPI_CACHE at a folder (it is created when missing), or remove the file.")
    return root


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename, so readers never see half a file."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
