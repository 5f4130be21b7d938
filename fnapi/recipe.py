"""Recipes: one YAML file that describes a whole run and replays it headless.

A recipe is a tree of frozen, strict pydantic models. Unknown keys and wrong types are errors that
name the YAML path (``train.learning_rate: ...``) and suggest the closest known key. Saved recipes
hold no secrets and are written atomically.

>>> r = Recipe.from_yaml_text("version: 1\\nname: demo\\ntrain: {learning_rate: 1e-4}")
>>> r.train.learning_rate
0.0001
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fnapi.errors import Problem, RecipeError
from fnapi.migrations import Migrations
from fnapi.paths import atomic_write_text
from fnapi.redaction import holds_secret
from fnapi.sites import SITE_NAMES
from fnapi.trackers import unknown_tracker

RECIPE_VERSION = 1


def _recipe_version(data: Any) -> Any:
    # A file without `version` predates versioning (version 0); what is not a mapping is left for
    # the schema to refuse.
    return data.get("version", 0) if isinstance(data, dict) else RECIPE_VERSION


#: Every older recipe version and the step that brings it to the next (see fnapi.migrations).
RECIPE_MIGRATIONS = Migrations(
    "recipe", current=RECIPE_VERSION, field="version", read_version=_recipe_version, error=RecipeError,
    is_newer=lambda version: type(version) is int and version > RECIPE_VERSION)


@RECIPE_MIGRATIONS.step(0, 1)
def _from_version_0(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Version 0 (no ``version`` key) spelled ``train.lr`` and ``train.max_steps``."""
    train = data.get("train")
    if isinstance(train, dict):
        renamed = {"lr": "learning_rate", "max_steps": "steps"}
        train = {(renamed[key] if key in renamed and renamed[key] not in train else key): value
                 for key, value in train.items()}
        data = {**data, "train": train}
    return {**data, "version": 1}

MaskPreset = Literal["none", "lesion", "preserve", "protect", "target"]
Ablate = Literal["none", "selected", "unselected"]
TrainWhich = Literal["all", "selected", "unselected"]
SiteName = Literal[SITE_NAMES]  # the names fnapi.sites defines

#: Named presets and the two switches they set. ``none`` leaves the model unmasked.
MASK_PRESETS: dict[str, tuple[str, str]] = {
    "none": ("none", "all"),
    "lesion": ("selected", "all"),  # switch the networks off in the forward pass; everything trains
    "preserve": ("unselected", "selected"),  # keep only the networks in the forward pass; only they train
    "protect": ("none", "unselected"),  # the networks' weights stay frozen; everything else trains
    "target": ("none", "selected"),  # only the networks' weights train
}


class Section(BaseModel):
    """Base of every recipe section: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True, allow_inf_nan=False)


class ModelSection(Section):
    """Which model to load and how."""

    name: str = Field("smollm2-135m-instruct", description="embedded name, hub id, local folder or .gguf file")
    revision: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    trust_remote_code: bool = False


class DataSection(Section):
    """The training data and how to read it."""

    path: str = Field("builtin:skill", description="file, folder, hub id, or builtin:NAME")
    format: str = Field("auto", description="auto or a format name (alpaca, messages, sharegpt, ...)")
    fields: dict[str, str] = Field(default_factory=dict, description="source field -> role override")
    system_prompt: str | None = None
    chat_template: Literal["auto", "model", "chatml", "alpaca", "plain"] = "auto"
    max_length: int = Field(256, gt=0)
    max_samples: int | None = Field(None, gt=0)
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    validation_path: str | None = None


class SelectionSection(Section):
    """How neurons are chosen from a component's weights."""

    rule: Literal["percentile", "zscore", "topk"] = "percentile"
    value: float = Field(98.0, description="percentile (0-100), z threshold, or k per layer")
    sign: Literal["abs", "positive", "negative"] = "abs"

    @model_validator(mode="after")
    def _value_fits_rule(self) -> SelectionSection:
        problem = selection_problem(self.rule, self.value, self.sign)
        if problem:
            raise ValueError(problem)
        return self


def selection_problem(rule: str, value: float, sign: str) -> str | None:
    """Why a neuron-selection rule, value and sign cannot work together (None: they can)."""
    if sign not in ("abs", "positive", "negative"):
        return f"selection.sign {sign!r} is unknown; use abs, positive or negative"
    if rule == "percentile":
        if not 0 < value < 100:
            return f"selection.value {value} is not a percentile; use a number between 0 and 100 (e.g. 98)"
    elif rule == "zscore":
        if value <= 0:
            return f"selection.value {value} must be a positive z threshold (e.g. 3) for rule zscore"
    elif rule == "topk":
        if value < 1 or int(value) != value:
            return f"selection.value {value} must be a whole number of neurons per layer for rule topk"
    else:
        return f"selection.rule {rule!r} is unknown; use percentile, zscore or topk"
    return None


