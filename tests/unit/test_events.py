"""Events: typed, JSON-serialisable, rendered by interchangeable sinks; cancellation stops work."""

from __future__ import annotations

import io
import json
import threading

import pytest

from fnapi.errors import CancelledError
from fnapi.events import (
    CompositeSink,
    JsonlSink,
    ListSink,
    Log,
    Metric,
    PlainConsoleSink,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    console_sink,
    event_from_dict,
    stage,
)


def test_stage_reports_start_progress_finish_with_eta():
    sink = ListSink()
    with stage(sink, "capture", total=4, unit="batch", min_interval=0) as progress:
        for _ in range(4):
            progress.advance()
        progress.summary["tokens"] = 10
    kinds = [e.type for e in sink.events]
    assert kinds[0] == "stage_started" and kinds[-1] == "stage_finished"
    updates = sink.of_type(Progress)
    assert [u.completed for u in updates] == [1, 2, 3, 4]
    assert updates[-1].eta_seconds == pytest.approx(0, abs=1e-6)
    assert updates[0].eta_seconds is not None and updates[0].rate > 0
    assert sink.events[-1].summary == {"tokens": 10}


def test_progress_is_rate_limited_but_last_step_always_reported():
    sink = ListSink()
    with stage(sink, "s", total=1000, min_interval=60) as progress:
        for _ in range(1000):
            progress.advance()
    completed = [e.completed for e in sink.of_type(Progress)]
    assert completed[-1] == 1000
    assert len(completed) <= 3


def test_cancel_event_stops_the_stage():
    cancel = threading.Event()
    sink = ListSink()
    with pytest.raises(CancelledError, match="capture was cancelled after 2 batch"):
        with stage(sink, "capture", total=10, unit="batch", cancel=cancel) as progress:
            progress.advance()
            cancel.set()
            progress.advance()
    assert not sink.of_type(StageFinished)


def test_every_event_round_trips_through_json():
    events = [
        RunStarted(name="r", run_dir="/tmp/x"),
        StageStarted(stage="train", total=5, unit="step"),
        Progress(stage="train", completed=1, total=5, rate=0.5, eta_seconds=8.0),
        Metric(stage="train", values={"loss": 1.25}, step=1),
        Log(message="hello", level="warning", stage="train"),
        StageFinished(stage="train", seconds=1.5, summary={"steps": 5}),
        RunFinished(name="r", seconds=3.0, summary={"final_loss": 0.5}),
        RunFailed(error="boom", stage="train", exit_code=2),
    ]
    for event in events:
        data = json.loads(json.dumps(event.to_dict()))
        assert data["type"] == event.type
        assert event_from_dict(data) == event


def test_jsonl_sink_writes_one_object_per_line(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    sink.emit(Log(message="a"))
    sink.emit(Metric(stage="train", values={"loss": 2.0}, step=3))
    sink.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["log", "metric"]
    assert lines[1]["values"] == {"loss": 2.0}


def test_plain_console_lines_and_composite():
    stream = io.StringIO()
    memory = ListSink()
    sink = CompositeSink(PlainConsoleSink(stream=stream, interval=0), memory)
    with stage(sink, "train", total=2, unit="step") as progress:
        progress.advance()
        progress.metric({"loss": 0.75}, step=1)
        progress.advance()
    text = stream.getvalue()
    assert "[train] started (2 step)" in text
    assert "2/2 step" in text and "100%" in text and "eta" in text
    assert "loss=0.75" in text
    assert "[train] done in" in text
    assert len(memory.events) >= 5


def test_console_sink_is_plain_when_not_a_terminal():
    assert isinstance(console_sink(io.StringIO()), PlainConsoleSink)


def test_events_redact_tokens():
    token = "hf_" + "a1B2" * 8 + "c3"
    assert token not in json.dumps(Log(message=f"using {token}").to_dict())
