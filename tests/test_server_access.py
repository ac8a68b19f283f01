"""One access line per HTTP request at the server's default log level, refused requests included."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from swiftsd import SwiftDecoder
from swiftsd.server import ServerSettings, access_log, create_app
from tiny_server_model import build_model, build_tokenizer, serve_in_process


@pytest.fixture(scope="module")
def base():
    tok = build_tokenizer()
    model = build_model(len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("halt"))
    app = create_app(SwiftDecoder(model, tok, cost_cache=False), tok, "tiny", ServerSettings(max_body_bytes=4096))
    with serve_in_process(app) as url:
        yield url


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "swiftsd.access"]


def test_one_line_per_request_with_status_tokens_and_time(base, caplog) -> None:
    caplog.set_level(logging.INFO, logger="swiftsd.access")
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 5, "temperature": 0}
    assert httpx.post(base + "/v1/completions", json=body, timeout=60).status_code == 200
    with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    assert httpx.post(base + "/v1/completions", json={**body, "model": "gpt-4o"}).status_code == 400
    assert httpx.post(base + "/v1/completions", json={**body, "prompt": "x" * 5000}).status_code == 413
    assert httpx.get(base + "/nowhere").status_code == 404
    assert httpx.get(base + "/health").status_code == 200
    deadline = time.monotonic() + 10  # a line is logged once the answer is sent: the client may see it first
    while len(_lines(caplog)) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = _lines(caplog)
    assert len(lines) == 6, lines
    done, streamed, unknown, big, missing, health = lines
    for text in (done, streamed):
        assert text.startswith('127.0.0.1 "POST /v1/completions" 200 ')
        assert "prompt=3 completion=" in text and "queued=" in text and text.split()[4].endswith("s")
    assert " 400 " in unknown and " 413 " in big and '"GET /nowhere" 404 ' in missing
    assert '"GET /health" 200 ' in health and "prompt=" not in health


def test_serve_shows_access_lines_at_the_default_level_and_hides_them_above(capsys) -> None:
    from swiftsd.cli.main import build_parser

    args = build_parser(only="serve").parse_args(["serve"])
    assert args.log_level == "info"
    try:
        access_log.configure(args.log_level)
        logging.getLogger("swiftsd.access").info('127.0.0.1 "GET /health" 200 0.00s')
        assert capsys.readouterr().err == 'swiftsd: 127.0.0.1 "GET /health" 200 0.00s\n'
        access_log.configure("warning")
        logging.getLogger("swiftsd.access").info('127.0.0.1 "GET /health" 200 0.00s')
        assert capsys.readouterr().err == ""
    finally:
        log = logging.getLogger("swiftsd.access")
        log.handlers.clear()
        log.setLevel(logging.NOTSET)


def test_lines_still_reach_stderr_after_the_stream_they_started_on_is_gone(capsys) -> None:
    """A server configured in-process (a test, a notebook) keeps logging after sys.stderr is swapped."""
    import io
    import sys

    log = logging.getLogger("swiftsd.access")
    first = io.StringIO()
    old = sys.stderr
    try:
        sys.stderr = first
        access_log.configure("info")
        sys.stderr = old
        first.close()
        log.info("after")  # no "I/O operation on closed file"
        assert capsys.readouterr().err == "swiftsd: after\n"
    finally:
        sys.stderr = old
        log.handlers.clear()
        log.setLevel(logging.NOTSET)
