"""Fine-tuning with the Hugging Face Trainer: LoRA, QLoRA or full, under a neuron mask, resumable.

:func:`train` wraps the model for the method, installs the mask (:mod:`fnapi.masking`), runs the
Trainer with a callback that turns its logs into fnapi events, and saves the result:

* checkpoints in ``output_dir/checkpoints/checkpoint-<step>``: plain weights (the mask's
  trainable slices written back, so they load without the mask), optimizer, scheduler and RNG
  state (the Trainer's), and ``fnapi_state.json`` with the run identity (method, hyperparameters,
  seed, mask, data and model fingerprints) and the loss history. That file is written last, so a
  checkpoint without it (a run killed while saving) is skipped when resuming;
* the LoRA adapter in ``output_dir/adapter`` (peft ``save_pretrained``) and/or the full model in
  ``output_dir/model`` (transformers ``save_pretrained``), each with the tokenizer, written to a
  temporary folder and renamed into place.

Under torchrun or accelerate launch the Trainer runs data-parallel (DDP, or FSDP/DeepSpeed from an
accelerate config); every process installs the same mask, only the main process writes the state
files and outputs, and the frozen-weight hashes of all processes are compared at the end.

Calling :func:`train` again with the same arguments after a crash, ``kill -9`` or cancellation
resumes from the last complete checkpoint and ends where an uninterrupted run would: the data
order is fixed by the seed (no loader workers) and the RNG state is restored. A checkpoint made
under another mask or recipe is refused rather than silently mixed.

``train`` changes the model it is given (LoRA layers are injected into it, full fine-tuning
updates its weights); load the model again to start an unrelated run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from fnapi import distributed, trackers
from fnapi.data.templating import collate
from fnapi.errors import CancelledError, DataError, ModelError, RecipeError
from fnapi.events import EventSink, Log, Metric, NullSink, Progress, stage
from fnapi.hardware import check_method_supported
from fnapi.masking import NeuronMask, frozen_checksums, plain_state_dict
from fnapi.masking import bake_lesion as bake_lesion_into
from fnapi.masking import mask as apply_mask
from fnapi.models.registry import get_adapter, linear_module_names
from fnapi.models.runtime import pad_id, quiet_progress_bars
from fnapi.paths import atomic_write_text
from fnapi.recipe import TrainSection
from fnapi.rundir import CHECKPOINT_STATE_FILE as STATE_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fnapi.data.templating import TokenizedData
    from fnapi.models.loading import LoadedModel
from fnapi.rundir import read_checkpoint_state as _read_state

#: ``loss_term(model, inputs, outputs)``: a scalar tensor added to the training loss of a batch.
LossTerm = Callable[[Any, dict[str, Any], Any], torch.Tensor]

CHECKPOINTS_DIR = "checkpoints"
STATE_FORMAT = "fnapi.train-state/1"
# Settings that do not change the trajectory, so a resumed run may differ in them.
_RESUME_NEUTRAL = {"logging_steps", "save_steps", "report_to"}


@dataclass
class TrainResult:
    """What :func:`train` did. ``losses`` holds ``(step, loss)`` for every optimizer step.

    ``frozen_unchanged`` is None when the mask freezes nothing, else whether every frozen block
    of neuron weights hashed the same before and after training.
    """

    final_loss: float | None
    eval_loss: float | None
    steps: int
    seconds: float
    trainable_parameters: int
    total_parameters: int
    losses: list[tuple[int, float]]
    checkpoint_dir: Path | None
    resumed_from: int | None
    adapter_dir: Path | None
    model_dir: Path | None
    frozen_unchanged: bool | None
    frozen_checksums: dict[str, str] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)
    task_checks: list[tuple[int, float]] = field(default_factory=list)
    stopped_at_task_target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the model is left out)."""
        return {
            "final_loss": self.final_loss, "eval_loss": self.eval_loss, "steps": self.steps,
            "seconds": round(self.seconds, 3), "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters, "losses": [list(p) for p in self.losses],
            "checkpoint_dir": _str(self.checkpoint_dir), "resumed_from": self.resumed_from,
            "adapter_dir": _str(self.adapter_dir), "model_dir": _str(self.model_dir),
            "frozen_unchanged": self.frozen_unchanged, "frozen_checksums": self.frozen_checksums,
            "task_checks": [list(p) for p in self.task_checks], "stopped_at_task_target": self.stopped_at_task_target,
        }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def train(loaded_or_model: LoadedModel | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None,
          train_data: TokenizedData, eval_data: TokenizedData | None, train_section: TrainSection, *,
          mask: NeuronMask | None = None, output_dir: str | os.PathLike, seed: int = 0,
          sink: EventSink | None = None, cancel: threading.Event | None = None, resume: bool = True,
          save_model: bool = True, merge_lora: bool = False, bake_lesion: bool = False,
          accelerate_config: str | os.PathLike | None = None,
          task_check: Callable[[PreTrainedModel], float] | None = None, run_name: str | None = None,
          loss_term: LossTerm | None = None) -> TrainResult:
    """Fine-tune a model on tokenized data under an optional neuron mask; resume if interrupted.

    ``loaded_or_model`` is a ``LoadedModel`` or a transformers model; ``tokenizer`` may be None
    for a ``LoadedModel``. ``train_data``/``eval_data`` are ``TokenizedData``. With ``resume``
    the last complete checkpoint under ``output_dir/checkpoints`` is continued (after checking it
    was made by the same mask and recipe); without it old checkpoints are deleted first.
    ``merge_lora`` also writes the merged full model; ``bake_lesion`` writes the full model with
    the ablated channels zeroed in its weights (for LoRA this implies merging). Cancelling via
    ``cancel`` saves a checkpoint and raises :class:`CancelledError`. ``accelerate_config`` names
    an accelerate config file whose FSDP or DeepSpeed settings the Trainer uses (unless the
    process was started by ``accelerate launch``, whose settings then apply).

    With ``train_section.task_target`` set, ``task_check(model)`` (a validation task score in
    [0, 1]) runs every ``task_check_every`` steps and training stops, with a checkpoint, as soon as
    it reaches the target; ``train_section.steps`` is then the cap. A resumed run that had already
    reached its target does not train further.

    ``loss_term(model, inputs, outputs)``, when given, is a scalar tensor added to the task loss of
    every training batch (a continual-learning method's penalty or distillation term); it counts
    once per optimizer step whatever the gradient accumulation, is left out of the validation loss,
    and is logged as the ``loss_term`` metric.

    The trackers in ``train_section.report_to`` get the Trainer's logs under ``run_name`` (default:
    the output folder's name), written inside ``output_dir`` by default (:mod:`fnapi.trackers`);
    only the main process logs.
    """
    check_method_supported(train_section.method)
    model, tokenizer, model_id = _unpack(loaded_or_model, tokenizer)
    if train_data is None or len(train_data) == 0:
        raise DataError("the training data has no examples (after tokenizing and truncation)")
    distributed.check_enough_examples(len(train_data), "training examples")
    parallel = distributed.trainer_options(accelerate_config)
    sink = distributed.main_process_sink(sink if sink is not None else NullSink())
    output_dir = Path(output_dir)
    root = output_dir / CHECKPOINTS_DIR
    neuron_mask = mask if mask is not None and not mask.is_noop else None
    identity = _run_identity(train_section, seed, neuron_mask, train_data, model_id)
    checkpoint = _find_resume_point(root, identity, resume, sink)
    started = time.monotonic()

    tracked = train_section.report_to if distributed.is_main_process() else []
    with (quiet_progress_bars(),
          trackers.session(tracked, output_dir, run_name or output_dir.name) as tracking,
          stage(sink, "train", total=_planned_steps(train_section, len(train_data)), unit="step",
                cancel=cancel, description=f"{train_section.method} fine-tuning") as progress):
        torch.manual_seed(seed)  # the LoRA initialisation depends on it
        model = prepare_model(model, train_section)
        saved = _read_state(checkpoint) if checkpoint else {"step": None, "losses": []}
        callback = _EventCallback(sink, cancel, train_section.logging_steps, identity, saved["losses"])
        callbacks: list[TrainerCallback] = [callback]
        target = None
        if train_section.task_target is not None and task_check is not None:
            target = _TaskTarget(task_check, train_section.task_target, train_section.task_check_every, sink,
                                 saved.get("task_checks", []), saved.get("stopped_at_task_target"))
            callback.extra_state = target.state
            callbacks.append(target)
        arguments = _training_arguments(train_section, root, seed, model, parallel,
                                        report_to=list(tracking.names), run_name=tracking.run_name)
        for note in tracking.notes:
            progress.log(f"tracking to {note}")
        # A checkpoint saved when the target was reached, or at the last step (a kill after training,
        # while validating or saving), is the end of training: only its weights load. The Trainer
        # would otherwise train one step past the end.
        finished = checkpoint is not None and (
            (target is not None and target.reached is not None)
            or saved["step"] >= _planned_steps(train_section, len(train_data)))
        trainer = _MaskedTrainer(
            loss_term=loss_term,
            model=model,
            args=arguments,
            train_dataset=train_data,
            eval_dataset=eval_data,
            data_collator=functools.partial(collate, pad_token_id=pad_id(tokenizer)),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # events replace its prints
        if checkpoint is not None:
            # Plain weights load before the mask is installed; the Trainer restores the rest.
            trainer.load_plain_weights(str(checkpoint))
            progress.log(f"resuming from {checkpoint.name}")
        total = sum(p.numel() for p in model.parameters())
        with _masked(model, neuron_mask) as applied:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if trainable == 0:
                raise RecipeError("the mask leaves no parameter to train",
                                  hint="choose components with neurons in the masked layers or another preset; with "
                                       "LoRA the down-projection must be among train.lora.target_modules")
            progress.log(f"training {trainable:,} of {total:,} parameters"
                         + (f"; mask {neuron_mask.describe()}" if neuron_mask else ""))
            before = applied.frozen_checksums() if applied else {}
            if train_section.gradient_checkpointing:
                model.enable_input_require_grads()
            if not finished:
                try:
                    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                except BaseException:
                    _remove_partial_checkpoints(Path(arguments.output_dir), sink)
                    raise
            eval_loss = None
            if eval_data is not None and not callback.cancelled:
                batches = math.ceil(len(eval_data) / arguments.per_device_eval_batch_size)
                with stage(sink, "validate", total=batches, unit="batch",
                           description=f"validation loss on {len(eval_data)} examples "
                                       "(train.validation_samples)") as validating:
                    callback.validating = validating
                    try:
                        eval_loss = float(trainer.evaluate()["eval_loss"])
                    finally:
                        callback.validating = None
        steps = saved["step"] if finished else trainer.state.global_step
        if callback.cancelled:
            raise CancelledError(
                f"training was cancelled at step {steps}; a checkpoint was saved in {callback.last_checkpoint}",
                hint="Run the same command again to resume from it.")
        after = frozen_checksums(model, neuron_mask) if neuron_mask else {}
        unchanged = None if not before else after == before
        if unchanged is False:
            progress.log("frozen weights changed during training", level="error")
        if before and distributed.is_distributed():
            # Every process must hold the same frozen weights, bit for bit, as it held before.
            agree = all(sums == after for sums in distributed.all_gather(after))
            unchanged = unchanged and agree
            progress.log(f"frozen weights bit-identical on all {distributed.world_size()} processes" if agree
                         else "frozen weights differ between processes", level="info" if agree else "error")
        adapter_dir, model_dir, model = _save_outputs(model, tokenizer, neuron_mask, output_dir, train_section.method,
                                                      save_model=save_model, merge_lora=merge_lora,
                                                      bake_lesion=bake_lesion)
        model.eval()
        losses = callback.losses
        progress.summary.update(final_loss=losses[-1][1] if losses else None, eval_loss=eval_loss, steps=steps,
                                trainable_parameters=trainable, frozen_unchanged=unchanged)

    return TrainResult(
        final_loss=losses[-1][1] if losses else None, eval_loss=eval_loss, steps=steps,
        seconds=time.monotonic() - started, trainable_parameters=trainable, total_parameters=total,
        losses=losses, checkpoint_dir=callback.last_checkpoint or checkpoint,
        resumed_from=saved["step"],
        adapter_dir=adapter_dir, model_dir=model_dir, frozen_unchanged=unchanged, frozen_checksums=after,
        model=model, task_checks=list(target.checks) if target else [],
        stopped_at_task_target=target.reached if target else None,
    )


# ---- inputs --------------------------------------------------------------------------------------

def _unpack(loaded_or_model: Any, tokenizer: Any) -> tuple[Any, Any, str]:
    """(model, tokenizer, model identity) from a LoadedModel or a bare model."""
    from fnapi.models.loading import weight_fingerprint

    if hasattr(loaded_or_model, "info") and hasattr(loaded_or_model, "model"):
        info = loaded_or_model.info
        return loaded_or_model.model, tokenizer or loaded_or_model.tokenizer, f"{info.name}:{info.fingerprint}"
    if tokenizer is None:
        raise ModelError("train() needs a tokenizer when it is given a bare model")
    return loaded_or_model, tokenizer, weight_fingerprint(loaded_or_model)


def _planned_steps(section: TrainSection, examples: int) -> int:
    if section.steps is not None:
        return section.steps
    # as the Trainer counts: whole accumulation groups of batches per epoch
    per_epoch = max(math.ceil(examples / section.batch_size) // section.gradient_accumulation, 1)
    return math.ceil(per_epoch * section.epochs)


def _data_fingerprint(data: Any) -> str:
    key = getattr(data, "cache_key", None)
    if key:
        return str(key)
    digest = hashlib.sha256()
    for ids, labels in zip(data.input_ids, data.labels):
        digest.update(json.dumps([ids, labels]).encode())
    return digest.hexdigest()[:16]


def _run_identity(section: TrainSection, seed: int, neuron_mask: NeuronMask | None, data: Any, model_id: str) -> dict:
    """What must be equal for a checkpoint to be continued."""
    recipe = section.model_dump(mode="json", exclude=_RESUME_NEUTRAL)
    identity = {
        "format": STATE_FORMAT,
        "train": recipe,
        "seed": seed,
        "mask": None if neuron_mask is None else {**neuron_mask.to_dict(), "source": None},
        "data": _data_fingerprint(data),
        "model": model_id,
    }
    if distributed.is_distributed():  # the batches each step sees depend on the number of processes
        identity["processes"] = distributed.world_size()
    return identity


# ---- checkpoints and resuming ------------------------------------------------------------------------

def _checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders, newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]




def _remove_partial_checkpoints(root: Path, sink: EventSink | None) -> None:
    """Delete checkpoints whose state file was never written (a save cut off by a crash or a full disk).

    They cannot be resumed from, and on a full disk they hold the space the next save needs.
    """
    if not distributed.is_main_process():
        return
    for checkpoint in _checkpoints(root):
        if not (checkpoint / STATE_FILE).is_file():
            shutil.rmtree(checkpoint, ignore_errors=True)
            if sink is not None:
                sink.emit(Log(message=f"removed the incomplete checkpoint {checkpoint}", stage="train"))


def _find_resume_point(root: Path, identity: dict, resume: bool, sink: EventSink) -> Path | None:
    """The last complete checkpoint to continue, after checking it belongs to this run."""
    if not resume:
        if root.exists() and distributed.is_main_process():
            shutil.rmtree(root)
            sink.emit(Log(message=f"removed old checkpoints in {root} (resume off)", stage="train"))
        distributed.barrier()
        return None
    _remove_partial_checkpoints(root, sink)
    complete = [p for p in _checkpoints(root) if (p / STATE_FILE).is_file()]
    if not complete:
        return None
    checkpoint = complete[0]
    saved = _read_state(checkpoint)
    differs = _differences(saved, identity)
    if differs:
        raise RecipeError(
            f"the interrupted run in {checkpoint} used a different mask/recipe ({', '.join(differs)} differ), "
            "so it cannot be resumed",
            hint=f"Use another output folder, or start over without resuming (this deletes {root}).")
    return checkpoint


def _differences(saved: dict, now: dict) -> list[str]:
    differs = []
    for key in ("train", "seed", "mask", "data", "model", "format", "processes"):
        old, new = saved.get(key), now.get(key)
        if key == "processes":
            old, new = old or 1, new or 1
        if isinstance(old, dict) and isinstance(new, dict) and key == "train":
            differs += [f"train.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            differs.append({"data": "training data", "model": "model weights",
                            "processes": f"processes ({old} then, {new} now)"}.get(key, key))
    return differs


