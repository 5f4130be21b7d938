"""``run(recipe)``: every stage of a fine-tune in order, with events, resume and a report.

hardware -> model -> data -> template (build or load) -> mask -> baseline evaluation -> train ->
evaluation -> report. Each stage is a plain function from :mod:`fnapi`; this module only wires them
together, keeps the run directory consistent and makes an interrupted run resumable.

Started by torchrun, accelerate launch or srun, every process runs this same function: the
template capture and the training are shared between processes, the main process alone claims
the run directory, evaluates and writes events, template and report (:mod:`fnapi.distributed`).

>>> result = run(Recipe.from_yaml("recipes/quickstart.yaml"), sink=console_sink())  # doctest: +SKIP
>>> result.report.probes.retained                                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnapi import distributed, trackers
from fnapi.errors import CancelledError, DataError, FnapiError, HardwareError, StorageError, TemplateError, storage_error
from fnapi.events import (
    CompositeSink,
    EventSink,
    JsonlSink,
    Log,
    NullSink,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    check_cancelled,
    stage,
)
from fnapi.paths import atomic_write_text
from fnapi.recipe import Recipe
from fnapi.report import ForgettingReport, Score, write_report
from fnapi.rundir import RECIPE_FILE, RunDir, claim_run_dir

BASELINE_FILE = "baseline.json"
# /3 added the open-ended answers and the replies to general prompts: older files are measured again.
BASELINE_FORMAT = "fnapi.baseline/3"
MEASURES_FILE = "measures.json"
MEASURES_FORMAT = "fnapi.measures/1"


@dataclass
class RunResult:
    """Where the run wrote its outputs and what it measured."""

    run_dir: Path
    report: ForgettingReport
    template_path: Path | None
    resumed: bool


def run(recipe: Recipe, *, sink: EventSink | None = None, cancel: threading.Event | None = None,
        output: str | Path | None = None, source: str | None = None) -> RunResult:
    """Run ``recipe`` end to end and return the run directory and report.

    Events go to ``sink`` and to ``events.jsonl`` in the run directory. Setting ``cancel`` stops
    at the next step and leaves a checkpoint; running the same recipe again resumes it. Under a
    launcher only the main process writes; every process returns the same result. Before anything
    is claimed or loaded the recipe is checked (:mod:`fnapi.preflight`); ``source`` names it in
    those errors (the recipe file, say).
    """
    with distributed.process_group():
        return _run(recipe, sink, cancel, output, source or f"recipe {recipe.name!r}")


def _run(recipe: Recipe, sink: EventSink | None, cancel: threading.Event | None,
         output: str | Path | None, source: str) -> RunResult:
    from fnapi.preflight import check_recipe

    # Missing files, unknown formats, filters and templates that do not fit the model: refused
    # before a run folder is claimed or a weight is loaded. Errors name ``source``.
    check_recipe(recipe, source)
    rundir = distributed.on_main(claim_run_dir, recipe, output, share=_shareable_rundir)
    try:
        return _run_in(recipe, rundir, sink, cancel)
    finally:
        rundir.release()


def _shareable_rundir(rundir: RunDir) -> RunDir:
    # The other processes get the path and the resume flag; the lock stays with the main process.
    return RunDir(path=rundir.path, resumed=rundir.resumed, taken_over=rundir.taken_over)


def _run_in(recipe: Recipe, rundir: RunDir, sink: EventSink | None, cancel: threading.Event | None) -> RunResult:
    jsonl = JsonlSink(rundir.events) if distributed.is_main_process() else NullSink()
    events = distributed.main_process_sink(CompositeSink(sink if sink is not None else NullSink(), jsonl))
    started = time.monotonic()
    events.emit(RunStarted(name=recipe.name, run_dir=str(rundir.path)))
    if rundir.resumed:
        events.emit(Log(message=f"resuming the interrupted run in {rundir.path}", stage="run"))
    if rundir.taken_over:
        events.emit(Log(message=f"{rundir.path} held a run of another recipe that failed before training; "
                                "this recipe starts over there", stage="run"))
    current = {"stage": "setup"}
    resume = f"fnapi run {rundir.path / RECIPE_FILE}"
    tracked = recipe.train.report_to if distributed.is_main_process() else []
    try:
        # One tracker run for the whole run: the Trainer logs into it, the report's numbers end it.
        with trackers.session(tracked, rundir.path, recipe.name) as tracking:
            result = _run_stages(recipe, rundir, events, cancel, current)
            # Outputs first, the finished marker last: a run that dies in between is unfinished, and
            # running it again resumes from the last checkpoint and writes what is missing.
            current["stage"] = "report"
            seconds = time.monotonic() - started
            result.report.total_seconds = seconds
            distributed.on_main(write_report, result.report, rundir.path)
            tracking.log_summary(result.report.headline(), result.report.steps)
        for problem in tracking.problems:
            events.emit(Log(message=problem, level="warning", stage="report"))
        distributed.on_main(rundir.mark_finished, seconds)
    except CancelledError as exc:
        stopped = CancelledError(exc.message, f"resume with `{resume}`")
        stopped.exit_code = getattr(cancel, "exit_code", exc.exit_code)  # 143 after SIGTERM
        events.emit(RunCancelled(reason=exc.message, stage=current["stage"], exit_code=stopped.exit_code,
                                 resume=resume))
        raise stopped from None
    except KeyboardInterrupt:  # a second Ctrl-C, or a plain one outside `fnapi run`: no checkpoint now
        stopped = CancelledError(f"the run was interrupted in {current['stage']}",
                                 f"resume from the last saved checkpoint with `{resume}`")
        stopped.exit_code = 130
        events.emit(RunCancelled(reason=stopped.message, stage=current["stage"], exit_code=130, resume=resume))
        raise stopped from None
    except FnapiError as exc:
        events.emit(RunFailed(error=str(exc), stage=current["stage"], exit_code=exc.exit_code))
        raise
    except BaseException as exc:
        user_error = storage_error(exc)
        if user_error is not None:
            user_error = StorageError(user_error.message, f"{user_error.hint}; resume with `{resume}`")
            events.emit(RunFailed(error=str(user_error), stage=current["stage"], exit_code=user_error.exit_code))
            raise user_error from exc
        events.emit(RunFailed(error=f"{type(exc).__name__}: {exc}", stage=current["stage"], exit_code=1))
        raise
    else:
        events.emit(RunFinished(name=recipe.name, seconds=seconds, run_dir=str(rundir.path),
                                summary=_summary(result.report)))
        return result
    finally:
        jsonl.close()


def _run_stages(recipe: Recipe, rundir: RunDir, sink: EventSink, cancel: threading.Event | None,
                current: dict[str, str]) -> RunResult:
    import transformers

    from fnapi.data import load_data, tokenize
    from fnapi.masking import from_section
    from fnapi.models.loading import load_model
    from fnapi.training import train

    current["stage"] = "hardware"
    check_hardware(recipe, sink)
    transformers.set_seed(recipe.seed)
    current["stage"] = "evaluate"
    check_benchmarks(recipe, sink)

    current["stage"] = "model"
    check_cancelled(cancel, "the run")
    loaded = load_model(recipe.model, sink=sink, cancel=cancel)
    tokenizer = loaded.tokenizer

    current["stage"] = "data"
    data = load_data(recipe.data, seed=recipe.seed)
    sink.emit(Log(message=data.describe(), stage="data"))
    train_tokens = tokenize(data.train, tokenizer, chat_template=recipe.data.chat_template,
                            max_length=recipe.data.max_length, sink=sink, cancel=cancel)
    validation_tokens = None
    if data.validation:
        held_out = data.validation[: recipe.train.validation_samples] if recipe.train.validation_samples else data.validation
        validation_tokens = tokenize(held_out, tokenizer, chat_template=recipe.data.chat_template,
                                     max_length=recipe.data.max_length, sink=sink, cancel=cancel)
    if len(train_tokens) == 0:
        raise DataError(f"{recipe.data.path}: no training example has a token to learn after tokenizing",
                        "check the format detection with `fnapi data inspect` and data.max_length")
    distributed.check_enough_examples(len(train_tokens), f"{recipe.data.path}: training examples")
    current["stage"] = "hardware"
    check_training_fits(recipe, loaded.model, train_tokens, sink)

    current["stage"] = "template"
    template = None
    neuron_mask = None
    if recipe.template is not None:
        template = obtain_template(recipe, loaded, rundir, sink, cancel)
        current["stage"] = "mask"
        if recipe.mask.switches() != ("none", "all"):
            neuron_mask = from_section(template, recipe.mask, seed=recipe.seed)
            sink.emit(Log(message=f"mask: {neuron_mask.describe()}", stage="mask"))

    current["stage"] = "evaluate"
    eval_set = _task_conversations(recipe, data)
    plan = eval_plan(recipe, tokenizer, eval_set, sink, task_answers=task_answers(data.train))
    # The main process evaluates while the others wait; they get the scores for the report.
    baseline = distributed.on_main(baseline_scores, recipe, plan, loaded, rundir, sink, cancel, share=_public)

    replayed, loss_term = None, None
    if recipe.train.replay is not None:
        current["stage"] = "replay"
        train_tokens, replayed = with_replay(recipe, loaded, rundir, train_tokens, plan, sink, cancel)
    if recipe.train.kl_to_base is not None:
        current["stage"] = "replay"
        loss_term = kl_to_base(recipe, loaded, rundir, plan, sink, cancel)

    current["stage"] = "train"
    result = train(loaded, tokenizer, train_tokens, validation_tokens, recipe.train, mask=neuron_mask,
                   output_dir=rundir.path, seed=recipe.seed, sink=sink, cancel=cancel, resume=True,
                   save_model=recipe.output.save_model, merge_lora=recipe.output.merge_lora,
                   bake_lesion=recipe.output.bake_lesion,
                   accelerate_config=recipe.distributed.accelerate_config if recipe.distributed else None,
                   task_check=_task_check(recipe, data, tokenizer), run_name=recipe.name, loss_term=loss_term)

    current["stage"] = "evaluate"
    after = distributed.on_main(final_scores, recipe, plan, result.model, tokenizer, neuron_mask, baseline, sink, cancel)
    if after is not None:
        distributed.on_main(write_measures, rundir, baseline["measures"], after)

    report = ForgettingReport(
        name=recipe.name,
        **report_scores(baseline.get("measures"), after),
        stopped_at_task_target=result.stopped_at_task_target,
        trainable_parameters=result.trainable_parameters,
        total_parameters=result.total_parameters,
        train_seconds=result.seconds,
        final_loss=result.final_loss,
        steps=result.steps,
        losses=list(result.losses),
        frozen_weights_unchanged=result.frozen_unchanged,
        model=loaded.info.to_dict(),
        mask=_mask_summary(recipe, neuron_mask),
        template=_template_summary(template, rundir),
        method=recipe.train.method,
        recipe_fingerprint=recipe.fingerprint(),
        replay=replayed,
        kl_penalty=None if loss_term is None else {
            "source": recipe.train.kl_to_base.prompts, "prompts": len(loss_term.ids),
            "strength": recipe.train.kl_to_base.strength, "file": "kl_to_base.json"},
    )
    report.warnings = run_warnings(recipe, data, report)
    for warning in report.warnings:
        sink.emit(Log(message=warning, level="warning", stage="report"))
    return RunResult(run_dir=rundir.path, report=report,
                     template_path=rundir.template if template is not None else None, resumed=rundir.resumed)


# ---- stages ----------------------------------------------------------------------------------

def check_hardware(recipe: Recipe, sink: EventSink) -> None:
    """Refuse CUDA-only features the machine lacks before anything slow starts (whether the batch fits
    is checked once the model is loaded, by :func:`check_training_fits`)."""
    from fnapi.hardware import check_method_supported, check_quantization_supported, detect_hardware, format_bytes

    with stage(sink, "hardware", description="devices and memory") as progress:
        report = detect_hardware()
        device = "cuda" if report.has_cuda else "cpu"
        progress.log(f"device {device}; {report.cpu.logical_cores if report.cpu else '?'} CPU cores; "
                     f"{format_bytes(report.ram_available or 0)} RAM available")
        if recipe.model.quantization != "none":
            check_quantization_supported(recipe.model.quantization, report)
        check_method_supported(recipe.train.method, report)
        if recipe.distributed is not None:
            distributed.check_accelerate_config(recipe.distributed.accelerate_config, report.has_cuda)
        if recipe.model.device == "cuda" and not report.has_cuda:
            raise HardwareError("model.device is cuda but this machine has no CUDA device",
                                "set model.device: auto (or cpu)")


#: Warn when training is predicted to need more than this share of the memory left (the estimate
#: is within about 15% on the embedded model, see benchmarks/memory_estimate.py).
TIGHT_MEMORY_SHARE = 0.85


def check_benchmarks(recipe: Recipe, sink: EventSink) -> None:
    """The recipe's lm-eval benchmarks can be built, data and all, before the model loads (the task
    names were checked by preflight; a hub task's data may still be out of reach)."""
    section = recipe.eval.lm_eval
    if not recipe.eval.enabled or section is None or not distributed.is_main_process():
        return
    from fnapi.lm_eval_bridge import LmEvalRequest, check_tasks

    with stage(sink, "benchmarks", description="lm-eval tasks and their data") as progress:
        check_tasks(LmEvalRequest.from_section(section), tasks_at="eval.lm_eval.tasks",
                    include_at="eval.lm_eval.include")
        progress.log(f"lm-eval tasks ready: {', '.join(section.tasks)}")


