"""`swiftsd serve` under stress, on loopback with the tiny model: a slow reader (the app in this
process), SIGTERM under load, SIGKILL and a restart with --state, a corrupt state file (server
subprocesses). Every wait is bounded. tests/test_server_load.py covers 32 concurrent clients, the
429 flood and resident memory; test_server_fuzz.py the malformed bodies."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from swiftsd import SwiftDecoder, model_identity
from swiftsd.loading import load
from swiftsd.server import create_app
from swiftsd.persist.state_file import load_state
from tiny_server_model import (
    ServerProcess,
    expected_completion,
    parse_metrics,
    save_tiny_server_model,
    serve_in_process,
)
from tiny_server_model import metric_total as _total

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
CUT_SHORT = '{"format": "swiftsd-state", "version": 1, "model": {"na'  # a state file cut short


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A model that never ends by itself (every request runs to max_tokens), and its identity."""
    d = save_tiny_server_model(tmp_path_factory.mktemp("tiny-reliability"), eos=False)
    model, tok = load(str(d), device="cpu")
    return d, model, tok, model_identity(model)


def _metrics(server) -> dict:
    return parse_metrics(httpx.get(server.base + "/metrics", timeout=10).text)


def _completion(server, prompt: str, max_tokens: int, **extra) -> dict:
    return {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def _sse_text(lines) -> tuple[str, list[dict]]:
    """The streamed text and any in-stream error events; asserts the stream ended with [DONE]."""
    text, errors = [], []
    for line in lines:
        if not line:
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return "".join(text), errors
        chunk = json.loads(data)
        if "error" in chunk:
            errors.append(chunk["error"])
        else:
            text.append(chunk["choices"][0]["text"])
    raise AssertionError("stream ended without [DONE]")


def test_a_slow_reader_does_not_hold_up_others(tiny):
    _, model, tok, _ = tiny
    want, _ = expected_completion(model, tok, tok("the cat")["input_ids"], 300)
    app = create_app(SwiftDecoder(model, tok), tok, "tiny")  # in this process: no start-up of its own
    with serve_in_process(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as slow:
        body = {"model": "tiny", "prompt": "the cat", "max_tokens": 300, "temperature": 0, "stream": True}
        with slow.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(lines)  # then stop reading: its generation must not wait for this client
            t0 = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                others = list(pool.map(lambda p: httpx.post(base + "/v1/completions", timeout=TIMEOUT, json={
                    "model": "tiny", "prompt": p, "max_tokens": 6, "temperature": 0}),
                    ["red fox", "one two", "blue bird", "big dog"]))
            waited = time.monotonic() - t0
            assert [o.status_code for o in others] == [200] * 4 and waited < 45
            assert all(o.json()["usage"]["completion_tokens"] == 6 for o in others)
            text, errors = _sse_text([first, *lines])  # the slow reader still gets all of it, exactly
        assert not errors and text == want


def _admitted(server) -> float:
    m = _metrics(server)
    return sum(_total(m, name) for name in ("swiftsd_requests_total", "swiftsd_queue_depth",
                                           "swiftsd_running_requests"))


def _fire(server, k: int) -> str:
    """One long request during the SIGTERM: "ok" (complete), or how it was told that the server stops."""
    body = _completion(server, ["the cat", "red fox jump", "one two three"][k % 3], 300, stream=k % 2 == 0)
    try:
        with httpx.Client(base_url=server.base, timeout=TIMEOUT) as c:
            if not body["stream"]:
                r = c.post("/v1/completions", json=body)
                if r.status_code == 200:
                    return "ok" if r.json()["usage"]["completion_tokens"] == 300 else "short"
                assert r.json()["error"]["code"] == "shutting_down", r.text
                return "503"
            with c.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    assert r.json()["error"]["code"] == "shutting_down", r.text
                    return "503"
                _, errors = _sse_text(r.iter_lines())
                assert all(e["code"] == "shutting_down" for e in errors), errors
                return "aborted in-stream" if errors else "ok"
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
        return f"connection closed ({type(exc).__name__})"  # cut off with no answer: what must not happen


def test_sigterm_under_load_ends_requests_cleanly_then_saves_the_state(tiny, tmp_path):
    d, _, _, ident = tiny
    state = tmp_path / "state.json"
    state.write_text(CUT_SHORT)  # --state-reset starts fresh over it, and the shutdown save replaces it
    server = ServerProcess(d, "--state", str(state), "--state-reset", "--state-interval", "0", "--max-queue", "16",
                           log_dir=tmp_path)
    try:
        assert "--state-reset: starting with a fresh state" in server.log()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_fire, server, k) for k in range(8)]
            t0 = time.monotonic()
            while _admitted(server) < 8:  # all eight are in (a connection refused after SIGTERM is no test)
                assert time.monotonic() - t0 < 30, server.log()
                time.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            outcomes = [f.result(timeout=60) for f in futures]
        rc = server.proc.wait(30)
    finally:
        server.stop()
    assert rc in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises the signal once it has shut down
    print(f"outcomes after SIGTERM: {outcomes}")
    assert set(outcomes) <= {"ok", "503", "aborted in-stream"} and "ok" in outcomes, outcomes
    log = server.log_path.read_text()
    assert "saved the learned state to" in log and "Traceback" not in log
    saved = load_state(state, ident)  # the saved file is whole and this model's, where a cut-short one was
    assert saved["optimizer"] is not None