# ---- the model for each method -------------------------------------------------------------------------

def prepare_model(model: Any, section: TrainSection) -> Any:
    """Make the parameters the method trains require grad (LoRA: wrap with peft; a model that
    already carries an adapter keeps training it)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model.train()
    if section.method == "full":
        if isinstance(model, PeftModel):
            raise ModelError("full fine-tuning was asked for a model that carries a LoRA adapter",
                             hint="merge the adapter first, or use train.method: lora")
        model.requires_grad_(True)
        return model
    if isinstance(model, PeftModel):  # continue training the adapter it already has
        return model
    if section.method == "qlora":
        if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
            raise ModelError("train.method qlora needs the model loaded quantized",
                             hint="set model.quantization: 4bit in the recipe")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=section.gradient_checkpointing)
    lora = section.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora_targets(model, lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lora_targets(model: Any, targets: list[str] | str) -> list[str]:
    """LoRA target module names: the family's attention and MLP projections for ``auto``."""
    if targets != "auto":
        return list(targets)
    names = linear_module_names(model)
    return [t for t in get_adapter(model).lora_targets if t in names]


@contextlib.contextmanager
def _masked(model: Any, neuron_mask: NeuronMask | None) -> Iterator[Any]:
    if neuron_mask is None:
        yield None
        return
    with apply_mask(model, neuron_mask) as applied:
        yield applied