def check_training_fits(recipe: Recipe, model: Any, train_tokens: Any, sink: EventSink) -> None:
    """Refuse, before the slow stages, a batch that cannot fit in the memory left; warn when it is tight."""
    from fnapi.estimate import added_by_training, training_peak
    from fnapi.hardware import detect_hardware, format_bytes

    parameter = next(model.parameters())
    device = "cuda" if parameter.device.type == "cuda" else "cpu"
    longest = min(max(len(ids) for ids in train_tokens.input_ids), recipe.data.max_length)
    peak = training_peak(recipe, model, longest, device)
    if device == "cuda":
        import torch

        need, have = peak.total, torch.cuda.get_device_properties(parameter.device).total_memory
    else:
        # The weights and the runtime are already resident; what training adds must fit in what is left.
        need = added_by_training(peak)
        have = detect_hardware().ram_available
    if not have or need <= TIGHT_MEMORY_SHARE * have:
        return
    terms = ", ".join(f"{t.name} {format_bytes(t.bytes)}" for t in peak.biggest())
    what = (f"train.batch_size {recipe.train.batch_size} with rows of {longest} tokens needs about "
            f"{format_bytes(need)} more {device} memory for training and {format_bytes(have)} is available "
            f"(biggest terms: {terms})")
    fix = ("lower train.batch_size and raise train.gradient_accumulation to keep the effective batch, lower "
           "data.max_length, or turn on train.gradient_checkpointing (see `fnapi estimate`)")
    if need > have:
        raise HardwareError(what, fix)
    sink.emit(Log(level="warning", stage="hardware", message=f"memory is tight: {what}; if training fails, {fix}"))


