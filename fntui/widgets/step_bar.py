"""The step bar at the top of every wizard screen: where you are and what comes next."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from fntui.steps import STEPS, step_index


class StepBar(Widget):
    """One line naming every step; done steps, the current one and later ones look different.

    Narrow terminals get shorter forms: without numbers, then only the current step named.
    """

    COMPONENT_CLASSES = {"stepbar--done", "stepbar--current", "stepbar--todo"}

    current: reactive[str] = reactive("welcome")

    def __init__(self, current: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current

    def render(self) -> Text:
        width = self.size.width or 80
        position = step_index(self.current)
        numbered = [f"{i + 1} {label}" for i, (_, label) in enumerate(STEPS)]
        plain = [label for _, label in STEPS]
        current_only = [label if i == position else str(i + 1) for i, (_, label) in enumerate(STEPS)]
        for labels, separator in ((numbered, " › "), (plain, " › "), (plain, " "), (current_only, " ")):
            if sum(map(len, labels)) + len(separator) * (len(labels) - 1) <= width:
                break
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, label in enumerate(labels):
            if i:
                text.append(separator, style=self.get_component_rich_style("stepbar--todo"))
            role = "done" if i < position else "current" if i == position else "todo"
            text.append(label, style=self.get_component_rich_style(f"stepbar--{role}"))
        return text