def _training_arguments(section: TrainSection, root: Path, seed: int, model: Any,
                        parallel: dict[str, Any] | None = None, *, report_to: list[str] | None = None,
                        run_name: str | None = None) -> TrainingArguments:
    on_cpu = next(model.parameters()).device.type == "cpu"
    return TrainingArguments(
        **(parallel or {}),
        output_dir=str(root),
        max_steps=section.steps if section.steps is not None else -1,
        num_train_epochs=section.epochs,
        per_device_train_batch_size=section.batch_size,
        per_device_eval_batch_size=section.batch_size,
        gradient_accumulation_steps=section.gradient_accumulation,
        learning_rate=section.learning_rate,
        weight_decay=section.weight_decay,
        warmup_steps=section.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=section.scheduler,
        max_grad_norm=section.max_grad_norm,
        optim="adamw_torch",
        activation_checkpointing=section.gradient_checkpointing,
        # Every step is logged so the loss history is complete; events are thinned by the callback.
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        use_cpu=on_cpu,
        disable_tqdm=True,
        report_to=report_to or "none",
        run_name=run_name,
    )


class _MaskedTrainer(Trainer):
    """Trainer whose checkpoints hold plain weights, loaded before the mask goes on, and whose
    training loss may carry an extra term (:data:`LossTerm`)."""

    _plain_weights_loaded = False

    def __init__(self, *args: Any, loss_term: LossTerm | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_term = loss_term
        self._terms: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_term is None or not model.training:  # validation measures the task loss alone
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        term = self.loss_term(model, inputs, outputs)
        self._terms.append(float(term.detach()))
        # The Trainer divides an unscaled loss by the accumulation steps itself; a loss already
        # normalised over the accumulated batch is not, so the term is divided here: either way it
        # weighs once per optimizer step, like the task loss.
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            term = term / self.current_gradient_accumulation_steps
        loss = loss + term
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._terms and "loss" in logs:
            logs["loss_term"] = sum(self._terms) / len(self._terms)
            self._terms = []
        super().log(logs, *args, **kwargs)

    def load_plain_weights(self, checkpoint: str) -> None:
        super()._load_from_checkpoint(checkpoint)
        self._plain_weights_loaded = True

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self._plain_weights_loaded:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=plain_state_dict(self.model))