def obtain_template(recipe: Recipe, loaded: Any, rundir: RunDir, sink: EventSink,
                    cancel: threading.Event | None):
    """Load the recipe's template, or reuse the one this run already built, or build it."""
    from fnapi.networks.build import build_template
    from fnapi.networks.template import Template

    section = recipe.template
    # Decided once: processes that looked at the run directory at different moments would disagree.
    built_before = distributed.on_main(rundir.template.exists)
    if section.path:
        template = Template.load(section.path)
        source = section.path
    elif built_before:
        template = Template.load(rundir.template)
        source = "this run (resumed)"
    else:
        data_specs = list(section.data) or [recipe.data.path]
        template = build_template(loaded, section, data_specs, seed=recipe.seed, sink=sink, cancel=cancel)
        source = "built"
        if section.out:
            distributed.on_main(template.save, section.out)
    for warning in [*template.warnings, *(template.check_compatible(loaded.info) or [])]:
        sink.emit(Log(message=warning, level="warning", stage="template"))
    other = template.other_model(loaded.info) if section.path else None
    if other and not section.allow_other_model:
        raise TemplateError(f"template.path {section.path}: {other}",
                            hint="Build a template for this model (drop template.path), or set "
                                 "template.allow_other_model: true to apply this one anyway.")
    if not built_before:
        distributed.on_main(template.save, rundir.template)
    sink.emit(Log(message=f"template ({source}): {len(template.components)} components at {template.site}",
                  stage="template"))
    return template


