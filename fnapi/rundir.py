"""Run directories: where a run keeps its recipe, events, checkpoints and outputs.

A run directory is claimed by writing ``recipe.yaml`` into it, with ``output.dir`` set to the
directory itself, so ``fnapi run DIR/recipe.yaml`` resumes it from anywhere. Its rules:

- A live run holds an exclusive lock on its directory: a second run into it is refused at once,
  naming the holder's process id.
- A run is finished only when ``finished.json`` is written, after every other output. A finished
  run is never overwritten (a new numbered directory is used instead).
- Running the same recipe again into an unfinished run resumes it (and completes any missing
  outputs). An unfinished run of a different recipe is an error, so no earlier output is ever
  destroyed, unless it failed before training saved anything: then the corrected recipe takes the
  directory over.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fnapi.errors import RecipeError, StorageError
from fnapi.paths import atomic_write_text
from fnapi.recipe import Recipe, validation_problems

RECIPE_FILE = "recipe.yaml"
FINISHED_MARKER = "finished.json"
#: Written into a checkpoint folder after everything else: a checkpoint without it is incomplete.
CHECKPOINT_STATE_FILE = "fnapi_state.json"
LOCK_FILE = ".fnapi.lock"
HOLDER_FILE = ".fnapi.pid"
#: Files a run writes before training saves anything; a takeover by a corrected recipe removes them.
SETUP_FILES = ("events.jsonl", "template.json", "baseline.json", "measures.json", "report.json", "report.md",
               "loss.png")
_BOOKKEEPING = {LOCK_FILE, HOLDER_FILE}


@dataclass
class RunDir:
    """A claimed run directory, whether it resumes earlier work, and the lock that keeps it ours."""

    path: Path
    resumed: bool
    taken_over: bool = False
    _lock: Any = field(default=None, repr=False, compare=False)

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def template(self) -> Path:
        return self.path / "template.json"

    def mark_finished(self, seconds: float) -> Path:
        """Write the last marker, after every other output."""
        return atomic_write_text(self.path / FINISHED_MARKER,
                                 json.dumps({"format": "fnapi.finished/1", "seconds": round(seconds, 3)}) + "\n")

    def release(self) -> None:
        """Give the directory up (the run ended, however it ended)."""
        if self._lock is not None:
            with _quiet():
                (self.path / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


def is_finished(path: Path) -> bool:
    """The marker is there, or (for runs of an fnapi before the marker) all three report files are."""
    return (path / FINISHED_MARKER).exists() or all((path / n).exists() for n in ("report.json", "report.md",
                                                                                 "loss.png"))


def _recorded_recipe(path: Path) -> Recipe | None:
    file = path / RECIPE_FILE
    if not file.exists():
        return None
    try:
        return Recipe.from_yaml(file)
    except RecipeError:
        return None


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(p.name not in _BOOKKEEPING for p in path.iterdir())


def _trained_anything(path: Path) -> bool:
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def _base(recipe: Recipe, output: str | Path | None) -> Path:
    return Path(str(output) if output is not None else recipe.output.dir.replace("{name}", recipe.name))


def _candidate(base: Path) -> Path:
    """``base``, or the first ``base-N`` after it that is not a finished run."""
    candidate, number = base, 1
    while _has_content(candidate) and is_finished(candidate):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


class CheckpointState(BaseModel):
    """``fnapi_state.json``, the last file written into a checkpoint: the step, the losses so far and
    the run's identity (train section, seed, mask, data and model fingerprints, written by
    :mod:`fnapi.training`). The keys resuming reads are typed; the identity's others are kept as
    written, so a checkpoint of an older fnapi still reads."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    format: str
    step: int = Field(ge=0)
    seed: int
    losses: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = []
    task_checks: list[Any] = []


