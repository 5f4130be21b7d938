"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, fed by the Hugging Face Trainer.

A recipe lists them in ``train.report_to``. This module owns everything about them:

* their names (:data:`TRACKERS`), which the recipe schema accepts, and whether each is installed
  (:func:`missing`), which ``fnapi validate`` and ``fnapi run`` check before any weight loads;
* where each one writes (:class:`TrackerSession`): inside the run directory unless the
  environment says otherwise, so a run folder carries its own tracking data;
* the end of a run: the forgetting report's headline numbers logged to each tracker as summary
  metrics (:meth:`TrackerSession.log_summary`).

The Trainer logs the loss, learning rate and gradient norm itself (``report_to``); a session
sets the environment its TensorBoard and MLflow callbacks read and starts the MLflow and W&B runs
up front, so the Trainer logs into them (the validation pass after training too) and a resumed run continues the
same tracker runs (their ids are kept in ``RUN/trackers/runs.json``).

Defaults, each overridden by the variable the tracker itself reads:

=============  =================================================================================
tensorboard    ``RUN/trackers/tensorboard`` (``TENSORBOARD_LOGGING_DIR``)
mlflow         a file store in ``RUN/trackers/mlflow`` (``MLFLOW_TRACKING_URI``), experiment
               ``fnapi`` (``MLFLOW_EXPERIMENT_NAME``)
wandb          ``RUN/trackers/wandb`` (``WANDB_DIR``), project ``fnapi`` (``WANDB_PROJECT``),
               offline unless an API key is configured (``WANDB_MODE``)
=============  =================================================================================

Only numbers reach a tracker from this module; the Trainer's own configuration logging masks
``*_token`` arguments, and fnapi never passes a token to the Trainer.

Heavy libraries are imported inside functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import math
import netrc
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fnapi.errors import CancelledError, FnapiError, Problem, TrackerError
from fnapi.paths import atomic_write_text

#: The optional dependencies that hold every tracker: ``pip install 'fntui[track]'``.
EXTRA = "track"
TRACKERS_DIR = "trackers"
RUNS_FILE = "runs.json"
#: MLflow experiment and W&B project when the environment names none.
DEFAULT_PROJECT = "fnapi"
SUMMARY_PREFIX = "forgetting/"


@dataclass(frozen=True)
class Tracker:
    """One tracker: its ``report_to`` name, the module it needs and the package that brings it."""

    name: str
    module: str
    package: str


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboard", "tensorboard", "tensorboard"),
    "mlflow": Tracker("mlflow", "mlflow", "mlflow-skinny"),
    "wandb": Tracker("wandb", "wandb", "wandb"),
}
TRACKER_NAMES = tuple(TRACKERS)