def with_replay(recipe: Recipe, loaded: Any, rundir: RunDir, train_tokens: Any, plan: Any, sink: EventSink,
                cancel: threading.Event | None) -> tuple[Any, dict[str, Any]]:
    """The training rows with the base model's replies to general prompts mixed in (``train.replay``),
    and what the report says of them: where the prompts came from, how many rows were added."""
    from fnapi.data import tokenize
    from fnapi.replay import mix, replay_rows

    section = recipe.train.replay
    rows = distributed.on_main(replay_rows, section, loaded.model, loaded.tokenizer, rundir.path, list(plan.probes),
                               chat_template=recipe.data.chat_template, sink=sink, cancel=cancel)
    replayed = tokenize(rows, loaded.tokenizer, chat_template=recipe.data.chat_template,
                        max_length=recipe.data.max_length, cache=False)
    mixed = mix(train_tokens, replayed, section.ratio)
    added = len(mixed) - len(train_tokens)
    sink.emit(Log(message=f"replay: {added} rows of the base model's replies to {len(replayed)} general prompts "
                          f"({section.prompts}) mixed into {len(train_tokens)} training rows", stage="replay"))
    return mixed, {"source": section.prompts, "prompts": len(replayed), "rows": added, "ratio": section.ratio,
                   "file": "replay.json"}


