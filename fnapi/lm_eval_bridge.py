"""Standard benchmarks through EleutherAI's lm-evaluation-harness (``lm-eval``), on a model in memory.

The one place fnapi talks to lm-eval: ``fnapi eval --lm-eval`` and a recipe's ``eval.lm_eval``
both come here (through :func:`fnapi.measures.evaluate`). The model fnapi already loaded (with a
run's adapter merged and its ablation hooks in place) is handed to lm-eval's Hugging Face wrapper,
so what is scored is exactly what was trained, not a fresh load from the hub.

lm-eval is an optional extra (``pip install 'fntui[eval]'``) and heavy, so it is imported only
inside functions. Its task index knows every built-in task name without the network; the data of a
hub task needs the hub, so while lm-eval runs on a machine that cannot reach the hub the Hugging
Face offline switches are on: a task whose data is not cached fails in seconds, not after minutes
of retries. A local task (a YAML over a local JSONL, given with ``--lm-eval-include DIR`` or
``eval.lm_eval.include``) needs no network at all.

>>> request = LmEvalRequest(tasks=("arith",), include="tasks/", limit=50)
>>> scores = score(model, tokenizer, request)       # doctest: +SKIP
>>> scores.metrics[0].metric, scores.metrics[0].value  # doctest: +SKIP
('acc', 0.62)
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from fnapi.errors import DataError, ExtraNotInstalledError, OfflineError, Problem
from fnapi.recipe import Section

#: How to get lm-eval, named by every error about it missing.
INSTALL_HINT = "Install the eval extra: pip install 'fntui[eval]' (it brings lm-eval)."
#: lm-eval requests scored between two progress reports (a few batches: small enough to show a rate).
_CHUNK_BATCHES = 8


@dataclass(frozen=True)
class LmEvalRequest:
    """Which lm-eval tasks to score: names (or task YAML files), an optional folder of local task
    YAMLs (``include``), at most ``limit`` documents per task, and the scoring batch size."""

    tasks: tuple[str, ...]
    include: str | None = None
    limit: int | None = None
    batch_size: int = 8

    @classmethod
    def from_section(cls, section: Any) -> LmEvalRequest:
        """The request a recipe's ``eval.lm_eval`` section (:class:`fnapi.recipe.LmEvalSection`) describes."""
        return cls(tuple(section.tasks), section.include, section.limit, section.batch_size)


# ---- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LmEvalMetric:
    """One metric of one task as lm-eval reports it (``value`` and its ``stderr``), with the
    per-document values behind it where they are numbers (for paired before/after intervals)."""

    task: str
    metric: str
    filter: str = "none"
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    doc_ids: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        """What pairs this metric with the same one of another model."""
        return (self.task, self.metric, self.filter)

    def summary(self) -> dict[str, Any]:
        """Task, metric, value and stderr: what ``fnapi eval --json`` prints."""
        return {"task": self.task, "metric": self.metric, "filter": self.filter, "value": self.value,
                "stderr": self.stderr, "n": self.n, "higher_is_better": self.higher_is_better}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "doc_ids": list(self.doc_ids), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LmEvalMetric:
        checked = _MetricData.model_validate(data)
        return cls(checked.task, checked.metric, checked.filter, checked.value, checked.stderr, checked.n,
                   checked.higher_is_better, tuple(checked.doc_ids), tuple(checked.values))


@dataclass(frozen=True)
class LmEvalScores:
    """Every metric lm-eval reported for one model, and the lm-eval version that measured it."""

    metrics: tuple[LmEvalMetric, ...]
    version: str = ""

    def summary(self) -> list[dict[str, Any]]:
        return [metric.summary() for metric in self.metrics]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "metrics": [metric.to_dict() for metric in self.metrics]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LmEvalScores:
        """Read :meth:`to_dict`'s output; ``ValueError`` when it does not have that form."""
        checked = LmEvalData.model_validate(data)
        return cls(tuple(LmEvalMetric.from_dict(m.model_dump()) for m in checked.metrics), checked.version)


class _MetricData(Section):
    task: str
    metric: str
    filter: str = "none"
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    doc_ids: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)


class LmEvalData(Section):
    """The stored form of :class:`LmEvalScores` (in ``baseline.json`` and ``measures.json``)."""

    version: str = ""
    metrics: list[_MetricData] = Field(default_factory=list)


