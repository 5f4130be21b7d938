"""Step 7: pick the networks (components) the mask uses, in the template browser."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Static

from fnapi.errors import FnapiError
from fntui.screens.base import Form, StepScreen
from fntui.widgets.fields import Field
from fntui.widgets.template_view import TemplateView


class NetworksScreen(StepScreen):
    STEP = "networks"
    TITLE = "Networks: which components the mask uses"
    HINT = ("space picks the component under the cursor, / searches by id or token; the right pane shows its "
            "size, layers, stability and top tokens. Or tick 'most stable'.")

    def __init__(self) -> None:
        super().__init__()
        self.template: Any = None
        self.problem: str | None = None

    def _find_template(self) -> None:
        session, section = self.app.session, self.app.draft.recipe.template
        if session.template is not None:
            self.template = session.template
        elif section is not None and section.path:
            try:
                self.template, _ = self.app.engine.load_template(section.path)
            except FnapiError as exc:
                self.problem = exc.message
            else:
                session.template = self.template

    def compose_body(self) -> ComposeResult:
        self._find_template()
        mask = self.app.draft.recipe.mask
        if self.template is None:
            yield Static(self.problem or "No template was chosen, so training runs without a mask. Press Next.",
                         classes="note", markup=False)
            return
        yield Checkbox("Use the most stable components instead of picking", id="use-stable", compact=True,
                       value=mask.components == "stable")
        yield Field("How many", Input(str(mask.top_stable), id="top-stable", compact=True), key="mask.top_stable")
        picked = mask.components if isinstance(mask.components, list) else []
        title = self.app.draft.choices.template_path or (self.app.draft.recipe.template.path or "template")
        yield TemplateView(self.template, title=str(title), selectable=True, selected=picked, id="networks-view")
        yield Label("", id="picked")

    def load(self) -> None:
        if self.template is not None:
            self._manual = set(self.query_one(TemplateView).selected)
            self._mark_stable()
            self._show_picked()

    def _stable_ids(self) -> list[int]:
        form = Form(self)
        text = (form.text("top-stable") or "").strip()
        count = int(text) if text.isdigit() else 0
        scored = [c.id for c in self.template.components_by_stability() if c.stability is not None]
        return scored[:count]

    def _mark_stable(self) -> None:
        """The tree ticks what will be used: the most stable components while that box is ticked."""
        view = self.query_one(TemplateView)
        if Form(self).raw("use-stable"):
            view.set_selected(self._stable_ids())
        else:
            view.set_selected(self._manual)

    def _show_picked(self) -> None:
        form = Form(self)
        if form.raw("use-stable"):
            text = f"the {form.text('top-stable') or '?'} most stable components"
        else:
            ids = sorted(self.query_one(TemplateView).selected)
            text = ", ".join(f"#{i}" for i in ids) if ids else "none, so training runs without a mask (space picks)"
        self.query_one("#picked", Label).update(f"Picked: {text}")

    @on(TemplateView.SelectionChanged)
    def _picked(self, event: TemplateView.SelectionChanged) -> None:
        self._manual = set(event.selected)
        stable = self.query_one("#use-stable", Checkbox)
        if stable.value:  # picking by hand takes over from 'most stable', starting from its choice
            with stable.prevent(Checkbox.Changed):
                stable.value = False
        self._show_picked()
        self.validate()

    def edited(self, control: Widget) -> None:
        if self.template is not None:
            if control.id in ("use-stable", "top-stable"):
                self._mark_stable()
            self._show_picked()

    def changes(self, form: Form) -> dict[str, Any]:
        if self.template is None:
            return {"mask.components": [], "mask.preset": "none"}
        if form.raw("use-stable"):
            chosen: dict[str, Any] = {"mask.components": "stable",
                                      "mask.top_stable": form.integer("top-stable", minimum=1)}
        else:
            picked = sorted(self.query_one(TemplateView).selected)
            if not picked:  # no networks means no mask: a preset chosen earlier would have nothing to act on
                return {"mask.components": [], "mask.preset": "none"}
            chosen = {"mask.components": picked}
        # Networks picked with no mask would train unmasked while the user believes otherwise: picking
        # them sets protect (the quickstart's kind of mask); going back to none is a choice on Training.
        if self.app.draft.recipe.mask.preset == "none" and not self.choices.mask_none_chosen:
            chosen["mask.preset"] = "protect"
        return chosen