def kl_to_base(recipe: Recipe, loaded: Any, rundir: RunDir, plan: Any, sink: EventSink,
               cancel: threading.Event | None) -> Any:
    """The ``train.kl_to_base`` loss term, on the base model's replies to the section's prompts (made
    once, kept in the run folder like replay's; the model is still the base model here)."""
    from fnapi.replay import KlToBase, replay_rows

    section = recipe.train.kl_to_base
    rows = distributed.on_main(replay_rows, section, loaded.model, loaded.tokenizer, rundir.path, list(plan.probes),
                               chat_template=recipe.data.chat_template, sink=sink, cancel=cancel,
                               file="kl_to_base.json", where="train.kl_to_base.prompts")
    term = KlToBase(loaded.model, loaded.tokenizer, rows, strength=section.strength, batch_size=section.batch_size,
                    max_length=recipe.data.max_length, chat_template=recipe.data.chat_template)
    sink.emit(Log(message=f"KL to base: {len(term.ids)} replies of the base model to general prompts "
                          f"({section.prompts}), {section.batch_size} a step, strength {section.strength}",
                  stage="replay"))
    return term


def _task_check(recipe: Recipe, data: Any, tokenizer: Any):
    """The validation task score that ``train.task_target`` is checked against (None without a target)."""
    if recipe.train.task_target is None:
        return None
    pool = list(data.validation or data.test or [])[: recipe.train.task_check_samples]
    if not pool:
        raise DataError(f"train.task_target needs validation conversations and {recipe.data.path} has none",
                        "set data.validation_split above 0 or data.validation_path")

    def check(model: Any) -> float:
        from fnapi.measures import measure_task

        scores = measure_task(model, tokenizer, pool, max_new_tokens=recipe.eval.max_new_tokens,
                              chat_template=recipe.data.chat_template)
        return sum(scores) / len(scores)

    return check


def _task_conversations(recipe: Recipe, data: Any) -> list:
    pool = data.test if data.test else data.validation
    return list(pool[: recipe.eval.task_samples]) if pool else []


#: Training answers the format-leak flag learns the task's look from.
LEAK_ANSWERS = 400


def task_answers(conversations: Any) -> list[str]:
    """The last answers of the first training conversations: what the task's replies look like."""
    return [c.messages[-1]["content"] for c in list(conversations)[:LEAK_ANSWERS]
            if not c.is_text and c.messages and c.messages[-1].get("role") == "assistant"]