def scores_from_results(results: dict[str, Any]) -> LmEvalScores:
    """:class:`LmEvalScores` from what ``lm_eval.simple_evaluate`` returns (with ``log_samples``)."""
    metrics = []
    better = results.get("higher_is_better") or {}
    samples = results.get("samples") or {}
    counts = results.get("n-samples") or {}
    for task, row in (results.get("results") or {}).items():
        for key, value in row.items():
            if "," not in key or "_stderr," in key:
                continue  # name, alias, sample_len ... and the stderr that goes with each metric
            metric, filter_ = key.split(",", 1)
            doc_ids, values = _per_document(samples.get(task) or [], metric, filter_)
            n = row.get("sample_len") or (counts.get(task) or {}).get("effective") or (len(values) or None)
            metrics.append(LmEvalMetric(task, metric, filter_, _number(value), _number(row.get(f"{metric}_stderr,{filter_}")),
                                        int(n) if n else None, (better.get(task) or {}).get(metric),
                                        doc_ids, values))
    version = str(results.get("lm_eval_version") or "")
    return LmEvalScores(tuple(metrics), version)


def _per_document(samples: Sequence[dict[str, Any]], metric: str, filter_: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Each scored document's value of ``metric``, where lm-eval logged it as a number (metrics such as
    F1 or BLEU log pairs that only aggregate over the whole set: none for them)."""
    pairs = {}
    for sample in samples:
        if sample.get("filter", "none") != filter_:
            continue
        value = sample.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (), ()
        pairs[int(sample["doc_id"])] = float(value)
    ordered = sorted(pairs.items())
    return tuple(d for d, _ in ordered), tuple(v for _, v in ordered)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # lm-eval writes "N/A" where it has no stderr
    return float(value)


# ---- lm-eval itself -------------------------------------------------------------------------------

def installed() -> bool:
    """True when lm-eval can be imported."""
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def require() -> None:
    """:class:`ExtraNotInstalledError` naming the extra when lm-eval is not installed."""
    if not installed():
        raise ExtraNotInstalledError("standard benchmarks need lm-eval, which is not installed", INSTALL_HINT)


def task_problems(tasks: Sequence[str], include: str | None, *, tasks_at: str,
                  include_at: str) -> list[Problem]:
    """Why these tasks cannot be found, one :class:`Problem` per bad name (``tasks_at[i]``) or include
    folder (``include_at``); close matches are suggested. Needs lm-eval; reads no data, no network."""
    if include is not None and not Path(include).expanduser().is_dir():
        return [Problem(include_at, f"folder of task YAMLs not found: {include}")]
    require()
    _, unknown = _find_tasks(tuple(tasks), _include(include))
    problems = []
    for index, name in enumerate(tasks):
        if name not in unknown:
            continue
        close = unknown[name]
        where = f" in {include} or" if include else ""
        message = f"unknown lm-eval task {name!r}: not a task{where} among lm-eval's built-in tasks"
        message += f"; close matches: {', '.join(close)}" if close else ""
        problems.append(Problem(f"{tasks_at}[{index}]", message))
    return problems


def check_tasks(request: LmEvalRequest, *, tasks_at: str = "--lm-eval", include_at: str = "--lm-eval-include") -> None:
    """Refuse (exit code 2) a request whose lm-eval is missing, include folder is missing, or task
    names are unknown, before any model loads; then load each task once (its data: a local file, or
    the hub's or its cache), so missing data fails here too."""
    require()
    problems = task_problems(request.tasks, request.include, tasks_at=tasks_at, include_at=include_at)
    if problems:
        raise DataError.invalid("lm-eval tasks", problems, what="selection",
                                hint="List lm-eval's tasks with `lm-eval ls tasks`; a local task is a YAML file "
                                     "in the folder given to --lm-eval-include (eval.lm_eval.include).")
    manager = _manager(request)
    with _hub_guard(), _quiet_harness():
        for name in request.tasks:
            manager.load([name])


def score(model: Any, tokenizer: Any, request: LmEvalRequest, *, progress: Any = None) -> LmEvalScores:
    """Score ``model`` (a transformers causal LM, or a peft model around one) on the request's tasks
    with lm-eval's Hugging Face wrapper. ``progress`` (a stage handle) grows by the number of lm-eval
    requests and advances as they are scored. Leaves the model in the mode it was in."""
    require()
    import lm_eval

    from fnapi.models.runtime import eval_mode

    manager = _manager(request)
    with eval_mode(model), _hub_guard(), _quiet_harness():
        lm = _reporting_model(model, tokenizer, request.batch_size, progress)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(request.tasks), task_manager=manager, limit=request.limit, log_samples=True,
            # lm-eval reseeds the global generators by default; scoring must not change a run's training.
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    return scores_from_results(results)


def _include(include: str | None) -> str | None:
    return str(Path(include).expanduser().resolve()) if include else None


def _manager(request: LmEvalRequest) -> Any:
    manager, _ = _find_tasks(tuple(request.tasks), _include(request.include))
    return manager


def _find_tasks(tasks: tuple[str, ...], include: str | None) -> tuple[Any, dict[str, list[str]]]:
    """The task manager that knows every name, and the unknown names with close matches.

    lm-eval's own index of ~15,000 built-in tasks takes seconds to build, so local tasks are looked
    up in the include folder alone first; the full index is built only when a name is not there.
    A task YAML file given by path needs no index.
    """
    wanted = [name for name in tasks if not _is_task_file(name)]
    if include is not None:
        local = _task_manager(include, False)
        if all(name in local.all_tasks for name in wanted):
            return local, {}
    manager = _task_manager(include, True)
    known = set(manager.all_tasks)
    unknown = {name: difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
               for name in wanted if name not in known}
    return manager, unknown


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


@functools.lru_cache(maxsize=4)
def _task_manager(include: str | None, defaults: bool) -> Any:
    return _manager_class()(include_path=include, include_defaults=defaults)


@functools.cache
def _manager_class() -> type:
    """lm-eval's TaskManager, whose loading (which reads each task's data) fails with fnapi errors."""
    from lm_eval.tasks import TaskManager

    class CheckedTaskManager(TaskManager):
        def load(self, task_list):
            try:
                return super().load(task_list)
            except Exception as exc:  # datasets and lm-eval raise many types; all mean "cannot build it"
                raise _load_error(task_list, exc) from None

    return CheckedTaskManager


def _load_error(task_list: Any, exc: Exception) -> DataError | OfflineError:
    from fnapi import auth

    names = [task_list] if isinstance(task_list, str) else [str(t) for t in task_list]
    what = f"lm-eval task {', '.join(repr(n) for n in names)}"
    reason = f"{type(exc).__name__}: {exc}".strip()
    offline = auth.offline_flag("HF_DATASETS_OFFLINE")
    if offline:
        return OfflineError(
            f"{what} cannot load its data: {reason}; the hub is not used ({offline}, since it cannot be reached)",
            "Use a task whose data is in the local Hugging Face cache, or a local task YAML over a local file "
            "(dataset_path: json, dataset_kwargs.data_files) in the folder given with --lm-eval-include.")
    return DataError(f"{what} cannot be built: {reason}",
                     "Check the task's YAML (dataset_path, dataset_kwargs, doc_to_text, doc_to_choice, "
                     "doc_to_target) and that its data file exists.")


@contextlib.contextmanager
def _hub_guard() -> Iterator[str | None]:
    """Hugging Face offline mode while lm-eval runs, unless the hub answers now (yields why it is
    off, or None). Both the environment and the flags the libraries read at import are set, and
    everything is put back afterwards."""
    from fnapi import auth

    problem = auth.hub_problem("HF_DATASETS_OFFLINE")
    if problem is None:
        yield None
        return
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE"), ("evaluate.config", "HF_EVALUATE_OFFLINE")]
    saved_flags = []
    for module_name, attribute in flags:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            saved_flags.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, True)
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield problem
    finally:
        for module, attribute, value in saved_flags:
            setattr(module, attribute, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet_harness() -> Iterator[None]:
    """lm-eval's info logs and its warning that it was handed a loaded model (which is the point
    here) stay out of the console; real errors still show. Dataset progress bars are off too."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


def _reporting_model(model: Any, tokenizer: Any, batch_size: int, progress: Any) -> Any:
    lm = _reporting_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.fnapi_progress = progress
    lm.fnapi_chunk = batch_size * _CHUNK_BATCHES
    return lm


@functools.cache
def _reporting_class() -> type:
    """lm-eval's HFLM, scoring its requests a few batches at a time so progress reaches fnapi's events
    (lm-eval's own bars are off)."""
    from lm_eval.models.huggingface import HFLM

    class ReportingHFLM(HFLM):
        fnapi_progress: Any = None
        fnapi_chunk: int = 64

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._in_chunks(super().loglikelihood, requests, "log-likelihood")

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._in_chunks(super().loglikelihood_rolling, requests, "rolling log-likelihood")

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._in_chunks(super().generate_until, requests, "generation")

        def _in_chunks(self, method, requests, kind: str) -> list:
            progress = self.fnapi_progress
            message = f"lm-eval {kind} requests"
            if progress is not None:
                progress.update(progress.completed, total=(progress.total or 0) + len(requests), message=message)
            out: list = []
            for start in range(0, len(requests), self.fnapi_chunk):
                part = requests[start:start + self.fnapi_chunk]
                out.extend(method(part, disable_tqdm=True))
                if progress is not None:
                    progress.advance(len(part), message=message)
            return out

    return ReportingHFLM