def read_checkpoint_state(checkpoint: Path) -> dict:
    """The state file of one checkpoint, checked; a damaged one is a :class:`StorageError` naming it
    and the way out, not a traceback halfway into a resume."""
    path = checkpoint / CHECKPOINT_STATE_FILE
    hint = (f"delete {checkpoint} to resume from the checkpoint before it, or run into a new output folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StorageError(f"{path}: cannot be read ({type(exc).__name__}: {exc})", hint) from None
    try:
        CheckpointState.model_validate(data)
    except ValidationError as exc:
        raise StorageError.invalid(str(path), validation_problems(exc, CheckpointState),
                                   what="checkpoint state", hint=hint) from None
    return data


def resume_point(recipe: Recipe, output: str | Path | None = None) -> tuple[Path, int] | None:
    """Where running ``recipe`` again would resume, and from which step, without claiming anything.

    None when no unfinished run of this very recipe has a complete checkpoint in the folder it
    would use. The step is the newest checkpoint whose state file was written.
    """
    candidate = _candidate(_base(recipe, output))
    recorded = _recorded_recipe(candidate)
    if recorded is None or recorded.fingerprint() != recipe.fingerprint():
        return None
    steps = [int(p.name.split("-", 1)[1]) for p in (candidate / "checkpoints").glob("checkpoint-*")
             if p.name.split("-", 1)[1].isdigit() and (p / CHECKPOINT_STATE_FILE).is_file()]
    return (candidate, max(steps)) if steps else None


def claim_run_dir(recipe: Recipe, output: str | Path | None = None) -> RunDir:
    """Choose, lock and prepare the run directory for ``recipe``.

    ``output`` overrides ``recipe.output.dir`` (where ``{name}`` stands for the recipe name). Call
    :meth:`RunDir.release` when the run ends.
    """
    base = _base(recipe, output)
    if base.exists() and not base.is_dir():
        raise RecipeError(f"the run directory {base} is a file", "choose another --output directory (or output.dir)")
    candidate = _candidate(base)
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecipeError(f"cannot create the run directory {candidate}: {exc.strerror or exc}",
                          "choose another --output directory (or output.dir) that you can write to") from None
    lock = _lock(candidate)
    try:
        claimed = _claim_locked(recipe, candidate)
    except BaseException:
        lock.release()
        raise
    claimed._lock = lock
    return claimed


def _claim_locked(recipe: Recipe, candidate: Path) -> RunDir:
    recorded = recipe.replace(**{"output.dir": str(candidate)})
    taken_over = False
    if _has_content(candidate):
        previous = _recorded_recipe(candidate)
        if previous is None:
            raise RecipeError(
                f"run directory {candidate} exists and is not an fnapi run (no readable {RECIPE_FILE})",
                "choose another --output directory",
            )
        if previous.fingerprint() == recipe.fingerprint():
            if previous.output.dir != str(candidate):  # recorded by an older fnapi: make the hint true
                recorded.to_yaml(candidate / RECIPE_FILE)
            return RunDir(path=candidate, resumed=True)
        if _trained_anything(candidate):
            raise RecipeError(
                f"run directory {candidate} holds an interrupted run of a different recipe "
                f"(recorded {previous.fingerprint()}, given {recipe.fingerprint()})",
                f"resume it with `fnapi run {candidate / RECIPE_FILE}`, or choose another --output directory; "
                "nothing was changed",
            )
        # It failed before training saved anything: nothing of value is lost by starting over here.
        for name in SETUP_FILES:
            (candidate / name).unlink(missing_ok=True)
        shutil.rmtree(candidate / "checkpoints", ignore_errors=True)
        taken_over = True
    recorded.to_yaml(candidate / RECIPE_FILE)
    return RunDir(path=candidate, resumed=False, taken_over=taken_over)


def _lock(directory: Path) -> Any:
    """Take the directory's lock now or refuse, naming the process that holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = "another process"
        with _quiet():
            holder = f"process {int((directory / HOLDER_FILE).read_text().strip())}"
        raise RecipeError(f"run directory {directory} is in use by a live run ({holder})",
                          "wait for it to finish, stop it, or choose another --output directory") from None
    except OSError as exc:
        raise RecipeError(f"cannot lock the run directory {directory}: {exc.strerror or exc}",
                          "choose another --output directory that you can write to") from None
    with _quiet():
        (directory / HOLDER_FILE).write_text(f"{os.getpid()}\n")
    return lock


class _quiet:
    """Ignore OS errors on bookkeeping that must never fail a run."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        return kind is not None and issubclass(kind, (OSError, ValueError))
