"""Step 3: the Hugging Face token, only needed for gated or private hub models.

Shows which token source is in effect (masked), whether the hub answered, and takes a new token
in a masked field, optionally saved to ``.env`` with owner-only permissions. Tokens never enter
the recipe.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Static

from fnapi.errors import FnapiError
from fnapi.recipe import Recipe
from fntui.messages import HubChecked, TokenChecked, TokenFound
from fntui.screens.base import Form, StepScreen
from fntui.widgets.fields import Field

_HUB_STATES = {
    "ok": ("green", "The hub accepted the token{user}."),
    "invalid": ("red", "The hub rejected the token: {detail}"),
    "offline": ("yellow", "Offline: {detail}. Hub models load only if they are already in the local cache; "
                          "the embedded model, local folders and built-in data work as usual."),
}


class AuthScreen(StepScreen):
    STEP = "auth"
    TITLE = "Hugging Face access"
    HINT = ("Only gated or private hub models need a token. The embedded model, local folders, .gguf files "
            "and built-in data do not: leave the field empty and press Next to skip.")

    def compose_body(self) -> ComposeResult:
        yield Static("Looking for a token…", id="token-status", markup=False)
        yield Static("", id="hub-status")
        yield Field("New token", Input(id="token", password=True, compact=True,
                                       placeholder="hf_… (empty keeps the current one)"),
                    help="typed characters are hidden; the token never goes into the recipe")
        yield Checkbox("Save to ./.env (readable only by you); unticked: this session only",
                       id="save-token", compact=True)

    def load(self) -> None:
        self.query_one("#token", Input).focus()
        self.look_up()

    @work(thread=True, exclusive=True, exit_on_error=False, group="token")
    def look_up(self) -> None:
        engine = self.app.engine
        status = engine.token_status()
        self.post_message(TokenFound(status))
        if status.found:
            self.post_message(TokenChecked(engine.check_token(status)))
        else:
            self.post_message(HubChecked(engine.hub_problem()))

    @on(TokenFound)
    def _token_found(self, message: TokenFound) -> None:
        status = message.status
        text = (f"Token in use: {status.describe()}" if status.found else
                "No token found (looked at HF_TOKEN, ./.env and the cached hf login).")
        self.query_one("#token-status", Static).update(text)

    @on(TokenChecked)
    def _token_checked(self, message: TokenChecked) -> None:
        result = message.result
        style, template = _HUB_STATES[result.state]
        text = template.format(user=f" (user {result.user})" if result.user else "", detail=result.detail)
        self.query_one("#hub-status", Static).update(Text(text, style=style))

    @on(HubChecked)
    def _hub_checked(self, message: HubChecked) -> None:
        problem = message.problem
        text = (_HUB_STATES["offline"][1].format(detail=problem) if problem else
                "The hub is reachable; public models need no token.")
        self.query_one("#hub-status", Static).update(Text(text, style="yellow" if problem else "green"))

    def changes(self, form: Form) -> dict[str, Any]:
        token = form.text("token")
        if token and (any(c.isspace() for c in token) or "'" in token or '"' in token):
            form.fail("token", "a token has no spaces or quotes: paste the token alone")
        elif token and not token.startswith("hf_"):
            form.fail("token", "a Hugging Face token starts with hf_ (create one at huggingface.co/settings/tokens)")
        elif form.raw("save-token") and not token:
            form.fail("token", "enter the token to save, or untick saving")
        return {}

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        form = Form(self)
        token = form.text("token")
        if not token:
            return recipe
        if not form.raw("save-token"):
            self.app.engine.use_token(token)
            return recipe
        try:
            path = self.app.engine.save_token(token)
        except FnapiError as exc:
            self.show_errors({"token": exc.message})
            return None
        self.app.notify(f"Token saved to {path.name} (owner-only permissions)")
        return recipe