class TemplateSection(Section):
    """Load a template, or build one from data."""

    path: str | None = Field(None, description="load this template instead of building one")
    allow_other_model: bool = Field(False, description="apply a loaded template that was made for another model "
                                                       "(same shapes); refused otherwise")
    method: Literal["ica", "loki", "attribution"] = Field(
        "ica", description="ica: networks of neurons that fire together; loki: the rows LoKI's own rule trains "
                           "(its attribution over multiple-choice items, layer-balanced); attribution: the rows "
                           "of lowest absolute attribution to answer tokens (fnapi's own rule, not LoKI's)")
    quota: float | None = Field(None, gt=0, le=100, description="loki and attribution: the share of each layer's "
                                                               "rows selected, in percent (default: from selection)")
    select: list[Literal["most", "least"]] = Field(
        default_factory=lambda: ["most", "least"], min_length=1,
        description="attribution: the components to make, in id order (most: the rows that matter most, least: "
                    "those that matter least); [least] makes one component, so a mask can say components: all")
    mode: Literal["global", "per_layer"] = "global"
    site: SiteName = "mlp.out"
    layers: str | None = Field(None, description='layer filter such as "0:4,9:" (default: all)')

    @field_validator("layers")
    @classmethod
    def _layer_syntax(cls, value: str | None) -> str | None:
        return _check_layer_syntax(value)
    data: list[str] = Field(default_factory=list, description="datasets to capture from (default: data.path)")
    samples: int = Field(64, gt=0, description="sequences per dataset")
    max_length: int = Field(128, gt=0)
    components: int = Field(10, gt=0)
    runs: int = Field(10, gt=0, description="ICA runs for the stability consensus")
    selection: SelectionSection = Field(default_factory=SelectionSection)
    out: str | None = None


class MaskSection(Section):
    """Which networks to use and what to do with them (see MASK_PRESETS)."""

    preset: MaskPreset = "none"
    components: list[int] | Literal["stable", "all"] = Field(
        default_factory=list, description="component ids, 'stable' (the top_stable most stable) or 'all'")
    top_stable: int = Field(3, gt=0, description='how many components "stable" means')
    layers: str | None = None

    @field_validator("layers")
    @classmethod
    def _layer_syntax(cls, value: str | None) -> str | None:
        return _check_layer_syntax(value)
    ablate: Ablate | None = None
    train: TrainWhich | None = None
    unreached: Literal["keep", "ablate"] = Field(
        "keep", description="preserve (ablate unselected): a layer no selected network reaches is kept as it is, "
                            "or (ablate) silenced whole as before")
    control: Literal["none", "random"] = Field(
        "none", description="random: the same number of neurons per layer, drawn at random with the recipe's "
                            "seed, in place of the networks (the control row of a comparison)")

    @model_validator(mode="after")
    def _needs_components(self) -> MaskSection:
        ablate, train = self.switches()
        if (ablate != "none" or train != "all") and self.components == []:
            raise ValueError(f"preset {self.preset!r} needs components (a list of ids, 'stable' or 'all')")
        return self

    def switches(self) -> tuple[str, str]:
        """The (ablate, train) pair after applying the preset and explicit overrides."""
        ablate, train = MASK_PRESETS[self.preset]
        return (self.ablate or ablate, self.train or train)


class LoraSection(Section):
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto"] = "auto"


def _known_tracker(name: str) -> str:
    problem = unknown_tracker(name)
    if problem:
        raise ValueError(problem)
    return name


TrackerName = Annotated[str, AfterValidator(_known_tracker)]  # a name fnapi.trackers defines


class ReplaySection(Section):
    """Self-distillation replay: before training, the base model answers general prompts (greedy);
    its replies are mixed into the training data, so the model keeps answering in its own voice."""

    prompts: str = Field("builtin:chat-train", description="general prompts: builtin:chat-train or a file (one a "
                                                            "line, or rows with a 'prompt' field); none may be a "
                                                            "probe question")
    samples: int | None = Field(None, gt=0, description="prompts used (null: all)")
    ratio: float = Field(0.25, gt=0, le=4, description="replayed rows per training row")
    max_new_tokens: int = Field(48, gt=0, description="the longest base reply generated")


class KlToBaseSection(Section):
    """A KL-to-base penalty on general prompts: before training the base model answers them (greedy,
    as for replay) and its next-token distributions on its replies are kept; every training step adds
    ``strength`` times the KL from them to the model's, on ``batch_size`` of those replies."""

    prompts: str = Field("builtin:chat-train", description="general prompts: builtin:chat-train or a file; none "
                                                            "may be a probe question")
    samples: int | None = Field(64, gt=0, description="prompts used (null: all)")
    max_new_tokens: int = Field(32, gt=0, description="the longest base reply generated")
    strength: float = Field(1.0, gt=0, description="weight of the KL term in the training loss")
    batch_size: int = Field(4, gt=0, description="general replies in each step's KL term")


