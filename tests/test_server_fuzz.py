"""Bad requests to `swiftsd serve`: every one gets a 4xx with OpenAI's JSON error shape
(never a 500 or a traceback), and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from tiny_server_model import API_KEY, ServerProcess, save_tiny_server_model

M = "MODEL"  # replaced by the served model id
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json", **AUTH}


def _completion(**over):
    body = {"model": M, "prompt": "the cat", "max_tokens": 4}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def _chat(**over):
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


# (name, method, path, body: dict -> JSON, bytes -> raw, None -> no body, headers, expected status)
C, CH = "/v1/completions", "/v1/chat/completions"
CASES: list[tuple[str, str, str, object, dict, int]] = [
    # the body itself
    ("truncated json", "POST", C, b'{"model": "x", "prompt": "a"', JSON, 400),
    ("not json", "POST", C, b"hello", JSON, 400),
    ("empty body", "POST", C, b"", JSON, 400),
    ("json null", "POST", C, b"null", JSON, 400),
    ("json list", "POST", C, b"[1, 2]", JSON, 400),
    ("json number", "POST", C, b"42", JSON, 400),
    ("json string", "POST", C, b'"prompt"', JSON, 400),
    ("invalid utf-8", "POST", C, b'{"model": "\xff\xfe", "prompt": "a"}', JSON, 400),
    ("NaN literal", "POST", C, b'{"model": "MODEL", "prompt": "a", "temperature": NaN}', JSON, 400),
    ("Infinity literal", "POST", C, b'{"model": "MODEL", "prompt": "a", "top_p": Infinity}', JSON, 400),
    ("deeply nested", "POST", C, b"[" * 100_000 + b"]" * 100_000, JSON, 400),
    ("form content type", "POST", C, b"model=x&prompt=y", {**AUTH, "content-type": "application/x-www-form-urlencoded"},
     400),
    ("body too large", "POST", C, b"{" + b" " * (9 << 20) + b"}", JSON, 413),
    # fields: missing, wrong types, out of range
    ("no model", "POST", C, _completion(model=...), JSON, 400),
    ("no prompt", "POST", C, _completion(prompt=...), JSON, 400),
    ("model not a string", "POST", C, _completion(model=123), JSON, 400),
    ("empty model", "POST", C, _completion(model=""), JSON, 400),
    ("unknown model", "POST", C, _completion(model="gpt-4o"), JSON, 400),
    ("prompt a number", "POST", C, _completion(prompt=5), JSON, 400),
    ("prompt a dict", "POST", C, _completion(prompt={"text": "a"}), JSON, 400),
    ("prompt mixed list", "POST", C, _completion(prompt=[1, "a"]), JSON, 400),
    ("two prompts", "POST", C, _completion(prompt=["a", "b"]), JSON, 400),
    ("empty prompt", "POST", C, _completion(prompt=""), JSON, 400),
    ("empty token list", "POST", C, _completion(prompt=[]), JSON, 400),
    ("token id too big", "POST", C, _completion(prompt=[1, 10_000_000]), JSON, 400),
    ("negative token id", "POST", C, _completion(prompt=[-3]), JSON, 400),
    ("token id float", "POST", C, _completion(prompt=[1.5]), JSON, 400),
    ("max_tokens zero", "POST", C, _completion(max_tokens=0), JSON, 400),
    ("max_tokens negative", "POST", C, _completion(max_tokens=-5), JSON, 400),
    ("max_tokens string", "POST", C, _completion(max_tokens="10"), JSON, 400),
    ("max_tokens bool", "POST", C, _completion(max_tokens=True), JSON, 400),
    ("max_tokens float", "POST", C, _completion(max_tokens=2.5), JSON, 400),
    ("max_tokens beyond context", "POST", C, _completion(max_tokens=10**9), JSON, 400),
    ("prompt beyond context", "POST", C, _completion(prompt="the " * 2000, max_tokens=1), JSON, 400),
    ("temperature negative", "POST", C, _completion(temperature=-0.1), JSON, 400),
    ("temperature too high", "POST", C, _completion(temperature=2.5), JSON, 400),
    ("temperature string", "POST", C, _completion(temperature="hot"), JSON, 400),
    ("top_p zero", "POST", C, _completion(top_p=0), JSON, 400),
    ("top_p above one", "POST", C, _completion(top_p=1.5), JSON, 400),
    ("top_k negative", "POST", C, _completion(top_k=-2), JSON, 400),
    ("top_k float", "POST", C, _completion(top_k=1.5), JSON, 400),
    ("seed string", "POST", C, _completion(seed="abc"), JSON, 400),
    ("seed too big", "POST", C, _completion(seed=2**70), JSON, 400),
    ("n two", "POST", C, _completion(n=2), JSON, 400),
    ("n zero", "POST", C, _completion(n=0), JSON, 400),
    ("stop a number", "POST", C, _completion(stop=5), JSON, 400),
    ("stop five strings", "POST", C, _completion(stop=["a", "b", "c", "d", "e"]), JSON, 400),
    ("stop empty string", "POST", C, _completion(stop=""), JSON, 400),
    ("stop list with number", "POST", C, _completion(stop=["a", 1]), JSON, 400),
    ("stream string", "POST", C, _completion(stream="yes"), JSON, 400),
    ("stream_options wrong", "POST", C, _completion(stream=True, stream_options={"include_usage": "yes"}), JSON, 400),
    ("stream_options unknown", "POST", C, _completion(stream=True, stream_options={"foo": 1}), JSON, 400),
    ("unknown field", "POST", C, _completion(frobnicate=1), JSON, 400),
    ("echo", "POST", C, _completion(echo=True), JSON, 400),
    ("logprobs", "POST", C, _completion(logprobs=2), JSON, 400),
    ("best_of", "POST", C, _completion(best_of=3), JSON, 400),
    ("suffix", "POST", C, _completion(suffix="end"), JSON, 400),
    ("presence_penalty", "POST", C, _completion(presence_penalty=0.5), JSON, 400),
    ("frequency_penalty out of range", "POST", C, _completion(frequency_penalty=5), JSON, 400),
    ("logit_bias", "POST", C, _completion(logit_bias={"5": 10}), JSON, 400),
    # chat
    ("no messages", "POST", CH, _chat(messages=...), JSON, 400),
    ("messages empty", "POST", CH, _chat(messages=[]), JSON, 400),
    ("messages a string", "POST", CH, _chat(messages="hi"), JSON, 400),
    ("message without role", "POST", CH, _chat(messages=[{"content": "hi"}]), JSON, 400),
    ("unknown role", "POST", CH, _chat(messages=[{"role": "wizard", "content": "hi"}]), JSON, 400),
    ("content a number", "POST", CH, _chat(messages=[{"role": "user", "content": 7}]), JSON, 400),
    ("image content", "POST", CH, _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), JSON, 400),
    ("tools", "POST", CH, _chat(tools=[{"type": "function", "function": {"name": "f"}}]), JSON, 400),
    ("chat logprobs", "POST", CH, _chat(logprobs=True), JSON, 400),
    ("chat n three", "POST", CH, _chat(n=3), JSON, 400),
    ("max_completion_tokens zero", "POST", CH, _chat(max_completion_tokens=0), JSON, 400),
    ("chat unknown model", "POST", CH, _chat(model="llama"), JSON, 400),
    ("chat beyond context", "POST", CH, _chat(messages=[{"role": "user", "content": "cat " * 2000}]), JSON, 400),
    # valid JSON that is no text: a lone UTF-16 surrogate (json.dumps writes the escape "\ud800")
    ("lone surrogate in prompt", "POST", C, _completion(prompt="the \ud800 cat"), JSON, 400),
    ("lone surrogate in chat content", "POST", CH, _chat(messages=[{"role": "user", "content": "\udfff"}]), JSON,
     400),
    ("lone surrogate in a key", "POST", C, _completion(**{"\ud800": 1}), JSON, 400),
    ("more JSON values than any context", "POST", C, _completion(prompt=[1] * 200_000), JSON, 400),
    # routes, methods, auth
    ("unknown route", "POST", "/v1/engines", _completion(), JSON, 404),
    ("GET on a POST route", "GET", C, None, AUTH, 405),
    ("unknown model card", "GET", "/v1/models/nope", None, AUTH, 404),
    ("no key", "POST", C, _completion(), {"content-type": "application/json"}, 401),
    ("wrong key", "POST", C, _completion(), {"content-type": "application/json", "Authorization": "Bearer x"}, 401),
    ("basic auth", "POST", C, _completion(), {"content-type": "application/json", "Authorization": "Basic eDp5"}, 401),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = save_tiny_server_model(tmp_path_factory.mktemp("tiny-fuzz-model"))
    server = ServerProcess(d, "--api-key", API_KEY, log_dir=tmp_path_factory.mktemp("fuzz-logs"))
    yield server
    server.stop()


def test_enough_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def _send(srv, method, path, body, headers):
    if isinstance(body, dict):
        raw = json.dumps(body).replace('"MODEL"', json.dumps(srv.model)).encode()
    elif isinstance(body, bytes):
        raw = body.replace(b"MODEL", srv.model.encode())
    else:
        raw = None
    return httpx.request(method, srv.base + path, content=raw, headers=headers, timeout=60)


def test_bad_requests_get_4xx_openai_errors_and_the_server_keeps_serving(srv):
    failures = []
    for name, method, path, body, headers, status in CASES:
        r = _send(srv, method, path, body, headers)
        try:
            err = r.json()["error"]
            ok = (r.status_code == status and isinstance(err["message"], str) and len(err["message"]) > 10
                  and isinstance(err["type"], str) and "param" in err and "code" in err
                  and "Traceback" not in r.text)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            failures.append(f"{name}: {r.status_code} {r.text[:300]}")
    assert not failures, "\n".join(failures)

    good = httpx.post(srv.base + C, headers=AUTH, timeout=60,
                      json={"model": srv.model, "prompt": "the cat", "max_tokens": 5, "temperature": 0})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 5
    chat = httpx.post(srv.base + CH, headers=AUTH, timeout=60,
                      json={"model": srv.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert chat.status_code == 200
    metrics = httpx.get(srv.base + "/metrics", headers=AUTH, timeout=30).text
    assert 'swiftsd_http_responses_total{code="500"}' not in metrics
    assert srv.proc.poll() is None and "Traceback" not in srv.log()


def test_error_messages_name_the_problem(srv):
    """A few messages read by people: they say what is wrong and what to do."""
    def msg(body, path=C):
        return _send(srv, "POST", path, body, JSON).json()["error"]

    assert "n=2" in msg(_completion(n=2))["message"] and msg(_completion(n=2))["param"] == "n"
    e = msg(_completion(model="gpt-4o"))
    assert e["code"] == "model_not_found" and srv.model in e["message"]
    e = msg(_completion(prompt="the " * 2000, max_tokens=1))
    assert e["code"] == "context_length_exceeded" and "1024" in e["message"]
    e = msg(_completion(temperature=-1))
    assert e["param"] == "temperature" and "greater than or equal to 0" in e["message"]
    e = msg(_completion(frobnicate=1))
    assert "frobnicate" in e["message"]
    e = _send(srv, "POST", C, b"{oops", JSON).json()["error"]
    assert "not valid JSON" in e["message"]
    e = msg(_completion(prompt=["a", "b"]))
    assert "one prompt per request" in e["message"]