def unknown_tracker(name: str) -> str | None:
    """Why ``name`` is not a tracker (with the closest known name), or None when it is one.

    >>> unknown_tracker("tensorbord")
    "not a tracker; did you mean 'tensorboard'? (trackers: tensorboard, mlflow, wandb)"
    """
    if name in TRACKERS:
        return None
    guess = difflib.get_close_matches(name.lower(), TRACKER_NAMES, n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return f"not a tracker{hint} (trackers: {', '.join(TRACKER_NAMES)})"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (looked up, not imported)."""
    return importlib.util.find_spec(module) is not None


def missing(name: str) -> str | None:
    """Why the tracker ``name`` cannot be used here (not installed, or switched off), or None."""
    tracker = TRACKERS[name]
    if not is_installed(tracker.module):
        return (f"{name} is not installed; install the tracker extra: pip install 'fntui[{EXTRA}]' "
                f"(or just pip install {tracker.package})")
    if name == "mlflow" and os.environ.get("DISABLE_MLFLOW_INTEGRATION", "").upper() == "TRUE":
        return "DISABLE_MLFLOW_INTEGRATION is set, which switches the Trainer's MLflow logging off; unset it"
    return None


# ---- one run's trackers ----------------------------------------------------------------------------

@dataclass
class TrackerSession:
    """The trackers of one run: where each writes, the tracker runs' ids, and the summary at the end.

    Made by :func:`session`; an empty session (no trackers, or not the main process) does nothing.
    ``notes`` says in words where each tracker writes; ``problems`` what failed after the run's
    outputs were written (the summary, ending a tracker run), for the caller to report.
    """

    names: tuple[str, ...]
    run_dir: Path
    run_name: str
    environment: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    owned_mlflow: str | None = None  # the MLflow and W&B runs this session started (and so ends)
    owned_wandb: str | None = None

    @property
    def folder(self) -> Path:
        return self.run_dir / TRACKERS_DIR

    def tensorboard_dir(self) -> Path:
        return Path(self.environment["TENSORBOARD_LOGGING_DIR"])

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` (name -> number) to every tracker as the run's summary, under
        ``forgetting/``, at training step ``step``. A tracker that fails is noted in ``problems``
        and does not undo the run: its report is written already."""
        values = {f"{SUMMARY_PREFIX}{key}": float(value) for key, value in metrics.items()
                  if value is not None and math.isfinite(float(value))}
        for name in self.names:
            try:
                with _environment(self.environment):
                    _SUMMARY_WRITERS[name](self, values, step)
            except Exception as exc:  # each library's own errors; the run itself is complete
                self.problems.append(f"{name}: could not log the summary ({type(exc).__name__}: {exc})")

    def close(self, status: str) -> None:
        """End the tracker runs this session started: ``status`` is ``finished``, ``failed`` or
        ``killed``. A tracker that cannot be ended is noted in ``problems`` (all are tried)."""
        for name, end in (("wandb", _close_wandb), ("mlflow", _close_mlflow)):
            if name in self.names:
                try:
                    with _environment(self.environment):
                        end(self, status)
                except Exception as exc:  # each library's own errors; the run's outputs are complete
                    self.problems.append(f"{name}: could not end its run ({type(exc).__name__}: {exc})")


_current: TrackerSession | None = None


@contextlib.contextmanager
def session(names: Sequence[str], run_dir: str | os.PathLike, run_name: str) -> Iterator[TrackerSession]:
    """Set up the trackers ``names`` for the run in ``run_dir`` for the length of the ``with`` block.

    Each tracker writes to its default inside ``run_dir`` (:mod:`fnapi.trackers`) unless its own
    environment variable says otherwise; the variables set for the Trainer's callbacks are restored
    afterwards. The MLflow and W&B runs are named ``run_name``; they end when the block ends (failed when it raises). Opening a session
    for a run directory whose session is already open returns that one, so a run's whole life
    (training, then the summary) is one tracker run. Call it on the main process only; pass no
    names elsewhere.
    """
    global _current
    run_dir = Path(run_dir)
    if _current is not None and _current.run_dir == run_dir:
        yield _current
        return
    opened = TrackerSession(tuple(dict.fromkeys(names)), run_dir, run_name)
    if not opened.names:
        yield opened
        return
    previous, _current = _current, opened
    try:
        _prepare(opened)
        with _environment(opened.environment):
            yield opened
    except BaseException as exc:
        _current = previous
        # Ending the tracker runs must not hide why the run stopped.
        opened.close("killed" if isinstance(exc, (KeyboardInterrupt, CancelledError)) else "failed")
        raise
    _current = previous
    opened.close("finished")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards (trackers read their settings from it)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _prepare(run: TrackerSession) -> None:
    """Fill in the session's environment and start the tracker runs; a tracker that cannot start
    is a :class:`TrackerError` naming it (its own exception is the cause)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    stored = _read_runs(run.folder / RUNS_FILE)
    for index, name in enumerate(run.names):
        try:
            _PREPARERS[name](run, stored.get(name))
        except FnapiError:
            raise
        except Exception as exc:  # each library's own errors: a bad URI, a server down, a full disk
            raise TrackerError(f"{name} could not start: {type(exc).__name__}: {exc}",
                               hint=f"check {name}'s settings in the environment ({_SETTINGS[name]}), "
                                    "or leave it out of train.report_to",
                               problems=[Problem(f"train.report_to[{index}]", f"{name} could not start")]) from exc
    if run.runs:
        atomic_write_text(run.folder / RUNS_FILE, json.dumps(run.runs, indent=1) + "\n")


def _prepare_tensorboard(run: TrackerSession, stored_id: str | None) -> None:
    run.environment["TENSORBOARD_LOGGING_DIR"] = (os.environ.get("TENSORBOARD_LOGGING_DIR")
                                                  or str(run.folder / "tensorboard"))
    run.notes.append(f"tensorboard: {run.environment['TENSORBOARD_LOGGING_DIR']}")


def _read_runs(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


# ---- MLflow ---------------------------------------------------------------------------------------------

def _prepare_mlflow(run: TrackerSession, stored_id: str | None) -> None:
    """The tracking URI (a file store in the run directory by default), the experiment, and the run,
    started here and kept active until the session ends: the Trainer's callback logs into the active
    run, also after training (the validation loss), instead of ending it and starting another."""
    env = run.environment
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (run.folder / "mlflow").resolve().as_uri()
        # MLflow 3 keeps the file store only on request (it prefers a database); a run folder is
        # self-contained with it, and reading it needs no database driver.
        env["MLFLOW_ALLOW_FILE_STORE"] = os.environ.get("MLFLOW_ALLOW_FILE_STORE") or "true"
    env["MLFLOW_TRACKING_URI"] = uri
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
    with _environment(env):
        import mlflow
        from mlflow.tracking import MlflowClient

        active = mlflow.active_run()
        if active is not None:  # the caller's own run: the Trainer logs into it, and it stays the caller's
            run.runs["mlflow"] = active.info.run_id
            run.notes.append(f"mlflow: the active run {active.info.run_id}")
            return
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        if stored_id and _mlflow_run_exists(client, stored_id, experiment_id):
            started = mlflow.start_run(run_id=stored_id)
        else:
            started = mlflow.start_run(experiment_id=experiment_id, run_name=run.run_name,
                                       tags={"fnapi.run_dir": str(run.run_dir.resolve())})
    run.runs["mlflow"] = run.owned_mlflow = started.info.run_id
    run.notes.append(f"mlflow: {_shown_uri(uri)}, experiment {experiment}, run {started.info.run_id}")


def _mlflow_run_exists(client: Any, run_id: str, experiment_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_run(run_id)
    except MlflowException:
        return False
    return found.info.experiment_id == experiment_id and found.info.lifecycle_stage == "active"


def _shown_uri(uri: str) -> str:
    """A tracking URI without any password it may carry."""
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def _mlflow_summary(run: TrackerSession, values: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=run.environment["MLFLOW_TRACKING_URI"])
    now = int(time.time() * 1000)
    client.log_batch(run.runs["mlflow"], metrics=[Metric(key, value, now, step) for key, value in values.items()])


def _close_mlflow(run: TrackerSession, status: str) -> None:
    import mlflow

    active = mlflow.active_run()
    if run.owned_mlflow is not None and active is not None and active.info.run_id == run.owned_mlflow:
        mlflow.end_run(status={"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}[status])


# ---- Weights & Biases -----------------------------------------------------------------------------------

def _prepare_wandb(run: TrackerSession, stored_id: str | None) -> None:
    """Start the W&B run the Trainer's callback then logs into (it opens none while one is active).

    Settings go to ``wandb.init`` itself rather than through the environment: wandb reads the
    environment once per process, so a second run in the same process (the wizard, a comparison)
    would otherwise land in the first run's folder under its id.
    """
    import wandb

    if wandb.run is not None:  # the caller's own run: the Trainer logs into it, and it stays the caller's
        run.runs["wandb"] = wandb.run.id
        run.notes.append(f"wandb: the active run {wandb.run.id}")
        return
    folder = Path(os.environ.get("WANDB_DIR") or run.folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    mode = wandb_mode()
    # W&B would otherwise wrap stdout/stderr (where the console and the wizard draw) and print banners.
    quiet = {"console": "off", "silent": True} if not os.environ.get("WANDB_CONSOLE") else {"silent": True}
    started = wandb.init(dir=str(folder), project=project, mode=mode, id=stored_id or secrets.token_hex(4),
                         name=run.run_name, resume="allow", settings=wandb.Settings(**quiet))
    run.runs["wandb"] = run.owned_wandb = started.id
    where = folder / "wandb"
    if mode == "offline":
        run.notes.append(f"wandb: offline in {where} (upload later with `wandb sync {where}/offline-run-*`)")
    else:
        run.notes.append(f"wandb: {mode}, project {project}, run {started.id}")


def wandb_mode() -> str:
    """The W&B mode a run uses: ``WANDB_MODE`` when set, else online with an API key (in
    ``WANDB_API_KEY`` or ``~/.netrc``, where ``wandb login`` puts it), else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_summary(run: TrackerSession, values: dict[str, float], step: int) -> None:
    import wandb

    wandb.run.summary.update(values)


def _close_wandb(run: TrackerSession, status: str) -> None:
    import wandb

    current = wandb.run
    if run.owned_wandb is not None and current is not None and current.id == run.owned_wandb:
        current.finish(exit_code=0 if status == "finished" else 1)


# ---- TensorBoard ------------------------------------------------------------------------------------------

def _tensorboard_summary(run: TrackerSession, values: dict[str, float], step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.tensorboard_dir()))
    try:
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=step)
    finally:
        writer.close()


_PREPARERS = {"tensorboard": _prepare_tensorboard, "mlflow": _prepare_mlflow, "wandb": _prepare_wandb}
_SUMMARY_WRITERS = {"tensorboard": _tensorboard_summary, "mlflow": _mlflow_summary, "wandb": _wandb_summary}
_SETTINGS = {"tensorboard": "TENSORBOARD_LOGGING_DIR", "mlflow": "MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME",
             "wandb": "WANDB_MODE, WANDB_DIR, WANDB_PROJECT, WANDB_API_KEY"}