class TrainSection(Section):
    """Fine-tuning hyperparameters."""

    method: Literal["lora", "full", "qlora"] = "lora"
    steps: int | None = Field(100, gt=0, description="optimizer steps (takes precedence over epochs)")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0)
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, gt=0)
    validation_samples: int | None = Field(
        64, gt=0, description="validation conversations whose loss is measured after training (null: all); a "
                              "few batches, so the pass costs a small share of the training time")
    gradient_checkpointing: bool = False
    lora: LoraSection = Field(default_factory=LoraSection)
    task_target: float | None = Field(
        None, gt=0, le=1, description="stop once the validation task score reaches this (checked every "
                                      "task_check_every steps); train.steps is then the cap")
    task_check_every: int = Field(10, gt=0)
    task_check_samples: int = Field(40, gt=0, description="validation conversations scored at each check")
    replay: ReplaySection | None = Field(None, description="mix the base model's own replies to general prompts "
                                                           "into the training data (self-distillation replay)")
    kl_to_base: KlToBaseSection | None = Field(None, description="penalise the KL from the base model on its own "
                                                                 "replies to general prompts, every step")
    report_to: list[TrackerName] = Field(
        default_factory=list, description="experiment trackers the run logs to: tensorboard, mlflow, wandb (they "
                                          "write inside the run folder unless their environment says otherwise)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # `report_to: tensorboard` and `report_to: null` mean what they say
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} is listed more than once")
        return value


class LmEvalSection(Section):
    """Standard benchmarks scored by lm-evaluation-harness before and after training (needs the
    ``eval`` extra: ``pip install 'fntui[eval]'``)."""

    tasks: list[str] = Field(min_length=1, description="lm-eval task names (built-in, or local ones in include)")
    limit: int | None = Field(None, gt=0, description="documents scored per task (null: all)")
    include: str | None = Field(None, description="folder of local lm-eval task YAMLs")
    batch_size: int = Field(8, gt=0)

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tasks")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("a task name is empty")
        return value


class GenerativeSection(Section):
    """The measures of forgetting a user sees: the probe questions asked open-ended, and replies to
    general prompts (chat drift and the format-leak flag)."""

    enabled: bool = True
    samples: int | None = Field(100, gt=0, description="the first probe items of each set asked open-ended "
                                                         "(null: all)")
    max_new_tokens: int = Field(32, gt=0, description="the longest reply generated")
    prompts: str = Field("builtin:chat", description="general prompts: builtin:chat, a .txt file (one a line) or "
                                                      "rows with a 'prompt' field")
    chat_prompts: int = Field(24, ge=0, description="general prompts asked (0: no chat drift or leak flag)")


class EvalSection(Section):
    """What the forgetting report measures."""

    enabled: bool = True
    task_samples: int = Field(50, gt=0)
    probes: list[str] = Field(default_factory=lambda: ["builtin:probes"],
                              description="probe sets: builtin:probes or multiple-choice files (generic, ARC, "
                                          "MMLU CSV, HellaSwag layouts); the first is the report's main score")
    # 300 of the built-in set's 865 items (any prefix mixes all its categories): scoring all of them
    # before and after would take about a third of the quickstart's time, 300 keeps it near a fifth.
    probe_samples: int | None = Field(300, gt=0, description="items scored per probe set (null: all)")
    text: str | None = Field("builtin:text", description="held-out general text for NLL and KL to the base: "
                                                         "builtin:text or a .txt/.jsonl/.json/.csv/.parquet file")
    kl_prompts: int = Field(32, ge=0, description="paragraphs of eval.text scored (0: none)")
    max_new_tokens: int = Field(24, gt=0)
    lm_eval: LmEvalSection | None = Field(None, description="lm-eval benchmarks scored before and after training")
    generative: GenerativeSection = Field(default_factory=GenerativeSection,
                                          description="open-ended answers, chat drift and the format-leak flag")

    @field_validator("probes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # `probes: builtin:probes` and `probes: null` read as they always did
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


#: SLURM wall time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")


class SlurmSection(Section):
    """Defaults for ``fnapi slurm`` (its flags override them). Scheduling only: where and how long
    a job runs does not change its result, so these are not part of the recipe's fingerprint."""

    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, ge=0, description="GPUs per node, one process each (0: CPU processes)")
    processes_per_node: int | None = Field(None, gt=0, description="default: gpus_per_node, or 1 without GPUs")
    cpus_per_task: int = Field(8, gt=0, description="CPU cores per node for the job's processes")
    mem: str | None = Field(None, description='memory per node, e.g. "64G" (default: the partition\'s)')
    time: str | None = Field(None, description='wall-time limit, e.g. "04:00:00" (required)')
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    env: str | None = Field(None, description="shell line that activates the environment "
                                              "(default: the environment that writes the script)")
    log_dir: str = Field("slurm_logs", description="where SLURM writes the job's output and error logs")
    master_port: int | None = Field(None, ge=1024, le=65535, description="rendezvous port (default: from the job id)")

    @field_validator("time", mode="before")
    @classmethod
    def _minutes(cls, value: Any) -> Any:
        # `time: 90` means 90 minutes to SLURM
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        if value is not None and not SLURM_TIME.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a SLURM time; use HH:MM:SS, D-HH:MM:SS or minutes")
        return value.strip() if value is not None else None

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+[KMGT]?", value.strip()):
            raise ValueError(f"{value!r} is not a SLURM memory size; use forms like 64G or 500M")
        return value.strip() if value is not None else None


