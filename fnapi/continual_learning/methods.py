"""The continual-learning methods: what each does before a task, during it and after it.

A :class:`Strategy` is one method's behaviour over a sequence of tasks. The runner
(:mod:`fnapi.continual_learning.runner`) calls, for every task in turn,

1. :meth:`Strategy.before_task`: prepare the model and say how the task trains (a
   :class:`TaskPlan`: the train settings, a neuron mask, an extra loss term, extra rows);
2. :func:`fnapi.training.train` with that plan (a fresh Trainer, so a fresh optimizer and schedule);
3. :meth:`Strategy.after_task`: keep what the method needs from the finished task;

and, after every task, :meth:`Strategy.save_state` (the model and the method's memory), which
:meth:`Strategy.load_state` reads back when a killed sequence resumes.

The methods:

==================  ===================================================================================
``sequential_lora`` one LoRA adapter trained on each task in turn (the reference).
``replay``          the same, with ``per_task`` training rows of every earlier task mixed in.
``ewc``             the same, with ``strength / 2 * sum F (w - w*)^2`` over the adapter's weights: ``F``
                    a diagonal Fisher (squared per-example gradients) summed over the tasks so far,
                    ``w*`` the weights after the last task. Nothing to pull towards on the first task.
``lwf``             the same, with the model as it was before the task distilled into it on the new
                    task's answer positions (KL at ``temperature``, times ``strength``), from the second
                    task on.
``olora``           a new adapter per task, merged into the weights after its task (so it cannot
                    change again); the new adapter's ``A`` is pushed off the row spaces of the earlier
                    ones (``strength * sum ||A_t A_s^T||^2``) and kept small (``l2``).
``protect``         after each task its networks are found on the model that just learnt it (an ICA or
                    attribution template of the task's rows); the next task's adapter cannot touch
                    the networks of any earlier task; adapters are merged per task, so protected
                    weights stay bit-identical.
``subspace``        after each task the directions its inputs span at every adapted layer are measured
                    (:mod:`fnapi.continual_learning.subspace`); a new adapter per task reads nothing from
                    the directions of any earlier task, so its update leaves their inputs' outputs as
                    they were; merged per task.
``masked``          one mask from a template (built once) on every task, the adapter, if any, merged
                    per task.
==================  ===================================================================================
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnapi.events import EventSink, Log, stage
from fnapi.recipe import ContinualRecipe, CumulativeProtect, Ewc, Lwf, Masked, OLora, Replay, SequentialLora, SubspaceProtect, TrainSection

if TYPE_CHECKING:
    import torch

    from fnapi.data.formats import Conversation
    from fnapi.data.templating import TokenizedData
    from fnapi.masking import NeuronMask
    from fnapi.models.loading import LoadedModel
    from fnapi.recipe import DataSection
    from fnapi.training import LossTerm

ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "model.safetensors"
MEMORY_FILE = "memory.json"
TENSORS_FILE = "memory.safetensors"


@dataclass
class TaskContext:
    """What a method may use of the task about to train (or just trained).

    ``tokenize(rows)`` turns conversations into the task's training tokens; ``loaded`` is the
    sequence's model as loaded (its tokenizer, description and architecture adapter); ``seed``
    is the sequence's seed.
    """

    index: int
    name: str
    train_rows: list[Conversation]
    data: DataSection
    tokenize: Callable[[list[Conversation]], TokenizedData]
    loaded: LoadedModel
    seed: int
    sink: EventSink
    cancel: threading.Event | None = None


@dataclass
class TaskPlan:
    """How one task trains: the settings, and what the method adds to plain training."""

    train_section: TrainSection
    neuron_mask: NeuronMask | None = None
    loss_term: LossTerm | None = None
    extra_rows: Sequence[Conversation] = field(default_factory=tuple)
    #: ``constraint(model)``: a context the task trains inside (hooks that shape the update), or None.
    constraint: Callable[[Any], contextlib.AbstractContextManager[Any]] | None = None


class Strategy:
    """Sequential LoRA, and the base of every method: one adapter that keeps training task after task."""

    def __init__(self, section: Any, recipe: ContinualRecipe) -> None:
        self.section, self.recipe = section, recipe

    def before_task(self, model: Any, ctx: TaskContext, train_section: TrainSection) -> tuple[Any, TaskPlan]:
        return model, TaskPlan(train_section)

    def after_task(self, model: Any, ctx: TaskContext) -> Any:
        return model

    # ---- state between tasks (resume) ----
    def save_state(self, model: Any, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save_weights(model, folder)
        memory = self.memory()
        if memory:
            (folder / MEMORY_FILE).write_text(json.dumps(memory) + "\n")
        tensors = self.tensors()
        if tensors:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / TENSORS_FILE))

    def load_state(self, model: Any, folder: Path, loaded: LoadedModel) -> Any:
        model = _load_weights(folder, loaded)
        memory_path, tensors_path = folder / MEMORY_FILE, folder / TENSORS_FILE
        self.restore(json.loads(memory_path.read_text()) if memory_path.exists() else {})
        if tensors_path.exists():
            from safetensors.torch import load_file

            self.restore_tensors(load_file(str(tensors_path)))
        return model

    def memory(self) -> dict[str, Any]:
        """The method's JSON memory (what it kept of earlier tasks)."""
        return {}

    def restore(self, memory: dict[str, Any]) -> None:
        pass

    def tensors(self) -> dict[str, torch.Tensor]:
        """The method's tensor memory."""
        return {}

    def restore_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class ReplayStrategy(Strategy):
    """Sequential LoRA plus a buffer: ``per_task`` training rows of each finished task."""

    section: Replay

    def __init__(self, section: Replay, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.buffer: dict[str, list[Conversation]] = {}

    def before_task(self, model, ctx, train_section):
        rows = [row for name in self.buffer for row in self.buffer[name]]
        if rows:
            ctx.sink.emit(Log(message=f"replay: {len(rows)} rows of {len(self.buffer)} earlier task(s) mixed in",
                              stage="continual"))
        return model, TaskPlan(train_section, extra_rows=rows)

    def after_task(self, model, ctx):
        self.buffer[ctx.name] = _sample_rows(ctx, "replay", self.section.per_task)
        return model

    def memory(self):
        return {"buffer": {name: [row.to_dict() for row in rows] for name, rows in self.buffer.items()}}

    def restore(self, memory):
        from fnapi.data.formats import Conversation

        self.buffer = {name: [Conversation(**row) for row in rows] for name, rows in memory.get("buffer", {}).items()}


class EwcStrategy(Strategy):
    """Sequential LoRA with online EWC: the Fisher of every task so far, the anchor of the last."""

    section: Ewc

    def __init__(self, section: Ewc, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: Any) -> torch.Tensor:
        """``strength / 2 * sum F (w - w*)^2`` over the weights with a Fisher; 0 before the first task ends."""
        import torch

        total = torch.zeros(())
        if not self.fisher:
            return total
        params = dict(model.named_parameters())
        for name, fisher in self.fisher.items():
            param = params[name]
            total = total + (fisher.to(param.device) * (param - self.anchor[name].to(param.device)) ** 2).sum()
        return self.section.strength / 2 * total

    def before_task(self, model, ctx, train_section):
        if not self.fisher:  # the first task: nothing learnt yet to hold on to
            return model, TaskPlan(train_section)
        return model, TaskPlan(train_section, loss_term=lambda m, inputs, outputs: self.penalty(m))

    def after_task(self, model, ctx):
        import torch

        rows = _sample_rows(ctx, "ewc", self.section.fisher_samples)
        fisher = _diagonal_fisher(model, ctx.tokenize(rows), ctx)
        for name, value in fisher.items():
            self.fisher[name] = self.fisher.get(name, torch.zeros_like(value)) + value
        params = dict(model.named_parameters())
        self.anchor = {name: params[name].detach().clone() for name in self.fisher}
        return model

    def tensors(self):
        return {f"fisher/{k}": v for k, v in self.fisher.items()} | {f"anchor/{k}": v for k, v in self.anchor.items()}

    def restore_tensors(self, tensors):
        self.fisher = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("fisher/")}
        self.anchor = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("anchor/")}


