"""A hub that accepts connections but never answers costs one bounded budget, then exit code 2."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fnapi import auth
from fnapi.cli import main
from fnapi.errors import FnapiError


@pytest.fixture
def silent_hub(monkeypatch, tmp_path):
    """A loopback server that accepts every connection and never sends a byte; stopped after the test."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FNAPI_HUB_TIMEOUT", "1.5")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing cached to fall back on
    yield port
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_check_gives_up_within_the_budget_and_says_why(silent_hub):
    start = time.monotonic()
    problem = auth.hub_reachable()
    assert time.monotonic() - start < 3.5  # the 1.5 s budget and thread slack
    assert problem is not None and "accepted a connection but sent no HTTP answer within 1.5s" in problem
    assert f"127.0.0.1:{silent_hub}" in problem


def test_a_hub_that_answers_counts_as_reachable(monkeypatch):
    import http.server

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (the stdlib's naming)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert auth.hub_reachable(budget=3) is None  # any HTTP status is an answer
    finally:
        server.shutdown()
        server.server_close()


def test_data_inspect_of_a_hub_dataset_exits_2_with_offline_advice(silent_hub, capsys):
    start = time.monotonic()
    code = main(["data", "inspect", "some-org/x"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 30  # imports included; the hang this replaces lasted minutes
    assert "sent no HTTP answer" in err and "builtin:skill" in err


def test_run_with_a_hub_model_exits_2_with_offline_advice(silent_hub, tmp_path, capsys):
    recipe = tmp_path / "hub.yaml"
    recipe.write_text("version: 1\nmodel: {name: some-org/x}\ndata: {path: builtin:skill}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    start = time.monotonic()
    code = main(["run", str(recipe)])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 30
    assert "sent no HTTP answer" in err and "embedded model" in err


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_budget_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("FNAPI_HUB_TIMEOUT", value)
    with pytest.raises(FnapiError, match="FNAPI_HUB_TIMEOUT"):
        auth.hub_budget()
