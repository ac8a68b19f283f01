"""The server's pieces alone, without HTTP: handlers called with a context, structured errors,
the prompt checks, the Prometheus exposition."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from swiftsd.errors import ContextLengthError, InvalidArgumentError
from swiftsd.server import ServerContext, ServerSettings
from swiftsd.server.app import completions, get_model, health, list_models
from swiftsd.server.engine import Engine
from swiftsd.server.errors import APIError, from_swiftsd, validation_message
from swiftsd.server.metrics import Metrics
from swiftsd.server.protocol import MAX_STOP, CompletionRequest, check_prompt


class _Adapter:
    max_positions, vocab_size = 64, 100


class _Decoder:
    model, adapter, optimizer = None, _Adapter(), None

    def stream(self, *args, **kwargs):
        raise AssertionError("a refused request must not reach the decoder")


def _ctx(**settings) -> ServerContext:
    metrics = Metrics()
    return ServerContext(_Decoder(), None, "tiny", ServerSettings(aliases=("tiny-alias",), **settings),
                         Engine(_Decoder(), 4, metrics), metrics)


class _Request:
    async def is_disconnected(self) -> bool:
        return False


def _run(coro):
    return asyncio.run(coro)


def test_handlers_called_directly():
    ctx = _ctx()
    assert _run(list_models(ctx))["data"][0] == {"id": "tiny", "object": "model", "created": ctx.created,
                                                 "owned_by": "swiftsd", "max_model_len": 64}
    assert _run(get_model("tiny-alias", ctx))["id"] == "tiny"
    with pytest.raises(APIError) as e:
        _run(get_model("gpt-4o", ctx))
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found")
    assert _run(health(ctx)).status_code == 503  # the engine was never started
    with pytest.raises(APIError) as e:
        _run(completions(CompletionRequest(model="gpt-4o", prompt="a"), _Request(), ctx))
    assert (e.value.status, e.value.param) == (400, "model")
    with pytest.raises(APIError) as e:  # ids are checked against the vocabulary before the decoder sees them
        _run(completions(CompletionRequest(model="tiny", prompt=[1, 100, 5]), _Request(), ctx))
    assert (e.value.param, e.value.code) == ("prompt", "invalid_value") and "[100]" in e.value.message
    with pytest.raises(APIError) as e:
        _run(completions(CompletionRequest(model="tiny", prompt=["a", "b"]), _Request(), ctx))
    assert "one prompt per request" in e.value.message


def test_prompt_checks_name_their_field():
    check_prompt([1, 2], 10, vocab=100, limit=64)
    for ids, max_tokens, param, code in (([], 1, "prompt", "invalid_value"), ([-1], 1, "prompt", "invalid_value"),
                                         ([1] * 60, 5, "max_tokens", "context_length_exceeded")):
        with pytest.raises(APIError) as e:
            check_prompt(ids, max_tokens, vocab=100, limit=64)
        assert (e.value.param, e.value.code) == (param, code)
    with pytest.raises(APIError, match="= 65 exceeds the model's context of 64"):
        check_prompt([1] * 60, 5, vocab=None, limit=64)


def test_decoder_errors_map_by_type_not_text():
    assert from_swiftsd(ContextLengthError("anything at all")).param == "max_tokens"
    e = from_swiftsd(InvalidArgumentError("temperature must be >= 0"))  # the text names a field; unused
    assert (e.status, e.param, e.code) == (400, None, "invalid_value")


def test_validation_messages_from_pydantic_errors():
    def msg(body):
        with pytest.raises(ValidationError) as e:
            CompletionRequest.model_validate(body)
        return validation_message(e.value.errors(), MAX_STOP)

    assert msg({"model": "m", "prompt": "a", "frobnicate": 1}) == (
        "unknown field 'frobnicate' (not supported by this server)", "frobnicate")
    text, param = msg({"model": "m", "prompt": 5})
    assert param == "prompt" and "a list of token ids" in text
    text, param = msg({"model": "m", "prompt": "a", "stop": 3})
    assert param == "stop" and f"up to {MAX_STOP} strings" in text
    assert msg({"prompt": "a"}) == ("missing required field 'model'", "model")


def test_metrics_exposition_keeps_the_names():
    ctx = _ctx()
    m = ctx.metrics
    m.add("http", "200")
    m.add("generations", "length")
    with m.lock:
        m.generated_tokens, m.busy_s, m.steps, m.step_tokens = 30, 2.0, 10, 25
        m.optimizer = {"phase": "search", "iterations": 7, "costs": {"full_step": 0.01}, "best_set": {"attn": [1]}}
    fams = {f.name: f for f in text_string_to_metric_families(ctx.exposition.render().decode())}
    samples = {s.name: s for f in fams.values() for s in f.samples}
    assert samples["swiftsd_http_responses_total"].labels == {"code": "200"}
    assert samples["swiftsd_requests_total"].labels == {"outcome": "length"}
    assert samples["swiftsd_tokens_per_second"].value == 15.0
    assert samples["swiftsd_mean_accepted_tokens"].value == 2.5
    assert fams["swiftsd_generated_tokens"].type == "counter" and fams["swiftsd_queue_depth"].type == "gauge"
    assert samples["swiftsd_optimizer_phase"].labels == {"phase": "search"}
    assert samples["swiftsd_optimizer_iterations"].value == 7
    assert samples["swiftsd_optimizer_costs_full_step"].value == 0.01
    assert samples["swiftsd_max_queue"].value == 4
