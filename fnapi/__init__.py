"""fnapi: selective fine-tuning of causal LLMs with functional networks.

Heavy parts load on first use, so ``import fnapi`` is cheap::

    import fnapi
    recipe = fnapi.Recipe.from_yaml("recipes/quickstart.yaml")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # recipes and runs
    "Recipe": "fnapi.recipe",
    "run": "fnapi.runner",
    "RunResult": "fnapi.runner",
    "ForgettingReport": "fnapi.report",
    # models, data, hardware, auth
    "load_model": "fnapi.models.loading",
    "LoadedModel": "fnapi.models.loading",
    "get_adapter": "fnapi.models.registry",
    "load_data": "fnapi.data",
    "read_conversations": "fnapi.data",
    "tokenize": "fnapi.data",
    "probe_items": "fnapi.data.builtin",
    "probe_categories": "fnapi.data.builtin",
    "load_probes": "fnapi.data.probes",
    "load_texts": "fnapi.data.probes",
    "detect_hardware": "fnapi.hardware",
    "recommend": "fnapi.sizing",
    "resolve_token": "fnapi.auth",
    # functional networks
    "build_template": "fnapi.networks.build",
    "Template": "fnapi.networks.template",
    "Component": "fnapi.networks.template",
    "compare_templates": "fnapi.networks.template",
    # masks, training, evaluation
    "mask": "fnapi.masking",
    "NeuronMask": "fnapi.masking",
    "train": "fnapi.training",
    "score_task": "fnapi.evaluation",
    "score_probes": "fnapi.evaluation",
    "mean_kl": "fnapi.drift",
    # forgetting measures and comparisons
    "evaluate_target": "fnapi.eval_target",
    "ask_run": "fnapi.eval_target",
    "estimate_time": "fnapi.timing",
    "TimeEstimate": "fnapi.timing",
    "RunAnswers": "fnapi.eval_target",
    "load_trained": "fnapi.eval_target",
    "TrainedRun": "fnapi.eval_target",
    # exporting a run for other tools
    "export": "fnapi.exporting",
    "ExportResult": "fnapi.exporting",
    "build_plan": "fnapi.measures",
    "evaluate": "fnapi.measures",
    "compare_measures": "fnapi.measures",
    "bootstrap": "fnapi.measures",
    "compare_recipes": "fnapi.comparison",
    # continual learning (tasks one after another)
    "ContinualRecipe": "fnapi.recipe",
    "load_recipe": "fnapi.recipe",
    "continual": "fnapi.continual_learning.runner",
    "ContinualSummary": "fnapi.continual_learning.summary",
    "ContinualRun": "fnapi.continual_learning.results",
    "average_accuracy": "fnapi.continual_learning.metrics",
    "backward_transfer": "fnapi.continual_learning.metrics",
    "forward_transfer": "fnapi.continual_learning.metrics",
    # standard benchmarks (lm-evaluation-harness, the eval extra)
    "LmEvalRequest": "fnapi.lm_eval_bridge",
    "score_lm_eval": "fnapi.lm_eval_bridge",
    # events and errors
    "EventSink": "fnapi.events",
    "ListSink": "fnapi.events",
    "JsonlSink": "fnapi.events",
    "console_sink": "fnapi.events",
    "FnapiError": "fnapi.errors",
}

# names exported under another name than the one they have in their module
_ALIASES = {"compare_templates": "compare", "score_lm_eval": "score"}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fnapi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