def _learn_until_saved(server, prompts, state, ident) -> None:
    for p in prompts:
        r = httpx.post(server.base + "/v1/completions", timeout=TIMEOUT, json=_completion(server, p, 40))
        assert r.status_code == 200
    t0 = time.monotonic()  # the periodic save after the last request comes within about one interval
    while not state.exists() or load_state(state, ident)["optimizer"]["state"]["requests"] < len(prompts):
        assert time.monotonic() - t0 < 20, server.log()
        time.sleep(0.1)


def test_sigkill_then_restart_with_state_resumes(tiny, tmp_path):
    d, _, _, ident = tiny
    state = tmp_path / "state.json"
    a = ServerProcess(d, "--state", str(state), "--state-interval", "0.5", log_dir=tmp_path)
    try:
        _learn_until_saved(a, ["the cat", "red fox jump", "one two three four", "the cat"], state, ident)
        before = _metrics(a)
        a.proc.send_signal(signal.SIGKILL)  # no shutdown save: only the periodic one survives
        a.proc.wait(10)
    finally:
        a.stop()
    saved = load_state(state, ident)["optimizer"]["state"]
    assert saved["requests"] == _total(before, "swiftsd_optimizer_requests") == 4

    b = ServerProcess(d, "--state", str(state), log_dir=tmp_path)
    try:
        assert "restored the learned state" in b.log()
        after = _metrics(b)
        # it resumes what the last periodic save held (a save may land between two steps of the
        # last request, so its step counters can trail the killed process's by at most that interval)
        for field in ("requests", "iterations", "steps"):
            assert _total(after, f"swiftsd_optimizer_{field}") == saved[field], field
        assert _total(after, "swiftsd_optimizer_steps") <= _total(before, "swiftsd_optimizer_steps")
        assert _total(after, "swiftsd_optimizer_requests") == 4  # it resumes where the killed one was
        r = httpx.post(b.base + "/v1/completions", timeout=TIMEOUT, json=_completion(b, "the cat", 20))
        assert r.status_code == 200
        assert _total(_metrics(b), "swiftsd_optimizer_requests") == 5
    finally:
        b.stop()


def test_a_corrupt_state_file_is_one_line_before_the_model_loads(tiny, tmp_path):
    d = tiny[0]
    state = tmp_path / "state.json"
    state.write_text(CUT_SHORT)
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        ServerProcess(d, "--state", str(state), log_dir=tmp_path)
    lines = [ln for ln in str(info.value).splitlines() if ln.startswith("swiftsd: error:")]
    assert len(lines) == 1 and "corrupt or truncated" in lines[0] and "--state-reset" in lines[0], info.value
    assert "Traceback" not in str(info.value) and "serving" not in str(info.value)