class _EventCallback(TrainerCallback):
    """Turns Trainer progress and logs into fnapi events; stops (with a checkpoint) on cancel."""

    def __init__(self, sink: EventSink, cancel: threading.Event | None, logging_steps: int, identity: dict,
                 history: list) -> None:
        self.sink = sink
        self.cancel = cancel
        self.logging_steps = logging_steps
        self.identity = identity
        self.losses: list[tuple[int, float]] = [(int(s), float(v)) for s, v in history]
        self.cancelled = False
        self.last_checkpoint: Path | None = None
        self._window: list[float] = []
        self.extra_state: Callable[[], dict] = dict  # more to keep in each checkpoint's state file
        self.validating: Any = None  # the validation pass's stage while it runs (advanced per batch)

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (time.monotonic(), state.global_step)
        self._mark = (time.monotonic(), state.num_input_tokens_seen)
        self.losses = [p for p in self.losses if p[0] <= state.global_step]

    def on_step_end(self, args, state, control, **kwargs):
        started, first_step = self._start
        elapsed = max(time.monotonic() - started, 1e-9)
        done = state.global_step - first_step
        rate = done / elapsed if done else None
        eta = (state.max_steps - state.global_step) / rate if rate else None
        self.sink.emit(Progress(stage="train", completed=state.global_step, total=state.max_steps, unit="step",
                                rate=rate, eta_seconds=eta))
        if self.cancel is not None and self.cancel.is_set() and not self.cancelled:
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.validating is not None:
            self.validating.advance()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            self.losses.append((step, float(logs["loss"])))
            self._window.append(float(logs["loss"]))
            if step % self.logging_steps == 0 or step >= state.max_steps or self.cancelled:
                now = time.monotonic()
                then, tokens = self._mark
                values = {"loss": sum(self._window) / len(self._window),
                          "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                          "tokens_per_second": (state.num_input_tokens_seen - tokens) / max(now - then, 1e-9),
                          "loss_term": logs.get("loss_term")}
                self.sink.emit(Metric(stage="train", step=step,
                                      values={k: float(v) for k, v in values.items() if v is not None}))
                self._window = []
                self._mark = (now, state.num_input_tokens_seen)
        if "eval_loss" in logs:
            self.sink.emit(Metric(stage="train", step=step, values={"eval_loss": float(logs["eval_loss"])}))

    def on_save(self, args, state, control, **kwargs):
        # Written after the Trainer has saved everything else: its presence marks a complete checkpoint.
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero:
            state_file = {**self.identity, "step": state.global_step, "losses": self.losses, **self.extra_state()}
            atomic_write_text(folder / STATE_FILE, json.dumps(state_file, indent=1))
        self.last_checkpoint = folder
        self.sink.emit(Log(message=f"checkpoint saved at step {state.global_step}", stage="train", level="debug"))


