"""The token step saves to .env with owner-only permissions and keeps the token out of drafts."""

from __future__ import annotations

import os
import stat

import pytest
from textual.widgets import Checkbox

from tests.tui.helpers import TERMINAL, make_app, settle

pytestmark = pytest.mark.anyio

TOKEN = "hf_wizardTestToken1234"


async def test_a_saved_token_goes_to_dotenv_0600_and_never_into_the_draft(drafts, workdir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")  # empty counts as unset; the variable is restored afterwards
    app = make_app(drafts, step="auth")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#token").focus()
        await pilot.press(*TOKEN)
        app.screen.query_one("#save-token", Checkbox).value = True
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "model"
    env = workdir / ".env"
    assert env.read_text() == f"HF_TOKEN={TOKEN}\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert os.environ["HF_TOKEN"] == TOKEN  # used by this session's hub calls too
    for path in drafts.root.iterdir():
        assert TOKEN not in path.read_text()


@pytest.mark.parametrize("typed, message", [
    ("my password", "a token has no spaces or quotes"),
    ("ghp_notAHuggingFaceToken", "a Hugging Face token starts with hf_"),
])
async def test_what_is_not_a_token_is_refused_at_the_field_and_nothing_is_saved(drafts, workdir, monkeypatch,
                                                                               typed, message):
    from tests.tui.test_validation import error_of

    monkeypatch.setenv("HF_TOKEN", "")
    app = make_app(drafts, step="auth")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#token").focus()
        await pilot.press(*typed)
        app.screen.query_one("#save-token", Checkbox).value = True
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "auth" and error_of(app.screen, "token").startswith(message)
    assert not (workdir / ".env").exists()