def eval_plan(recipe: Recipe, tokenizer: Any, eval_set: list, sink: EventSink | None = None,
              task_answers: list[str] | tuple[str, ...] = ()):
    """What the forgetting report scores before and after training (one plan for both);
    ``task_answers`` are the training answers replies to general prompts are compared with."""
    from fnapi.lm_eval_bridge import LmEvalRequest
    from fnapi.measures import GenerativeRequest, build_plan

    section = recipe.eval
    return build_plan(tokenizer, tasks=[(recipe.data.path, eval_set)], probes=section.probes,
                      probe_samples=section.probe_samples, texts=[section.text] if section.text else [],
                      text_samples=section.kl_prompts, max_new_tokens=section.max_new_tokens,
                      chat_template=recipe.data.chat_template, sink=sink,
                      lm_eval=LmEvalRequest.from_section(section.lm_eval) if section.lm_eval else None,
                      generative=GenerativeRequest.from_section(section.generative, task_answers))


def baseline_scores(recipe: Recipe, plan: Any, loaded: Any, rundir: RunDir, sink: EventSink,
                    cancel: threading.Event | None) -> dict[str, Any]:
    """Per-item scores of the untouched model, stored so a resumed run does not measure them again;
    the base model's text distributions (for the KL after training) are kept in memory only."""
    from fnapi.measures import EvalMeasures, Reference, evaluate

    if not recipe.eval.enabled:
        return {}
    global _LAST_BASELINE
    path = rundir.path / BASELINE_FILE
    model, tokenizer = loaded.model, loaded.tokenizer
    stored = _read_baseline(path)
    key = _baseline_key(recipe, plan)
    if stored is not None:
        measures = EvalMeasures.from_dict(stored)
        # A resumed run reports the scores it measured before, so every view shows them again.
        with stage(sink, "baseline", total=plan.items, unit="item", cancel=cancel,
                   description="scores of the base model") as progress:
            progress.log(f"base model scores: read from {path.name} (measured when this run started)")
            reference = Reference.of_base(model, plan, measures)
            progress.metric(_headline(measures, "before"))
    elif _LAST_BASELINE is not None and _LAST_BASELINE[0] == key:
        # The same base model on the same evaluation items, earlier in this process (the runs of a
        # comparison): its scores are the same, so they are not measured again.
        _, measures, reference = _LAST_BASELINE
        with stage(sink, "baseline", total=plan.items, unit="item", cancel=cancel,
                   description="scores of the base model") as progress:
            progress.log("base model scores: the same model and evaluation data as the previous run; reused")
            progress.metric(_headline(measures, "before"))
        atomic_write_text(path, json.dumps({"format": BASELINE_FORMAT, **measures.to_dict()}) + "\n")
    else:
        with stage(sink, "baseline", total=plan.items, unit="item", cancel=cancel,
                   description="scores of the base model") as progress:
            measures, reference = evaluate(model, tokenizer, plan, progress=progress)
            progress.metric(_headline(measures, "before"))
        atomic_write_text(path, json.dumps({"format": BASELINE_FORMAT, **measures.to_dict()}) + "\n")
    _LAST_BASELINE = (key, measures, reference)
    return {"measures": measures, "_reference": reference}


#: The last base model scores measured in this process: (key, measures, text distributions).
_LAST_BASELINE: tuple[str, Any, Any] | None = None


def _baseline_key(recipe: Recipe, plan: Any) -> str:
    """What the base scores depend on: the model as loaded and every evaluation item."""
    import hashlib

    described = json.dumps(recipe.model.model_dump(mode="json"), sort_keys=True) + repr(plan)
    return hashlib.sha256(described.encode()).hexdigest()


def _read_baseline(path: Path) -> dict[str, Any] | None:
    """The stored baseline, or None when there is none, it predates per-item scores, or it is damaged."""
    if not path.exists():
        return None
    from fnapi.measures import EvalMeasures

    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
            return None
        EvalMeasures.from_dict(data)  # a damaged file is measured again, not half-read
    except (OSError, ValueError, TypeError):
        return None
    return data