class DistributedSection(Section):
    """Running on several processes or machines (see ``fnapi slurm`` and the README's cluster notes)."""

    accelerate_config: str | None = Field(
        None, description="accelerate config file (FSDP or DeepSpeed); plain DDP needs none")
    slurm: SlurmSection = Field(default_factory=SlurmSection)


class OutputSection(Section):
    dir: str = Field("runs/{name}", description="run directory; {name} is the recipe name")
    merge_lora: bool = False
    bake_lesion: bool = False
    save_model: bool = True


class Recipe(Section):
    """A whole run. Sections default to a small quickstart on the embedded model."""

    version: int = RECIPE_VERSION
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the range numpy and torch accept
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    template: TemplateSection | None = None
    mask: MaskSection = Field(default_factory=MaskSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    distributed: DistributedSection | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names the run folder)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any, info: ValidationInfo) -> Any:
        # Older versions load through the one table; from_dict passes the file name for its errors.
        return RECIPE_MIGRATIONS.upgrade(data, (info.context or {}).get("source", "<recipe>"))

    @model_validator(mode="after")
    def _no_secrets(self) -> Recipe:
        # Recipes are saved exactly, so a token must never get into one: tokens come from HF_TOKEN,
        # a .env file or `fnapi auth login`, never from a recipe field.
        for where, value in _strings(self.to_dict()):
            if holds_secret(value):
                raise ValueError(f"{where} holds what looks like a Hugging Face token; recipes are saved and "
                                 "shared, so give the token through HF_TOKEN or `fnapi auth login` instead")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.mask.switches() != ("none", "all") and self.template is None:
            raise ValueError("mask uses components, so the recipe needs a template section (path or build settings)")
        return self

    def evaluation_files(self) -> list[tuple[str, str]]:
        """``(yaml path, value)`` of every evaluation source that names a local file (not ``builtin:``),
        so ``fnapi validate`` can check they exist before any weights load."""
        sources = [(f"eval.probes[{i}]", p) for i, p in enumerate(self.eval.probes)]
        if self.eval.text:
            sources.append(("eval.text", self.eval.text))
        return [(where, value) for where, value in sources if not value.startswith("builtin:")]

    # ---- IO -------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe file. Errors name the file and the YAML path."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"recipe file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe {path}: {exc}") from None
        return cls.from_yaml_text(text, source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            data = yaml.load(text, Loader=_RecipeLoader)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
        if data is None:
            raise RecipeError(f"{source}: the recipe is empty",
                              "write at least `version: 1` and `name: ...`, or start from `fnapi new` or recipes/")
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of sections, got {type(data).__name__}")
        if data.get("kind") == "continual":
            raise RecipeError(f"{source} is a continual recipe (kind: continual), not a single run",
                              f"run it with `fnapi continual {source}`")
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<recipe>") -> Recipe:
        try:
            return cls.model_validate(data, context={"source": source})
        except ValidationError as exc:
            raise RecipeError.invalid(source, validation_problems(exc, cls)) from None

    def to_dict(self, exclude_defaults: bool = False) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_defaults=exclude_defaults)
        data["version"] = self.version
        if self.distributed is None:  # recipes that never scale out read as they always did
            data.pop("distributed", None)
        if self.eval.lm_eval is None:  # and so do recipes without lm-eval benchmarks (same fingerprint)
            data["eval"].pop("lm_eval", None)
        for key in ("replay", "kl_to_base"):  # and without the general-data methods
            if data["train"].get(key) is None:
                data["train"].pop(key, None)
        return data

    def to_yaml_text(self) -> str:
        """YAML text, exact: reloading it gives an equal recipe (validation keeps secrets out)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the recipe atomically."""
        return atomic_write_text(path, self.to_yaml_text())

    def fingerprint(self) -> str:
        """Short hash of the recipe's meaning (stable across formatting and scheduling settings)."""
        data = self.to_dict()
        data["output"].pop("dir", None)  # where a run goes does not change what it does
        data["train"].pop("report_to", None)  # nor where it is tracked
        scaling = data.pop("distributed", None) or {}
        if scaling.get("accelerate_config"):  # FSDP/DeepSpeed change the run; SLURM settings do not
            data["distributed"] = {"accelerate_config": scaling["accelerate_config"]}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, source: str = "<recipe>", /, **changes: Any) -> Recipe:
        """A copy with dotted-path changes, validated: ``recipe.replace(**{"train.steps": 10})``.
        ``source`` names where the changes come from in errors (``"run.yaml with --set"``)."""
        return Recipe.from_dict(_changed(self.to_dict(), changes), source)


