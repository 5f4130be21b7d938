"""Older versions of fnapi's files, read through one table of upgrades.

Each file kind that has had more than one shape owns a :class:`Migrations` table: where a file
says its version, the version this fnapi writes, and one step per older version that turns data
of that version into data of the next. Reading runs the steps in order until the data is current,
so a file from any known version loads through the same code as a new one. A version with no
step is an error that names the file and the field holding the version (and says to upgrade
fnapi when the file is newer than this fnapi).

The recipe's table lives in ``fnapi/recipe.py``, the template's in ``fnapi/networks/template.py``.

>>> table = Migrations("note", current=2, field="version", error=FnapiError,
...                    read_version=lambda data: data.get("version", 1), is_newer=lambda v: v > 2)
>>> @table.step(1, 2)
... def _rename_text(data, source):
...     return {"version": 2, "body": data["text"]}
>>> table.upgrade({"text": "hi"}, "note.yaml")
{'version': 2, 'body': 'hi'}
>>> table.upgrade({"version": 3}, "note.yaml")
Traceback (most recent call last):
...
fnapi.errors.FnapiError: note.yaml: version: note version 3 is newer than this fnapi reads (2)
upgrade fnapi to read it
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from fnapi.errors import FnapiError, Problem

#: ``upgrade(data, source, **context) -> data of the next version``; ``source`` names the file in errors.
Upgrade = Callable[..., Any]


class Migrations:
    """The upgrade steps of one file kind, keyed by the version each step reads.

    ``read_version(data)`` says which version ``data`` is (None when it cannot tell); ``field``
    is where the file keeps it, named in errors; ``error`` is the kind's :class:`FnapiError`
    subclass; ``is_newer(version)`` tells a file from a newer fnapi from one that never existed.
    """

    def __init__(self, kind: str, *, current: Hashable, field: str, read_version: Callable[[Any], Any],
                 error: type[FnapiError], is_newer: Callable[[Any], bool] = lambda version: False) -> None:
        self.kind = kind
        self.current = current
        self.field = field
        self.error = error
        self._read_version = read_version
        self._is_newer = is_newer
        self._steps: dict[Hashable, tuple[Hashable, Upgrade]] = {}

    def step(self, version: Hashable, next_version: Hashable) -> Callable[[Upgrade], Upgrade]:
        """Register the decorated function as the upgrade from ``version`` to ``next_version``."""
        if version == self.current or version in self._steps:
            raise ValueError(f"{self.kind} version {version!r} already has a reader")

        def register(upgrade: Upgrade) -> Upgrade:
            self._steps[version] = (next_version, upgrade)
            return upgrade

        return register

    @property
    def older_versions(self) -> list[Hashable]:
        """The versions this table upgrades, in the order they were registered."""
        return list(self._steps)

    def upgrade(self, data: Any, source: str, **context: Any) -> Any:
        """``data`` brought to the current version one step at a time; ``context`` goes to every step.

        Raises the kind's error, naming ``source`` and the version field, for a version with no step.
        """
        version = self._read_version(data)
        while version != self.current:
            try:
                next_version, upgrade = self._steps[version]
            except (KeyError, TypeError):  # TypeError: a version that is not even hashable (a list)
                raise self._unknown(version, source) from None
            data = upgrade(data, source, **context)
            version, read = next_version, self._read_version(data)
            if read != next_version:  # a step that forgot to set the version would loop forever
                raise RuntimeError(f"a {self.kind} upgrade to {next_version!r} gave data of version {read!r}")
        return data

    def _unknown(self, version: Any, source: str) -> FnapiError:
        readable = ", ".join(repr(v) for v in [self.current, *self._steps])
        if version is None:
            message = "field missing, and the file is not a known legacy layout"
            hint = (f"a {self.kind} file has {self.field} {self.current!r}; this fnapi also reads "
                    + ", ".join(str(v) for v in self._steps))
        elif self._is_newer(version):
            message = f"{self.kind} version {version!r} is newer than this fnapi reads ({self.current!r})"
            hint = "upgrade fnapi to read it"
        else:
            message = f"unsupported {self.kind} version {version!r}; this fnapi reads {readable}"
            hint = None
        return self.error(f"{source}: {self.field}: {message}", hint, problems=[Problem(self.field, message)])
