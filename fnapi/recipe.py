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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

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
    method: Literal["ica", "attribution"] = "ica"
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
    components: list[int] | Literal["stable"] = Field(default_factory=list)
    top_stable: int = Field(3, gt=0, description='how many components "stable" means')
    layers: str | None = None

    @field_validator("layers")
    @classmethod
    def _layer_syntax(cls, value: str | None) -> str | None:
        return _check_layer_syntax(value)
    ablate: Ablate | None = None
    train: TrainWhich | None = None
    control: Literal["none", "random"] = Field(
        "none", description="random: the same number of neurons per layer, drawn at random with the recipe's "
                            "seed, in place of the networks (the control row of a comparison)")

    @model_validator(mode="after")
    def _needs_components(self) -> MaskSection:
        ablate, train = self.switches()
        if (ablate != "none" or train != "all") and self.components == []:
            raise ValueError(f"preset {self.preset!r} needs components (a list of ids or 'stable')")
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
        data = self.to_dict()
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
        return Recipe.from_dict(data, source)


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


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One :class:`Problem` per pydantic error: the YAML path, and the message with did-you-mean."""
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        # pydantic appends the union member's type name to the loc; drop it for readability
        loc = tuple(p for p in loc if p not in ("list[int]", "str", "int", "float", "bool", "dict[str,str]", "[key]"))
        path = _dotted(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else (f"; known keys: {', '.join(known)}" if known else "")
            problems.append(Problem(path, f"unknown key{hint}"))
            continue
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
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