def _headline(measures: Any, when: str) -> dict[str, float]:
    """The few numbers shown while a run evaluates."""
    out = {}
    if measures.tasks:
        out[f"task_{when}"] = measures.tasks[0].score.mean
    if measures.probes:
        out[f"probes_{when}"] = measures.probes[0].accuracy.mean
    if measures.generative:
        out[f"open_ended_{when}"] = measures.generative[0].accuracy.mean
    if measures.chat is not None and measures.chat.kl is not None:
        out["chat_kl"] = measures.chat.mean_kl.mean
    if measures.texts:
        out[f"text_nll_{when}"] = measures.texts[0].mean_nll.mean
        if measures.texts[0].kl is not None:
            out["kl_to_base"] = measures.texts[0].mean_kl.mean
    for metric in measures.lm_eval.metrics if measures.lm_eval is not None else ():
        if metric.value is not None and f"{metric.task}_{when}" not in out:  # each task's first metric
            out[f"{metric.task}_{when}"] = metric.value
    return out


def _public(scores: dict[str, Any]) -> dict[str, Any]:
    """Scores without the in-memory reference distributions (large, and needed by the main process only)."""
    return {key: value for key, value in scores.items() if not key.startswith("_")}


def final_scores(recipe: Recipe, plan: Any, model: Any, tokenizer: Any, neuron_mask: Any, baseline: dict,
                 sink: EventSink, cancel: threading.Event | None) -> Any:
    """Per-item scores of the fine-tuned model, with the forward-pass part of the mask (ablation) in place."""

    from fnapi.masking import mask
    from fnapi.measures import evaluate

    if not recipe.eval.enabled:
        return None
    ablating = neuron_mask is not None and neuron_mask.ablate != "none"
    context = mask(model, neuron_mask, train="all") if ablating else contextlib.nullcontext()
    merged = adapter_merged(model) if recipe.train.method == "lora" else contextlib.nullcontext()
    with merged, context, stage(sink, "evaluate", total=plan.items, unit="item", cancel=cancel,
                        description="scores after fine-tuning") as progress:
        measures, _ = evaluate(model, tokenizer, plan, reference=baseline.get("_reference"),
                               base=baseline.get("measures"), progress=progress)
        progress.metric(_headline(measures, "after"))
    return measures


