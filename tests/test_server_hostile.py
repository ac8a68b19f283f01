"""Hostile input to a live `swiftsd serve` on loopback (issue 32): bodies over the limit in any
transfer encoding, huge prompts, odd-but-valid JSON, vanishing temperatures, slow clients, a
prefill past the timeout, forced internal errors. Every wait is bounded; nothing runs unbounded."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import httpx
import pytest
import torch

from swiftsd import SwiftDecoder
from swiftsd.server import ServerSettings, create_app
from swiftsd.stats import GenerationStats
from tiny import tiny_model
from tiny_server_model import (
    ServerProcess,
    build_tokenizer,
    expected_completion,
    parse_metrics,
    save_tiny_server_model,
    serve_in_process,
)
from tiny_server_model import metric_total as _total

READ_TIMEOUT = 1.5
LIMIT = 8 << 20  # the default --max-body-bytes
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny_server_model(tmp_path_factory.mktemp("tiny-hostile"), eos=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return d, AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    server = ServerProcess(tiny[0], "--read-timeout", str(READ_TIMEOUT), log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


class HealthProbe:
    """Polls /health from a thread while the block runs; ``worst`` is the slowest answer (s)."""

    def __init__(self, base: str) -> None:
        self.base, self.latencies, self._stop = base, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                assert c.get(self.base + "/health").status_code == 200
                self.latencies.append(time.monotonic() - t0)
                self._stop.wait(0.05)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        end = time.monotonic() + 30
        while not self.latencies:  # polling before the block starts
            assert time.monotonic() < end and self._thread.is_alive(), "/health did not answer"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(35)

    @property
    def worst(self) -> float:
        return max(self.latencies)


# ------------------------------------------------------------------------------ raw HTTP
def _connect(base: str) -> socket.socket:
    host, port = base.rsplit("/", 1)[-1].split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; (0, {}, b"") if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(path: str, body: dict, extra: str = "") -> bytes:
    raw = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True once the server closes ``s`` (EOF or reset) within ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([s], [], [], 0.1)[0]:
            try:
                if not s.recv(65536):
                    return True
            except ConnectionError:
                return True
    return False


def _metrics(base: str) -> dict:
    return parse_metrics(httpx.get(base + "/metrics", timeout=10).text)


# ------------------------------------------------------------------------------ size
def test_a_chunked_body_over_the_limit_gets_413_at_once_while_health_stays_fast(srv):
    piece = b" " * 65536
    with HealthProbe(srv.base) as probe, _connect(srv.base) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
        sent, answered = 0, False
        while sent < 8 * LIMIT and not answered:  # a body that never ends unless the server answers
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            answered = bool(select.select([s], [], [], 0)[0])
        status, headers, body = _read_response(s)
    assert status == 413, (status, sent)
    assert json.loads(body)["error"]["code"] == "body_too_large" and headers.get("connection") == "close"
    assert sent < 2 * LIMIT  # refused while the body was still coming, not after it ended
    assert probe.worst < 1.0, probe.latencies


def test_a_huge_prompt_is_tokenised_off_the_event_loop(srv):
    """7.8 MB of text (2.3 M words; seconds to tokenise) under the limit: /health keeps answering."""
    body = {"model": srv.model, "prompt": "the cat sat on a red mat . " * 290_000, "max_tokens": 4}
    with HealthProbe(srv.base) as probe:
        t0 = time.monotonic()
        r = httpx.post(srv.base + "/v1/completions", json=body, timeout=TIMEOUT)
        took = time.monotonic() - t0
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert len(probe.latencies) >= 3 and probe.worst < 1.0, (took, probe.latencies)


def test_json_value_bound_refuses_a_huge_id_list_fast(srv):
    """1.5 M token ids then a string: pydantic would collect 3 M union errors (13 s of held GIL)."""
    raw = json.dumps({"model": srv.model, "prompt": [5] * 1_500_000 + ["x"], "max_tokens": 2}).encode()
    with HealthProbe(srv.base) as probe:
        r = httpx.post(srv.base + "/v1/completions", content=raw, timeout=TIMEOUT,
                       headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert "JSON values" in r.json()["error"]["message"] and probe.worst < 1.0


# ------------------------------------------------------------------------------ valid JSON, no 500
NULLS = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options", "user",
         "presence_penalty", "frequency_penalty", "logit_bias", "echo", "logprobs", "best_of", "suffix"]


def test_null_means_not_given(srv):
    c = httpx.Client(base_url=srv.base, timeout=TIMEOUT)
    r = c.post("/v1/completions", json={"model": srv.model, "prompt": "the cat", **dict.fromkeys(NULLS)})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 16  # max_tokens: null is OpenAI's default, 16
    chat = {"model": srv.model, "messages": [{"role": "user", "content": "hi", "name": None}],
            "max_tokens": None, "max_completion_tokens": 3, "logprobs": None, "top_logprobs": None,
            "temperature": None}
    r = c.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    r = c.post("/v1/completions", json={"model": None, "prompt": "the cat"})  # required: null is no value
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


SURROGATES = [  # (where, body); json.dumps writes a lone surrogate as the escape "\ud800"
    ("prompt", {"prompt": "the \ud800 cat"}),
    ("messages.0.content", {"messages": [{"role": "user", "content": "hi \udfff"}]}),
    ("messages.0.content.0.text", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]}),
    ("stop.1", {"prompt": "the cat", "stop": ["a", "b\ud800"]}),
    ("model", {"model": "tiny\ud800", "prompt": "the cat"}),
    ("\\udc00", {"prompt": "the cat", "\udc00": 1}),  # quoted as an escape: it cannot be sent as text
]


@pytest.mark.parametrize("param,extra", SURROGATES, ids=[s[0] for s in SURROGATES])
def test_lone_surrogates_are_refused_naming_the_field(srv, param, extra):
    body = {"model": srv.model, "max_tokens": 2, **extra}
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(srv.base + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"},
                   timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "lone UTF-16 surrogate" in err["message"] and err["code"] == "invalid_value"


def test_a_surrogate_pair_is_a_character_and_works(srv):
    raw = json.dumps({"model": srv.model, "prompt": "café 😀", "max_tokens": 2})  # ensure_ascii: "\ud83d\ude00"
    assert "\\ud83d\\ude00" in raw
    r = httpx.post(srv.base + "/v1/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text


def test_no_500_was_counted_and_no_traceback_logged(srv):
    m = _metrics(srv.base)
    assert _total(m, "swiftsd_http_responses_total", code="500") == 0
    assert "Traceback" not in srv.log()


# ------------------------------------------------------------------------------ temperature
@pytest.mark.parametrize("t", [1e-300, 1e-40, 1e-38])
def test_a_vanishing_temperature_gives_the_greedy_text(srv, tiny, t):
    _, model, tok = tiny
    ids = tok("The capital of France is")["input_ids"]
    want, _ = expected_completion(model, tok, ids, 8)
    r = httpx.post(srv.base + "/v1/completions", timeout=TIMEOUT,
                   json={"model": srv.model, "prompt": ids, "max_tokens": 8, "temperature": t, "seed": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    chat = {"model": srv.model, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 8}
    answers = [httpx.post(srv.base + "/v1/chat/completions", json={**chat, "temperature": x}, timeout=TIMEOUT).json()
               for x in (0, t)]
    assert answers[0]["choices"][0]["message"] == answers[1]["choices"][0]["message"]
    assert answers[1]["choices"][0]["message"]["content"]  # issue 32: 1e-300 gave empty content


# ------------------------------------------------------------------------------ slow clients
def test_half_sent_headers_get_408_and_a_close_after_the_read_timeout(srv):
    with _connect(srv.base) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Le")
        t0 = time.monotonic()
        status, headers, body = _read_response(s)
        assert status == 408 and json.loads(body)["error"]["code"] == "read_timeout"
        assert READ_TIMEOUT * 0.8 < time.monotonic() - t0 < READ_TIMEOUT + 10
        assert _closed_within(s, 5)
    with _connect(srv.base) as s:  # a connection that never sends a byte
        assert _read_response(s)[0] == 408 and _closed_within(s, 5)


def test_a_half_sent_body_gets_408_and_a_close(srv):
    with _connect(srv.base) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\": ")  # 10 of the 100 bytes promised
        status, headers, body = _read_response(s)
        assert status == 408 and headers.get("connection") == "close"
        assert "10 bytes came" in json.loads(body)["error"]["message"]
        assert _closed_within(s, 5)


def test_a_keep_alive_connection_is_timed_out_on_its_next_request_too(srv):
    with _connect(srv.base) as s:
        s.sendall(_request("/v1/completions", {"model": srv.model, "prompt": "the cat", "max_tokens": 2}))
        status, headers, _ = _read_response(s)
        assert status == 200 and headers.get("connection") != "close"
        s.sendall(b"GET /health HTTP/1.1\r\nHo")  # the next request, cut short
        assert _read_response(s)[0] == 408 and _closed_within(s, 5)
    m = _metrics(srv.base)
    assert _total(m, "swiftsd_http_responses_total", code="408") >= 1
    assert httpx.get(srv.base + "/health", timeout=10).status_code == 200


# ------------------------------------------------------------------------------ prefill and the timeout
def test_a_prefill_past_the_timeout_frees_the_worker_within_one_chunk():
    """16,000 prompt tokens in chunks of 512 (about 10 s in all here); a 1 s timeout. After the 504
    at most one more chunk starts (the one under way), then the worker is free."""
    tok = build_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=32768, hidden_size=256,
                       intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    dec = SwiftDecoder(model, tok, optimizer=False, drafters=("lookup",), prefill_chunk=512, cost_cache=False)
    assert dec.costs.full_step > 0  # the device's costs measured now, not within a request's 1 s
    starts: list[float] = []  # one per chunk: the first layer's MLP runs once per forward
    hook = model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: starts.append(time.monotonic()))
    app = create_app(dec, tok, "big", ServerSettings(request_timeout=1.0, max_queue=4))
    ids = torch.randint(4, len(tok), (16_000,), generator=torch.Generator().manual_seed(0)).tolist()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with serve_in_process(app) as base:
            r = httpx.post(base + "/v1/completions", timeout=TIMEOUT,
                           json={"model": "big", "prompt": ids, "max_tokens": 4, "temperature": 0})
            answered = time.monotonic()
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            end = answered + 30
            while httpx.get(base + "/health", timeout=10).json()["running"]:
                assert time.monotonic() < end, "the worker is still busy"
                time.sleep(0.02)
            free = time.monotonic()
            chunk_s = max(b - a for a, b in zip(starts, starts[1:]))  # the longest chunk that ran here
            assert sum(t > answered for t in starts) <= 1, (answered, starts)
            assert 2 <= len(starts) < 16_000 // 512  # chunked, and stopped part-way through the prompt
            assert free - answered < chunk_s + 1.0, (free - answered, chunk_s)
            small = httpx.post(base + "/v1/completions", timeout=TIMEOUT,
                               json={"model": "big", "prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0})
            assert small.status_code == 200
    finally:
        hook.remove()
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------ internal errors
class _Failing:
    """A decoder whose stream fails: at creation for prompt [66], while decoding for [67]."""

    model, adapter, optimizer = None, None, None

    def stream(self, ids, **kwargs):
        if ids[0] == 66:
            raise KeyError("forced failure in stream()\nsecond line")
        return _FailingStream(ids[0] == 67)


class _FailingStream:
    def __init__(self, fail: bool) -> None:
        self.fail, self.result = fail, None

    def __iter__(self):
        yield [10]
        if self.fail:
            raise RuntimeError("forced failure while decoding")
        yield [11]
        self.result = type("R", (), {"stats": GenerationStats(prompt_tokens=1, new_tokens=2)})()

    def close(self) -> None:
        pass


def test_an_internal_error_is_one_logged_counted_500_and_the_connection_stays_usable(caplog):
    app = create_app(_Failing(), build_tokenizer(), "failing", ServerSettings())
    caplog.set_level(logging.INFO)
    with serve_in_process(app) as base, _connect(base) as s:
        for prompt in ([66], [67]):
            s.sendall(_request("/v1/completions", {"model": "failing", "prompt": prompt, "max_tokens": 2}))
            status, headers, body = _read_response(s)
            assert status == 500 and headers.get("connection") != "close", (status, headers)
            assert json.loads(body)["error"]["type"] == "server_error"
            s.sendall(_request("/v1/completions", {"model": "failing", "prompt": [5], "max_tokens": 2}))
            status, _, body = _read_response(s)  # the same connection serves the next request
            assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
        m = _metrics(base)
    assert _total(m, "swiftsd_http_responses_total", code="500") == 2
    assert _total(m, "swiftsd_requests_total", outcome="error") == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and not any(r.exc_info for r in errors), [r.getMessage() for r in errors]
    assert all("\n" not in r.getMessage() for r in errors)
    assert "KeyError" in errors[0].getMessage() and "RuntimeError" in errors[1].getMessage()


@pytest.mark.parametrize("argv, words", [
    (["--read-timeout", "0"], "--read-timeout must be a positive number of seconds"),
    (["--read-timeout", "nan"], "--read-timeout must be a positive number of seconds"),
    (["--max-body-bytes", "0"], "--max-body-bytes must be an integer >= 1"),
])
def test_bad_limits_fail_in_one_line_before_the_model_loads(argv, words, capsys) -> None:
    from swiftsd.cli.main import main

    rc = main(["serve", "--model", "/no/such/model", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and words in err, err