def _changed(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``data`` with dotted-path ``changes`` applied (sections made as needed)."""
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                where = ".".join(parents[:depth + 1])
                raise RecipeError(f"cannot set {dotted}: {where} is a value ({node!r}), not a section",
                                  f"set {where} itself, e.g. {where}=...")
        node[leaf] = value
    return data


def _strings(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, text)`` of every string inside nested dicts and lists."""
    if isinstance(data, str):
        yield where, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, f"{where}[{i}]")


# ---- YAML details -----------------------------------------------------------------------------

class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 would read it as a string)."""


_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# YAML 1.1 also reads 4:00:00 as the base-60 integer 14400; a SLURM time limit must stay text.
_INT_PATTERN = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_RecipeLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_PATTERN, list("-+0123456789"))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (to suggest keys)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current


def _dotted(loc: tuple) -> str:
    """``("eval", "probes", 0)`` -> ``eval.probes[0]``: keys joined by dots, list positions in brackets."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


_LOCATED = re.compile(r"([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): (.+)", re.S)


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One :class:`Problem` per pydantic error: the YAML path, and the message with did-you-mean."""
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        # pydantic appends the union member's type name to the loc; drop it for readability
        loc = tuple(p for p in loc if p not in ("list[int]", "str", "int", "float", "bool", "dict[str,str]", "[key]"))
        # a discriminated union puts the member's tag after the list position: methods[0].ewc.strength
        member = next(((_CONTINUAL_CLASSES[p], loc[i + 1:]) for i, p in enumerate(loc)
                       if i and isinstance(loc[i - 1], int) and p in _CONTINUAL_CLASSES), None)
        loc = tuple(p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in _CONTINUAL_CLASSES))
        path = _dotted(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(member[0], member[1][:-1]) if member is not None else _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else (f"; known keys: {', '.join(known)}" if known else "")
            problems.append(Problem(path, f"unknown key{hint}"))
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        located = _LOCATED.match(message) if not loc else None
        if located:  # a check across fields names the field it found wrong: `tasks[1].metric: ...`
            problems.append(Problem(located.group(1), located.group(2)))
            continue
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        problems.append(Problem(path, f"{message}{shown}"))
    return list(dict.fromkeys(problems))


def _check_layer_syntax(layer_filter: str | None) -> str | None:
    """A layer filter's form, checked before any model is known (the range is checked at load)."""
    try:
        parse_layers(layer_filter, _ANY_DEPTH)
    except RecipeError as exc:
        raise ValueError(exc.message) from None
    return layer_filter


_ANY_DEPTH = 1 << 20  # deeper than any model: only the filter's form can fail against it


def parse_layers(layer_filter: str | None, num_layers: int) -> list[int]:
    """Expand a layer filter such as ``"0:4,9:"`` or ``"1,3,-1"`` into sorted layer indices.

    >>> parse_layers("0:2,5:", 7)
    [0, 1, 5, 6]
    """
    if layer_filter is None or str(layer_filter).strip() in ("", "all", ":"):
        return list(range(num_layers))
    chosen: set[int] = set()
    for part in str(layer_filter).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                start_s, stop_s = part.split(":", 1)
                start = int(start_s) if start_s.strip() else 0
                stop = int(stop_s) if stop_s.strip() else num_layers
                start, stop = (start + num_layers if start < 0 else start), (stop + num_layers if stop < 0 else stop)
                chosen.update(range(max(start, 0), min(stop, num_layers)))
            else:
                index = int(part)
                index = index + num_layers if index < 0 else index
                if not 0 <= index < num_layers:
                    raise RecipeError(f"layer {part} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")
                chosen.add(index)
        except ValueError:
            raise RecipeError(f"layer filter {layer_filter!r}: cannot read {part!r}; use forms like '0:4,9:' or '1,3,-1'") from None
    if not chosen:
        raise RecipeError(f"layer filter {layer_filter!r} selects no layer of a {num_layers}-layer model")
    return sorted(chosen)


# ---- continual learning -----------------------------------------------------------------------

#: How a task's answers are scored. Every task of one continual recipe uses the same metric: the
#: accuracy matrix averages scores across tasks, which is meaningless across scales.
TaskMetric = Literal["exact_match", "contains"]


