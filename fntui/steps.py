"""The wizard's steps, in order: (name, label). Drafts store the name of the step to reopen."""

from __future__ import annotations

STEPS: tuple[tuple[str, str], ...] = (
    ("welcome", "Welcome"),
    ("hardware", "Hardware"),
    ("auth", "Auth"),
    ("model", "Model"),
    ("data", "Data"),
    ("template", "Template"),
    ("networks", "Networks"),
    ("training", "Training"),
    ("run", "Run"),
    ("summary", "Summary"),
)
STEP_NAMES: tuple[str, ...] = tuple(name for name, _ in STEPS)


def step_index(name: str) -> int:
    """Position of step ``name`` (0 for unknown names, so a damaged draft reopens at the start)."""
    return STEP_NAMES.index(name) if name in STEP_NAMES else 0
