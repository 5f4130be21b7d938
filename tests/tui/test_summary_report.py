"""The Summary's report view: the open-ended numbers first, and a warning in words when the model
stopped answering general questions in its own voice or training diverged."""

from __future__ import annotations

from rich.console import Console

from fnapi.report import ForgettingReport, Score
from fntui.screens.summary import report_view


def _render(report: ForgettingReport) -> str:
    console = Console(width=120, record=True)
    console.print(report_view(report))
    return console.export_text()


def _report(**changes) -> ForgettingReport:
    base = dict(name="r", task=Score(0.0, 1.0, 30), generative=Score(0.3, 0.06, 100), probes=Score(0.74, 0.74, 200),
                chat_kl={"value": 0.44, "ci95": [0.3, 0.5], "prompts": 24},
                format_leak={"share": 0.79, "base_share": 0.0, "flag": True, "prompts": 24})
    return ForgettingReport(**{**base, **changes})


def test_a_collapse_of_general_replies_is_warned_in_words():
    text = _render(_report())
    assert "79% of replies to general prompts look like the training task's answers" in text
    assert "open-ended retained" in text and "20.0%" in text
    assert text.index("general questions, open-ended") < text.index("probes, choice ranking")
    assert "chat drift" in text


def test_no_warning_when_the_model_still_answers_and_divergence_is_shown():
    quiet = _render(_report(format_leak={"share": 0.0, "base_share": 0.0, "flag": False, "prompts": 24}))
    assert "look like the training task" not in quiet
    diverged = _render(_report(warnings=["training diverged: the loss rose from 6.0 at step 1 to 10.8"]))
    assert "Warning: training diverged" in diverged