class ContinualTask(Section):
    """One task of a sequence: its data, how it is scored and how long it trains.

    A task whose rows hold an integer class label (most hub classification sets) sets ``labels``: the
    class names in label order; each row then becomes a prompt (``instruction`` and the row's text
    fields) answered by its class name (see :mod:`fnapi.data.labels`).
    """

    name: str = Field(description="short name used in orders and reports")
    data: DataSection = Field(description="the task's data (a string is its path: builtin:NAME, a file or hub id; "
                                          "org/name:config selects a hub config)")
    metric: TaskMetric = Field("exact_match", description="exact_match: the whole answer; contains: the reference "
                                                          "appears in the answer (both after normalising)")
    steps: int | None = Field(None, gt=0, description="optimizer steps on this task (default: train.steps)")
    labels: list[str] | None = Field(None, description="class names, label 0 first: rows with an integer label "
                                                       "become prompts answered by the class name")
    instruction: str | None = Field(None, description="what every prompt opens with (with labels; default: "
                                                      "'Answer with one of: <labels>.')")
    label_field: str = Field("label", min_length=1, description="the field holding the integer label (with labels)")
    text_fields: list[str] | None = Field(None, min_length=1, description="the fields a prompt shows, in order "
                                                                          "(with labels; default: the row's text "
                                                                          "fields)")
    shuffle: bool = Field(False, description="shuffle the rows (seeded) before max_samples takes its share: a fair "
                                             "sample of a large sorted source")

    @field_validator("data", mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names folders and report columns)")
        return value

    @field_validator("labels")
    @classmethod
    def _class_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if any(not name.strip() for name in value):
            raise ValueError("every class name must be a non-empty string")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repr(n) for n in repeated)} is listed more than once; "
                             "an answer must name one class")
        if len(value) < 2:
            raise ValueError("at least two class names are needed (label 0 first)")
        return value

    @model_validator(mode="after")
    def _labels_consistent(self) -> ContinualTask:
        if self.labels is None:
            # Compared with the defaults, not with what was written: a recipe dumped and read back
            # (--set, a saved copy) writes every field, defaults included.
            stray = [key for key in ("instruction", "label_field", "text_fields")
                     if getattr(self, key) != type(self).model_fields[key].default]
            if stray:
                raise ValueError(f"{', '.join(stray)} only applies with labels (the class names)")
            return self
        if self.data.path.startswith("builtin:"):
            raise ValueError(f"labels: {self.data.path} holds conversations, not rows with integer class labels")
        if self.data.format != "auto" or self.data.fields:
            raise ValueError("labels build each prompt and answer themselves: leave data.format and data.fields "
                             "unset (name the prompt's fields with text_fields)")
        return self


class _ContinualMethod(Section):
    """What every continual method has: a name for its rows and its own training settings."""

    name: str | None = Field(None, description="row name in the report (default: the method)")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings of this method only, over the "
                                                                     "recipe's train section (e.g. learning_rate)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names folders and report rows)")
        return value

    @property
    def label(self) -> str:
        return self.name or self.method  # type: ignore[attr-defined]


class SequentialLora(_ContinualMethod):
    """One LoRA adapter trained on each task in turn (the reference every method is compared with)."""

    method: Literal["sequential_lora"] = "sequential_lora"


class Replay(_ContinualMethod):
    """Sequential LoRA with a small buffer of every earlier task's training rows mixed in."""

    method: Literal["replay"] = "replay"
    per_task: int = Field(32, gt=0, description="training conversations kept from each earlier task")


class Ewc(_ContinualMethod):
    """Sequential LoRA with elastic weight consolidation: a diagonal Fisher estimated after each task
    pulls the trainable weights back towards their values after it."""

    method: Literal["ewc"] = "ewc"
    strength: float = Field(5000.0, gt=0, description="the penalty weight (lambda)")
    fisher_samples: int = Field(64, gt=0, description="training conversations the Fisher is estimated on")


class Lwf(_ContinualMethod):
    """Sequential LoRA with learning without forgetting: the model as it was before the task is
    distilled into it on the new task's inputs."""

    method: Literal["lwf"] = "lwf"
    strength: float = Field(1.0, gt=0, description="weight of the distillation loss")
    temperature: float = Field(2.0, gt=0)


class OLora(_ContinualMethod):
    """A new LoRA adapter per task, the earlier ones frozen (merged), with a penalty on the overlap of
    the new adapter's subspace with theirs."""

    method: Literal["olora"] = "olora"
    strength: float = Field(0.5, gt=0, description="weight of the orthogonality penalty (lambda_1)")
    l2: float = Field(0.0, ge=0, description="weight of the L2 penalty on the new adapter (lambda_2)")


class CumulativeProtect(_ContinualMethod):
    """After each task, find that task's networks and protect the networks of every task learnt so far:
    a new LoRA adapter per task trains everything else and is merged after its task, so protected
    weights stay bit-identical."""

    method: Literal["protect"] = "protect"
    template: TemplateSection = Field(default_factory=lambda: TemplateSection(site="mlp.hidden", samples=32,
                                                                              max_length=64),
                                      description="how a task's networks are found (data: the task's own)")
    top_stable: int = Field(10, gt=0, description="the most stable components of each task protected (ICA), or "
                                                  "the component of selected neurons (attribution)")


class SubspaceProtect(_ContinualMethod):
    """After each task, find the directions its inputs span at every adapted layer and keep every later
    task's update off them: a new LoRA adapter per task whose ``A`` reads nothing from the protected
    directions of any earlier task, merged after its task (a mask over activation directions rather
    than neurons)."""

    method: Literal["subspace"] = "subspace"
    energy: float = Field(0.99, gt=0, lt=1, description="share of a task's input energy (sum of x x^T over its "
                                                         "tokens) its protected subspace holds at each layer")
    samples: int = Field(32, gt=0, description="training conversations of each task the subspace is measured on")