class _TaskTarget(TrainerCallback):
    """Scores the validation task every ``every`` steps and stops training once it reaches ``target``."""

    def __init__(self, check: Callable[[Any], float], target: float, every: int, sink: EventSink,
                 history: list, reached: float | None) -> None:
        self.check, self.target, self.every, self.sink = check, target, every, sink
        self.checks: list[tuple[int, float]] = [(int(s), float(v)) for s, v in history]
        self.reached = reached

    def state(self) -> dict:
        return {"task_checks": self.checks, "stopped_at_task_target": self.reached}

    def on_train_begin(self, args, state, control, **kwargs):
        self.checks = [c for c in self.checks if c[0] <= state.global_step]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        stopping_early = control.should_training_stop and state.global_step < state.max_steps  # a cancel
        if self.reached is not None or state.global_step % self.every or stopping_early:
            return
        score = float(self.check(model))
        self.checks.append((state.global_step, score))
        self.sink.emit(Metric(stage="train", step=state.global_step, values={"task_check": score}))
        if score >= self.target:
            self.reached = self.target
            self.sink.emit(Log(message=f"validation task score {score:.3f} reached the target {self.target} at "
                                       f"step {state.global_step}; training stops", stage="train"))
            control.should_training_stop = True
            control.should_save = True


# ---- outputs ---------------------------------------------------------------------------------------------

