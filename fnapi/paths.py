"""Where fnapi keeps files it makes for itself (converted models, tokenised data)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def staged(target: str | os.PathLike, *, folder: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file (or with ``folder`` a folder) beside ``target``, renamed onto it when the
    ``with`` block succeeds and removed when it fails, so ``target`` is never half-written.

    An existing ``target`` is replaced only at the end: a folder is moved aside, the new one renamed
    in, and the old one deleted. ``suffix`` ends the temporary name (``.gguf`` for readers that
    look at it).

    >>> with staged("out/model", folder=True) as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:  # name the path the caller asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
    try:
        yield tmp
        if folder:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
            old = target.with_name(f".{target.name}.old") if target.exists() else None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
            os.rename(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