class Masked(_ContinualMethod):
    """A single-run mask applied on every task (the best configuration of the forgetting comparison:
    attribution's least important mlp.out rows, trained at full rank)."""

    method: Literal["masked"] = "masked"
    template: TemplateSection
    mask: MaskSection
    disjoint: bool = Field(
        False, description="give every task its own share of the mask's rows (each layer's rows split in equal "
                           "shares, drawn with the seed), so no row trains for two tasks and a task's rows stay "
                           "as it left them; the template's quota is then the whole sequence's budget")

    @model_validator(mode="after")
    def _disjoint_trains_the_selection(self) -> Masked:
        if self.disjoint and self.mask.switches()[1] != "selected":
            raise ValueError("disjoint splits the rows that train among the tasks: it needs a mask that trains "
                             "the selected rows (preset target, or train: selected)")
        return self


CONTINUAL_METHODS = ("sequential_lora", "replay", "ewc", "lwf", "olora", "protect", "subspace", "masked")
_CONTINUAL_CLASSES: dict[str, type[BaseModel]] = {
    "sequential_lora": SequentialLora, "replay": Replay, "ewc": Ewc, "lwf": Lwf, "olora": OLora,
    "protect": CumulativeProtect, "subspace": SubspaceProtect, "masked": Masked}


def _method_entry(entry: Any) -> Any:
    # `- ewc` is `- {method: ewc}`; an unknown method is named with the known ones
    if isinstance(entry, str):
        entry = {"method": entry}
    if isinstance(entry, dict) and isinstance(entry.get("method"), str) and entry["method"] not in CONTINUAL_METHODS:
        guess = difflib.get_close_matches(entry["method"], CONTINUAL_METHODS, n=1)
        raise ValueError(f"unknown method {entry['method']!r}" + (f"; did you mean {guess[0]!r}?" if guess else "")
                         + f" (known: {', '.join(CONTINUAL_METHODS)})")
    return entry


ContinualMethod = Annotated[SequentialLora | Replay | Ewc | Lwf | OLora | CumulativeProtect | SubspaceProtect
                            | Masked,
                            Field(discriminator="method"), BeforeValidator(_method_entry)]


