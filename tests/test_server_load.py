"""Bounded load test of `swiftsd serve` on loopback (tiny random model).

Rounds of 32 concurrent clients, each making several requests (plain, streamed,
and streamed-then-abandoned), then a flood beyond ``--max-queue`` while the
engine is busy. Checked: every accepted request returns exactly plain greedy
decoding's text, every rejection is a prompt 429 in OpenAI's error shape,
nothing hangs (every call has a timeout; the test stops by itself), and the
server's resident memory does not grow across rounds.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tiny_server_model import ServerProcess, expected_completion, save_tiny_server_model

psutil = pytest.importorskip("psutil")

N_CLIENTS = 32
REQUESTS_PER_CLIENT = 3
ROUNDS = 4
MAX_QUEUE = 24
MAX_TOKENS = 12
FLOOD = 40
RSS_TOLERANCE = 8 << 20  # bytes the server may grow from the end of round 1 to the end of the last (~290 requests;
# measured here: under 1 MiB), so a leak of ~30 KB per request fails
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
PROMPTS = ["the cat", "red fox jump", "one two three four", "a big dog sat on the mat", "café 日本 😀",
           "who ran fast", "seven eight nine", "blue bird sing"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # no end-of-sequence: every generation runs to max_tokens, so the flood's blocker is long
    d = save_tiny_server_model(tmp_path_factory.mktemp("tiny-load-model"), eos=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    expected = {}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, p in enumerate(PROMPTS):
            expected[("completion", i)] = expected_completion(model, tok, tok(p)["input_ids"], MAX_TOKENS)[0]
            chat = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False)
            ids = tok(chat, add_special_tokens=False)["input_ids"]
            expected[("chat", i)] = expected_completion(model, tok, ids, MAX_TOKENS)[0]
    finally:
        torch.set_num_threads(n)
    server = ServerProcess(d, "--max-queue", str(MAX_QUEUE), "--request-timeout", "120",
                           log_dir=tmp_path_factory.mktemp("load-logs"))
    yield server, expected
    server.stop()


def _body(server, kind: str, i: int, stream: bool, max_tokens: int = MAX_TOKENS) -> tuple[str, dict]:
    common = {"model": server.model, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if kind == "completion":
        return "/v1/completions", {**common, "prompt": PROMPTS[i]}
    return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": PROMPTS[i]}]}


def _text_of_sse(lines, kind: str) -> str:
    out, done = [], False
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        c = chunk["choices"][0]
        out.append(c["text"] if kind == "completion" else (c["delta"].get("content") or ""))
    assert done, "stream ended without [DONE]"
    return "".join(out)


def _check_429(r: httpx.Response) -> str:
    assert r.json()["error"]["code"] == "queue_full", r.text
    return "429"


def _one(server, expected, kind: str, i: int, mode: str) -> str:
    """One request; returns "ok", "429" or "left" (abandoned on purpose). Fails on anything else."""
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as c:
        if mode == "plain":
            path, body = _body(server, kind, i, stream=False)
            r = c.post(path, json=body)
            if r.status_code == 429:
                return _check_429(r)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            got = choice["text"] if kind == "completion" else choice["message"]["content"]
            assert got == expected[(kind, i)], (kind, PROMPTS[i])
            return "ok"
        path, body = _body(server, kind, i, stream=True, max_tokens=MAX_TOKENS if mode == "stream" else 400)
        with c.stream("POST", path, json=body) as r:
            if r.status_code == 429:
                r.read()
                return _check_429(r)
            assert r.status_code == 200
            if mode == "left":
                next(r.iter_lines())
                return "left"  # closing the connection mid-stream
            assert _text_of_sse(r.iter_lines(), kind) == expected[(kind, i)], (kind, PROMPTS[i])
            return "ok"


def _client(server, expected, cid: int) -> list[str]:
    modes = ("plain", "stream", "left")
    return [_one(server, expected, ("completion", "chat")[(cid + j) % 2], (cid * 3 + j) % len(PROMPTS),
                 modes[(cid + j) % 3]) for j in range(REQUESTS_PER_CLIENT)]


def _wait_idle(server, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while True:
        h = httpx.get(server.base + "/health", timeout=10).json()
        if not h["running"] and h["queue_depth"] == 0:
            return
        assert time.monotonic() - t0 < timeout, f"server not idle after {timeout} s: {h}"
        time.sleep(0.1)


def test_concurrent_clients_then_flood(setup):
    server, expected = setup
    proc = psutil.Process(server.pid)
    rss, outcomes = [], {"ok": 0, "429": 0, "left": 0}
    with ThreadPoolExecutor(N_CLIENTS) as pool:
        for _ in range(ROUNDS):
            futures = [pool.submit(_client, server, expected, cid) for cid in range(N_CLIENTS)]
            for f in futures:
                for outcome in f.result(timeout=240):
                    outcomes[outcome] += 1
            _wait_idle(server)
            rss.append(proc.memory_info().rss)
    assert outcomes["ok"] >= ROUNDS * N_CLIENTS  # most requests got through; all that did were exact
    growth = rss[-1] - rss[0]
    print(f"outcomes {outcomes}; RSS per round (MiB): {[round(r / 2**20, 1) for r in rss]}")
    assert growth < RSS_TOLERANCE, f"server RSS grew {growth / 2**20:.1f} MiB over {ROUNDS - 1} rounds"

    # Flood: hold the engine with one long stream (1000 tokens of near-uniform sampling: about
    # one token per step, several seconds), then send FLOOD requests at once from ready clients.
    clients = [httpx.Client(base_url=server.base, timeout=TIMEOUT) for _ in range(FLOOD + 1)]
    barrier = threading.Barrier(FLOOD)

    def fire(k: int) -> tuple[int, float, dict]:
        path, body = _body(server, "completion", k % len(PROMPTS), stream=False)
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        r = clients[k].post(path, json=body)
        return r.status_code, time.monotonic() - t0, r.json()

    path, body = _body(server, "completion", 0, stream=True, max_tokens=1000)
    body.update(temperature=2.0, seed=0)
    pool = ThreadPoolExecutor(FLOOD)
    try:
        with clients[FLOOD].stream("POST", path, json=body) as blocker:
            assert blocker.status_code == 200
            blocker_lines = blocker.iter_lines()  # (keep it referenced: a dropped iterator closes the connection)
            next(blocker_lines)
            futures = [pool.submit(fire, k) for k in range(FLOOD)]
            t0 = time.monotonic()
            while sum(f.done() for f in futures) < FLOOD - MAX_QUEUE and time.monotonic() - t0 < 30:
                time.sleep(0.02)
            h = httpx.get(server.base + "/health", timeout=10).json()
            assert h["running"] and h["queue_depth"] == MAX_QUEUE, h  # full queue, the blocker still runs
            rejected = [f.result() for f in futures if f.done()]
        # leaving the block abandoned the long stream: the queue drains
        results = [f.result(timeout=240) for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for c in clients:
            c.close()
    assert [status for status, _, _ in rejected] == [429] * (FLOOD - MAX_QUEUE)
    for status, latency, body in results:
        if status == 429:
            assert body["error"]["code"] == "queue_full" and latency < 5.0, (latency, body)  # at once, not queued
        else:
            assert status == 200, body
    ok = [(k, b) for k, (status, _, b) in enumerate(results) if status == 200]
    assert len(ok) == MAX_QUEUE and len(results) - len(ok) == FLOOD - MAX_QUEUE
    for k, b in ok:
        assert b["choices"][0]["text"] == expected[("completion", k % len(PROMPTS))]
    _wait_idle(server)
    assert httpx.get(server.base + "/health", timeout=10).json()["status"] == "ok"
    assert _one(server, expected, "chat", 1, "plain") == "ok"
    assert server.proc.poll() is None