def _save_outputs(model: Any, tokenizer: Any, neuron_mask: NeuronMask | None, output_dir: Path, method: str, *,
                  save_model: bool, merge_lora: bool, bake_lesion: bool) -> tuple[Path | None, Path | None, Any]:
    """Write the adapter and/or the full model; returns (adapter_dir, model_dir, model to evaluate)."""
    if not save_model:
        return None, None, model
    is_lora = method in ("lora", "qlora")
    lesion = bake_lesion and neuron_mask is not None and neuron_mask.ablate != "none"
    adapter_dir = model_dir = None
    if is_lora:
        adapter_dir = _write_dir(output_dir / "adapter", lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
        if not (merge_lora or lesion):
            return adapter_dir, None, model
        model = model.merge_and_unload()
    if lesion:
        bake_lesion_into(model, neuron_mask)
    model_dir = _write_dir(output_dir / "model", lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
    return adapter_dir, model_dir, model


def _write_dir(target: Path, write: Callable[[Path], Any]) -> Path:
    """Write a folder under a temporary name and rename it into place (replacing an older one).

    Only the main process writes; the others wait until the folder is in place.
    """
    distributed.on_main(_replace_dir, target, write)
    return target


def _replace_dir(target: Path, write: Callable[[Path], Any]) -> None:
    temporary = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    for leftover in (temporary, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    write(temporary)
    if target.exists():
        target.rename(old)
    temporary.rename(target)
    if old.exists():
        shutil.rmtree(old)