def _diagonal_fisher(model: Any, data: TokenizedData, ctx: TaskContext) -> dict[str, torch.Tensor]:
    """Mean squared gradient of each trainable weight's log-likelihood, one example at a time (the
    empirical diagonal Fisher)."""
    import torch

    from fnapi.data.templating import collate
    from fnapi.models.runtime import pad_id

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, device="cpu") for name, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model as it will be used
    pad = pad_id(ctx.loaded.tokenizer)
    device = next(model.parameters()).device
    with stage(ctx.sink, "fisher", total=len(data), unit="example", cancel=ctx.cancel,
               description=f"EWC: Fisher after {ctx.name}") as progress, torch.enable_grad():
        for i in range(len(data)):
            batch = {k: v.to(device) for k, v in collate([data[i]], pad_token_id=pad).items()}
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().cpu() ** 2
            progress.advance(1)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: value / max(len(data), 1) for name, value in fisher.items()}


class LwfStrategy(Strategy):
    """Sequential LoRA with the model before the task as a teacher on the new task's answers."""

    section: Lwf

    def __init__(self, section: Lwf, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.teacher: Any = None

    def before_task(self, model, ctx, train_section):
        if ctx.index == 0:  # nothing learnt before the first task to keep
            self.teacher = None
            return model, TaskPlan(train_section)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        return model, TaskPlan(train_section, loss_term=self.distillation)

    def distillation(self, model: Any, inputs: dict[str, Any], outputs: Any) -> torch.Tensor:
        """KL(teacher || student) at ``temperature`` over the positions that predict answer tokens."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            teacher = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
        answer = inputs["labels"][:, 1:] != -100  # logits at position p predict token p + 1
        if not answer.any():
            return outputs.logits.sum() * 0.0
        t = self.section.temperature
        student = F.log_softmax(outputs.logits[:, :-1][answer] / t, dim=-1)
        target = F.log_softmax(teacher[:, :-1][answer].to(student.dtype) / t, dim=-1)
        kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
        return self.section.strength * kl * t * t

    def after_task(self, model, ctx):
        self.teacher = None
        return model


class OLoraStrategy(Strategy):
    """A new adapter per task, orthogonal to the earlier ones, merged once its task is done."""

    section: OLora

    def __init__(self, section: OLora, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.subspaces: dict[str, list[torch.Tensor]] = {}  # module -> the A of every earlier adapter

    def penalty(self, model: Any) -> torch.Tensor:
        """``strength * sum ||A A_s^T||^2`` over the earlier adapters ``s``, plus ``l2 * ||adapter||^2``."""
        import torch

        total = torch.zeros(())
        for name, module in _lora_modules(model):
            a = _adapter_a(module)
            for earlier in self.subspaces.get(name, []):
                total = total + self.section.strength * (a @ earlier.to(a.device).T).pow(2).sum()
        if self.section.l2:
            total = total + self.section.l2 * sum((p ** 2).sum() for n, p in model.named_parameters()
                                                  if "lora_" in n and p.requires_grad)
        return total

    def before_task(self, model, ctx, train_section):
        if not self.subspaces and not self.section.l2:
            return model, TaskPlan(train_section)
        return model, TaskPlan(train_section, loss_term=lambda m, inputs, outputs: self.penalty(m))

    def after_task(self, model, ctx):
        for name, module in _lora_modules(model):
            self.subspaces.setdefault(name, []).append(_adapter_a(module).detach().clone().cpu())
        return _merged(model)

    def tensors(self):
        return {f"{name}|{k}": a for name, list_ in self.subspaces.items() for k, a in enumerate(list_)}

    def restore_tensors(self, tensors):
        self.subspaces = {}
        for key in sorted(tensors, key=lambda k: (k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1]))):
            self.subspaces.setdefault(key.rsplit("|", 1)[0], []).append(tensors[key])


class ProtectStrategy(Strategy):
    """Find each task's networks once it is learnt; every later task leaves them (all of them) alone."""

    section: CumulativeProtect

    def __init__(self, section: CumulativeProtect, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.protected: dict[int, set[int]] = {}
        self.per_task: dict[str, int] = {}

    def neuron_mask(self) -> NeuronMask | None:
        from fnapi.masking import NeuronMask

        if not any(self.protected.values()):
            return None
        return NeuronMask(self.section.template.site, {k: sorted(v) for k, v in self.protected.items()},
                          ablate="none", train="unselected",
                          source={"method": "protect", "tasks": dict(self.per_task)})

    def before_task(self, model, ctx, train_section):
        neuron_mask = self.neuron_mask()
        if neuron_mask is not None:
            ctx.sink.emit(Log(message=f"protect: {neuron_mask.describe()} frozen (the networks of "
                                      f"{', '.join(self.per_task)})", stage="continual"))
        return model, TaskPlan(train_section, neuron_mask=neuron_mask)

    def after_task(self, model, ctx):
        model = _merged(model)
        template = _task_template(model, ctx, self.section.template, seed=ctx.seed + ctx.index)
        if template.method.get("name") == "attribution":
            neurons = template.neuron_sets([0])  # component 0: the channels that matter most to the task
        else:
            neurons = template.neuron_sets("stable", top_stable=self.section.top_stable)
        before = sum(len(v) for v in self.protected.values())
        for layer, channels in neurons.items():
            self.protected.setdefault(int(layer), set()).update(int(c) for c in channels)
        self.per_task[ctx.name] = sum(len(v) for v in self.protected.values()) - before
        ctx.sink.emit(Log(message=f"protect: {ctx.name}'s networks add {self.per_task[ctx.name]} neurons "
                                  f"({before + self.per_task[ctx.name]} protected)", stage="continual"))
        return model

    def memory(self):
        return {"protected": {str(k): sorted(v) for k, v in self.protected.items()}, "per_task": self.per_task}

    def restore(self, memory):
        self.protected = {int(k): set(v) for k, v in memory.get("protected", {}).items()}
        self.per_task = dict(memory.get("per_task", {}))


class SubspaceStrategy(Strategy):
    """A new adapter per task that reads nothing from the input directions of any earlier task."""

    section: SubspaceProtect

    def __init__(self, section: SubspaceProtect, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.bases: dict[str, torch.Tensor] = {}  # layer -> orthonormal basis (input width x k)

    def before_task(self, model, ctx, train_section):
        import torch

        from fnapi.continual_learning.subspace import project_adapters, projected_adapters
        from fnapi.training import prepare_model

        # The adapter is made here, not in train(), so the hooks can hold its A from the first step;
        # its initialisation is seeded per task, so a resumed task starts from the same A.
        torch.manual_seed(ctx.seed * 1_000 + ctx.index)
        model = prepare_model(model, train_section)
        if not self.bases:
            return model, TaskPlan(train_section)
        project_adapters(model, self.bases)
        protected = sum(b.shape[1] for b in self.bases.values())
        width = sum(b.shape[0] for b in self.bases.values())
        ctx.sink.emit(Log(message=f"subspace: {ctx.name} trains off {protected:,} protected input directions "
                                  f"({protected / width:.0%} of the adapted layers' input width)", stage="continual"))
        return model, TaskPlan(train_section, constraint=lambda m: projected_adapters(m, self.bases))

    def after_task(self, model, ctx):
        from fnapi.continual_learning.subspace import grow_basis, input_covariances, project_adapters
        from fnapi.models.runtime import pad_id

        project_adapters(model, self.bases)  # exact: the hooks computed this A during training
        targets = {name for name, _ in _lora_modules(model)}
        model = _merged(model)
        modules = {name: module for name, module in model.named_modules() if name in targets}
        rows = _sample_rows(ctx, "subspace", self.section.samples)
        covariances = input_covariances(model, ctx.tokenize(rows), modules, pad_token_id=pad_id(ctx.loaded.tokenizer),
                                        sink=ctx.sink, cancel=ctx.cancel,
                                        description=f"subspace: {ctx.name}'s input directions")
        before = sum(b.shape[1] for b in self.bases.values())
        for name, covariance in covariances.items():
            self.bases[name] = grow_basis(self.bases.get(name), covariance, self.section.energy)
        after = sum(b.shape[1] for b in self.bases.values())
        ctx.sink.emit(Log(message=f"subspace: {ctx.name} adds {after - before:,} directions over {len(covariances)} "
                                  f"layers ({after:,} protected)", stage="continual"))
        return model

    def tensors(self):
        return dict(self.bases)

    def restore_tensors(self, tensors):
        self.bases = dict(tensors)


class MaskedStrategy(Strategy):
    """One mask, from a template built (or loaded) once, on every task; or, with ``disjoint``, one share
    of its rows per task, so a later task never retrains the rows an earlier one learnt in."""

    section: Masked

    def __init__(self, section: Masked, recipe: ContinualRecipe) -> None:
        super().__init__(section, recipe)
        self.mask: NeuronMask | None = None

    def before_task(self, model, ctx, train_section):
        from fnapi.masking import from_section
        from fnapi.networks.template import Template

        if self.mask is None:
            section = self.section.template
            if section.path:
                template = Template.load(section.path)
            else:
                template = _task_template(model, ctx, section, seed=ctx.seed, data=list(section.data) or None)
            self.mask = from_section(template, self.section.mask, seed=ctx.seed)
            ctx.sink.emit(Log(message=f"masked: {self.mask.describe()}", stage="continual"))
        if not self.section.disjoint:
            return model, TaskPlan(train_section, neuron_mask=self.mask)
        share = task_share(self.mask, ctx.index, len(self.recipe.tasks), seed=ctx.seed)
        ctx.sink.emit(Log(message=f"masked: {ctx.name} trains its own share, {share.describe()}", stage="continual"))
        return model, TaskPlan(train_section, neuron_mask=share)

    def after_task(self, model, ctx):
        return _merged(model)

    def memory(self):
        return {"mask": self.mask.to_dict()} if self.mask is not None else {}

    def restore(self, memory):
        from fnapi.masking import NeuronMask

        self.mask = NeuronMask.from_dict(memory["mask"]) if "mask" in memory else None


def task_share(mask: NeuronMask, index: int, tasks: int, *, seed: int) -> NeuronMask:
    """Task ``index``'s share of ``mask``: each layer's channels shuffled with ``seed`` and cut into
    ``tasks`` shares of equal size (the first ones one larger when it does not divide), so the shares
    of one sequence are disjoint and together are the mask. The same seed gives the same shares, so a
    resumed sequence trains the rows it trained before."""
    import torch

    shares = {}
    for layer, channels in mask.neurons.items():
        generator = torch.Generator().manual_seed(seed * 100_003 + layer)
        order = [channels[i] for i in torch.randperm(len(channels), generator=generator).tolist()]
        shares[layer] = order[index::tasks]
    return dataclasses.replace(mask, neurons=shares,
                               source={**mask.source, "share": f"{index + 1} of {tasks}"})


STRATEGIES: dict[type, type[Strategy]] = {
    SequentialLora: Strategy, Replay: ReplayStrategy, Ewc: EwcStrategy, Lwf: LwfStrategy, OLora: OLoraStrategy,
    CumulativeProtect: ProtectStrategy, SubspaceProtect: SubspaceStrategy, Masked: MaskedStrategy}


def make_strategy(section: Any, recipe: ContinualRecipe) -> Strategy:
    """The strategy of one ``methods`` entry of a continual recipe."""
    return STRATEGIES[type(section)](section, recipe)


# ---- shared pieces ---------------------------------------------------------------------------------------

def _merged(model: Any) -> Any:
    """The model with its LoRA adapter merged into the weights (a plain model), or the model itself."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def _lora_modules(model: Any) -> list[tuple[str, Any]]:
    """``(module name without the peft prefix, LoRA layer)`` for every layer carrying an adapter."""
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and module.lora_A:
            found.append((name.removeprefix("base_model.model."), module))
    return found


def _sample_rows(ctx: TaskContext, method: str, n: int) -> list[Conversation]:
    """``n`` of the task's training rows (all when fewer), drawn the same way for the same method, seed and task."""
    rows = list(ctx.train_rows)
    return random.Random(f"{method}-{ctx.seed}-{ctx.name}").sample(rows, min(n, len(rows)))


def _adapter_a_layer(module: Any) -> Any:
    """The ``A`` layer (a Linear, rank x input) of a LoRA layer's active adapter."""
    active = module.active_adapter
    return module.lora_A[active[0] if isinstance(active, list) else active]


def _adapter_a(module: Any) -> torch.Tensor:
    """The ``A`` matrix (rank x input) of a LoRA layer's active adapter."""
    return _adapter_a_layer(module).weight


def _task_template(model: Any, ctx: TaskContext, section: Any, *, seed: int, data: list[str] | None = None) -> Any:
    """A template of ``model`` built on ``data``, by default on the task's own training rows (written to
    a temporary file, so labelled or generated tasks are read as the model was trained on them)."""
    from fnapi.networks.build import build_template

    loaded = dataclasses.replace(ctx.loaded, model=model)
    if data:
        return build_template(loaded, section, data, seed=seed, sink=ctx.sink, cancel=ctx.cancel)
    with tempfile.TemporaryDirectory(prefix="fnapi-task-") as folder:
        path = Path(folder) / f"{ctx.name}.jsonl"
        rows = ctx.train_rows[: section.samples]
        # Plain text (each turn on its own line): a chat template's preamble would fill a short
        # max_length before the task's own tokens.
        path.write_text("".join(json.dumps({"text": row.text if row.is_text else
                                            "\n".join(turn["content"] for turn in row.messages)}) + "\n"
                                for row in rows))
        return build_template(loaded, section, [str(path)], seed=seed, sink=ctx.sink, cancel=ctx.cancel)


def _save_weights(model: Any, folder: Path) -> None:
    """An adapter on unchanged base weights is saved alone; a plain model (merged or fully trained) whole."""
    from peft import PeftModel
    from safetensors.torch import save_model

    if isinstance(model, PeftModel):
        model.save_pretrained(str(folder / ADAPTER_DIR))
    else:
        save_model(model, str(folder / WEIGHTS_FILE))


def _load_weights(folder: Path, loaded: LoadedModel) -> Any:
    from peft import PeftModel
    from safetensors.torch import load_model

    if (folder / ADAPTER_DIR).is_dir():
        return PeftModel.from_pretrained(loaded.model, str(folder / ADAPTER_DIR), is_trainable=True)
    load_model(loaded.model, str(folder / WEIGHTS_FILE))
    return loaded.model