class ContinualEval(Section):
    """What is scored after every task."""

    task_samples: int = Field(30, gt=0, description="test conversations of each task scored after every task")
    probes: list[str] = Field(default_factory=lambda: ["builtin:probes"], description="general probes (retention)")
    probe_samples: int | None = Field(200, gt=0)
    max_new_tokens: int = Field(24, gt=0)

    @field_validator("probes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


class ContinualOutput(Section):
    dir: str = Field("runs/{name}", description="output folder; {name} is the recipe name")


class ContinualRecipe(Section):
    """A continual-learning experiment: methods learn the tasks in each order, once per seed.

    Every (method, order, seed) is one independent sequence; every task starts a fresh optimizer and
    learning-rate schedule. ``fnapi continual RECIPE --output DIR`` runs them all.
    """

    version: int = RECIPE_VERSION
    kind: Literal["continual"]
    name: str = "continual"
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    model: ModelSection = Field(default_factory=ModelSection)
    tasks: list[ContinualTask] = Field(min_length=1, description="the tasks, each named once")
    orders: list[list[str]] = Field(default_factory=list, description="task orders (default: the tasks as listed)")
    methods: list[ContinualMethod] = Field(min_length=1)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: ContinualEval = Field(default_factory=ContinualEval)
    single_task: bool = Field(True, description="also train each task alone from the base model (for FWT)")
    output: ContinualOutput = Field(default_factory=lambda: ContinualOutput())
    slurm: SlurmSection = Field(default_factory=SlurmSection, description="defaults for `fnapi slurm` (an array "
                                                                          "job, one element per sequence)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return Recipe._safe_name(value)


    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any, info: ValidationInfo) -> Any:
        return RECIPE_MIGRATIONS.upgrade(data, (info.context or {}).get("source", "<recipe>"))

    @model_validator(mode="after")
    def _consistent(self) -> ContinualRecipe:
        names = [task.name for task in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tasks: {', '.join(twice)} is named more than once")
        metrics = {task.metric for task in self.tasks}
        if len(metrics) > 1:
            odd = next(i for i, task in enumerate(self.tasks) if task.metric != self.tasks[0].metric)
            raise ValueError(f"tasks[{odd}].metric: {self.tasks[odd].metric!r} differs from tasks[0].metric "
                             f"{self.tasks[0].metric!r}; the accuracy matrix averages across tasks, so they share "
                             "one metric")
        for i, order in enumerate(self.orders):
            if sorted(order) != sorted(names):
                missing = [n for n in names if n not in order]
                unknown = [n for n in order if n not in names]
                repeated = sorted({n for n in order if order.count(n) > 1})
                what = "; ".join(part for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                    f"repeated {', '.join(repeated)}" if repeated else "") if part)
                raise ValueError(f"orders[{i}]: must list every task once ({what}); tasks: {', '.join(names)}")
        labels = [method.label for method in self.methods]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"methods: {', '.join(twice)} appears more than once; give one of them a name")
        for i, method in enumerate(self.methods):
            problem = _train_problem(self.train, method.train)
            if problem:
                raise ValueError(f"methods[{i}].train.{problem}")
            if isinstance(method, SubspaceProtect) and self.train_for(method).method != "lora":
                raise ValueError(f"methods[{i}].train.method: subspace keeps a LoRA adapter's A off the protected "
                                 "directions, so it trains with method lora")
        return self

    @property
    def task_orders(self) -> list[list[str]]:
        """The orders to run (the tasks as listed when none are given)."""
        return [list(order) for order in self.orders] or [[task.name for task in self.tasks]]

    def task(self, name: str) -> ContinualTask:
        return next(task for task in self.tasks if task.name == name)

    def train_for(self, method: Any, task: ContinualTask | None = None) -> TrainSection:
        """The train section a method uses on a task: the recipe's, the method's own settings over it,
        and the task's steps."""
        data = self.train.model_dump(mode="json")
        data.update(method.train)
        if task is not None and task.steps is not None:
            data["steps"] = task.steps
        try:
            return TrainSection.model_validate(data)
        except ValidationError as exc:
            raise RecipeError.invalid("train", validation_problems(exc, TrainSection)) from None

    # ---- IO -------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> ContinualRecipe:
        recipe = load_recipe(path)
        if not isinstance(recipe, ContinualRecipe):
            raise RecipeError(f"{path} is a single-run recipe, not a continual one",
                              "run it with `fnapi run`, or add `kind: continual` with tasks and methods")
        return recipe

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<recipe>") -> ContinualRecipe:
        try:
            return cls.model_validate(data, context={"source": source})
        except ValidationError as exc:
            raise RecipeError.invalid(source, validation_problems(exc, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml_text(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def to_yaml(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_yaml_text())

    def fingerprint(self) -> str:
        """Short hash of what the experiment does (not where it is written or how it is scheduled)."""
        blob = json.dumps(self._experiment(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def _experiment(self) -> dict[str, Any]:
        """The recipe as data, without where it is written, how it is scheduled or where it is tracked."""
        data = self.to_dict()
        data.pop("output", None)
        data.pop("slurm", None)
        data["train"].pop("report_to", None)
        return data

    def output_dir(self) -> Path:
        return Path(self.output.dir.replace("{name}", self.name))

    def extends(self, earlier: ContinualRecipe) -> ContinualRecipe:
        """The union of ``earlier`` and this recipe, when their results can share one output folder:
        the same experiment except for more (or fewer) methods, seeds and orders, a method under one
        name being the same method in both. Orders are numbered by position in the folder, so one
        recipe's orders must begin with the other's (new orders go at the end). Raises
        ``ValueError`` naming what differs."""
        mine, theirs = self._experiment(), earlier._experiment()
        my_methods, their_methods = mine.pop("methods"), theirs.pop("methods")
        for data in (mine, theirs):
            del data["seeds"], data["orders"]
        differ = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
        if differ:
            raise ValueError(f"{', '.join(differ)} differ")
        shorter, longer = sorted((self.task_orders, earlier.task_orders), key=len)
        if longer[:len(shorter)] != shorter:
            raise ValueError("orders differ (orders are numbered by position: keep the earlier ones first and "
                             "add new ones at the end)")
        methods = {method.label: data for method, data in zip(earlier.methods, their_methods)}
        for method, data in zip(self.methods, my_methods):
            if methods.setdefault(method.label, data) != data:
                raise ValueError(f"method {method.label!r} differs (give the changed one another name)")
        seeds = list(earlier.seeds) + [seed for seed in self.seeds if seed not in earlier.seeds]
        orders = longer if len(longer) > 1 else earlier.to_dict()["orders"]
        return ContinualRecipe.model_validate({**earlier.to_dict(), "methods": list(methods.values()),
                                               "seeds": seeds, "orders": orders})

    def replace(self, source: str = "<recipe>", /, **changes: Any) -> ContinualRecipe:
        """A copy with dotted-path changes, validated (as :meth:`Recipe.replace`)."""
        return ContinualRecipe.from_dict(_changed(self.to_dict(), changes), source)


def _train_problem(train: TrainSection, changes: dict[str, Any]) -> str | None:
    """The first problem of a train section with ``changes`` over it, as ``field: message``."""
    try:
        TrainSection.model_validate({**train.model_dump(mode="json"), **changes})
    except ValidationError as exc:
        problem = validation_problems(exc, TrainSection)[0]
        return f"{problem.path}: {problem.message}"
    return None


def load_recipe(path: str | Path) -> Recipe | ContinualRecipe:
    """Read a recipe file of either kind: ``kind: continual`` is a :class:`ContinualRecipe`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if isinstance(data, dict) and data.get("kind") == "continual":
        return ContinualRecipe.from_dict(data, source=str(path))
    return Recipe.from_yaml_text(text, source=str(path))