@contextlib.contextmanager
def adapter_merged(model: Any) -> Any:
    """LoRA weights merged into the base weights while scoring (one matmul per layer instead of
    three; the scores agree to float rounding), unmerged afterwards. The adapter and any merged model
    were saved by training before this, so the rounding of merge-then-unmerge reaches no file."""
    if not (hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter")):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def write_measures(rundir: RunDir, before: Any, after: Any) -> Path:
    """Per-item scores before and after (what comparisons pair across methods and seeds)."""
    data = {"format": MEASURES_FORMAT, "before": before.to_dict(), "after": after.to_dict()}
    return atomic_write_text(rundir.path / MEASURES_FILE, json.dumps(data) + "\n")


def report_scores(before: Any, after: Any) -> dict[str, Any]:
    """The report's score fields from per-item measures before and after."""
    from fnapi.measures import compare_measures

    if before is None or after is None:
        return {}
    pairs = compare_measures(before, after)
    kl = pairs.get("kl_to_base")
    return {"task": Score.from_pair(pairs.get("task"), "exact match"),
            "generative": Score.from_pair(pairs.get("generative"), "names the right choice and no other"),
            "generative_sets": pairs["generative_sets"], "chat_kl": pairs.get("chat_kl"),
            "format_leak": pairs.get("format_leak"),
            "probes": Score.from_pair(pairs.get("probes"), "choice accuracy (log-likelihood)"),
            "probe_logprob": Score.from_pair(pairs.get("probe_logprob"), "summed log-probability"),
            "text_nll": Score.from_pair(pairs.get("text_nll"), "nats per token"),
            "probe_sets": pairs["probe_sets"], "tasks": pairs["tasks"], "texts": pairs["texts"],
            "lm_eval": pairs.get("lm_eval", []),
            "kl_to_base": kl["mean"] if kl else None, "kl_ci95": kl["ci95"] if kl else None}


#: A run diverged when its loss ends this many times above where it started (and at least
#: DIVERGED_RISE nats above): fine-tuning lowers the loss, a learning rate far too high raises it.
DIVERGED_RATIO = 1.25
DIVERGED_RISE = 0.5


def divergence(losses: list[tuple[int, float]]) -> str | None:
    """Why the loss curve says training diverged (NaN, or ending well above its start), or None.

    >>> divergence([(1, 6.0), (2, 7.5), (3, 10.8)])
    'training diverged: the loss rose from 6.0 at step 1 to 9.2 at the end (mean of the last 2 logged values); lower train.learning_rate'
    >>> divergence([(1, 3.1), (2, 1.2)]) is None
    True
    """
    import math

    for step, value in losses:
        if not math.isfinite(value):
            return (f"training diverged: the loss became {value} at step {step}; lower train.learning_rate "
                    "(or check the data for empty answers)")
    if len(losses) < 2:
        return None
    start = losses[0][1]
    tail = [value for _, value in losses[max(1, len(losses) - 3):]]
    end = sum(tail) / len(tail)
    if end > DIVERGED_RATIO * start and end - start > DIVERGED_RISE:
        return (f"training diverged: the loss rose from {start:.1f} at step {losses[0][0]} to {end:.1f} at the end "
                f"(mean of the last {len(tail)} logged values); lower train.learning_rate")
    return None


def run_warnings(recipe: Recipe, data: Any, report: ForgettingReport) -> list[str]:
    """What a user must know that the scores alone do not say: training that diverged, and each
    measure that could not be taken, with why and what to add."""
    warnings = []
    diverged = divergence(report.losses)
    if diverged:
        warnings.append(diverged)
    if not recipe.eval.enabled:
        return warnings + ["nothing was measured: eval.enabled is false"]
    if report.task.before is None:
        held_out = len(data.test or data.validation or [])
        warnings.append(f"the task score could not be measured: {recipe.data.path} left {held_out} test or "
                        f"validation rows after the split ({len(data.train)} training rows); add rows, raise "
                        "data.validation_split or give data.validation_path")
    if report.generative.before is None and recipe.eval.generative.enabled:
        warnings.append("open-ended answers could not be measured: eval.probes names no probe set; add "
                        "builtin:probes or a multiple-choice file")
    if recipe.eval.generative.enabled and recipe.eval.generative.chat_prompts and report.format_leak is None:
        warnings.append(f"the format-leak flag could not be computed: {recipe.data.path} has no answers to "
                        "compare replies with")
    return warnings


def _mask_summary(recipe: Recipe, neuron_mask: Any) -> dict[str, Any]:
    ablate, train_which = recipe.mask.switches()
    summary: dict[str, Any] = {"preset": recipe.mask.preset, "ablate": ablate, "train": train_which,
                               "components": recipe.mask.components, "layers": recipe.mask.layers}
    summary["control"] = recipe.mask.control
    if neuron_mask is not None:
        summary["site"] = neuron_mask.site
        summary["neurons"] = sum(len(neuron_mask.selected(layer)) for layer in neuron_mask.layers)
        summary["per_layer"] = {str(layer): len(neuron_mask.selected(layer)) for layer in neuron_mask.layers}
        summary["in_words"] = neuron_mask.in_words()
    return summary


def _template_summary(template: Any, rundir: RunDir) -> dict[str, Any]:
    if template is None:
        return {}
    return {"path": str(rundir.template), "site": template.site, "width": template.width,
            "components": len(template.components), "method": template.method.get("name")}


def _summary(report: ForgettingReport) -> dict[str, Any]:
    return {"final_loss": report.final_loss, "task_after": report.task.after, "probes_after": report.probes.after,
            "probes_retained": report.probes.retained, "kl_to_base": report.kl_to_base,
            "open_ended_after": report.generative.after, "open_ended_retained": report.generative.retained,
            "chat_kl": (report.chat_kl or {}).get("value"),
            "format_leak": (report.format_leak or {}).get("flag")}
