"""The OpenAI wire format: request schemas, the checks they need, and the response bodies.

Request bodies are strict pydantic models (unknown fields are rejected, as OpenAI
does). A validated request becomes a :class:`Prepared` (token ids, budget, sampling,
stop strings), the one thing the engine side sees.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import APIError

MAX_STOP = 4  # OpenAI's limit on stop sequences
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts

_Strict = ConfigDict(strict=True, extra="forbid")
_Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
_TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
_Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
_Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class _Body(BaseModel):
    """A strict schema in which ``null`` means "not given" for every optional field, as in OpenAI's
    API (``"max_tokens": null`` on /v1/completions is its default, 16): the default applies.
    A required field sent as null still gets the error naming it."""

    model_config = _Strict

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}


class StreamOptions(_Body):
    include_usage: bool = False


class CommonRequest(_Body):
    """Fields shared by both endpoints."""

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: _Temperature = 1.0  # OpenAI's default; 0 = greedy
    top_p: _TopP = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # extension (as in vLLM); 0 or -1 = off
    seed: _Seed | None = None
    stop: _Stop = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    presence_penalty: _Penalty = 0.0  # only 0 is supported; accepted so default-sending clients work
    frequency_penalty: _Penalty = 0.0
    logit_bias: dict[str, float] | None = None


class CompletionRequest(CommonRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(CommonRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None


def _unsupported(name: str, what: str) -> APIError:
    return APIError(400, f"{name} is not supported; {what}", name, "unsupported")


def check_unsupported(req: CommonRequest) -> None:
    """Fields OpenAI has but this server does not implement: reject non-default values clearly."""
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported: swiftsd decodes one sequence per request; "
                            "send n=1 (or leave it out) and repeat the request for more samples", "n", "unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise _unsupported(name, "it would change the model's distribution, which SWIFT keeps exact; "
                                     "leave it at 0")
    if req.logit_bias:
        raise _unsupported("logit_bias", "leave it out")
    if isinstance(req, CompletionRequest):
        for name, bad, fix in (("echo", req.echo, "leave it false"), ("logprobs", req.logprobs, "leave it out"),
                               ("best_of", req.best_of not in (None, 1), "leave it out or set 1"),
                               ("suffix", req.suffix, "swiftsd does not insert text; leave it out")):
            if bad:
                raise _unsupported(name, fix)
    if isinstance(req, ChatRequest) and (req.logprobs or req.top_logprobs):
        raise _unsupported("logprobs", "leave logprobs and top_logprobs out")
    if any(s == "" for s in stop_strings(req)):
        raise APIError(400, "stop sequences must be non-empty strings", "stop", "invalid_value")


def stop_strings(req: CommonRequest) -> tuple[str, ...]:
    return (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())


# -------------------------------------------------------------------------- prompts
def completion_prompt(req: CompletionRequest) -> str | list[int]:
    """The one prompt of a completion request: text or token ids."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise APIError(400, f"got {len(prompt)} prompts: swiftsd serves one prompt per request; "
                                "send them as separate requests", "prompt", "unsupported")
        prompt = prompt[0]
    if isinstance(prompt, str) and not prompt:
        raise APIError(400, "the prompt is empty: give some text or a list of token ids", "prompt", "invalid_value")
    return prompt


def tokenize(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise APIError(400, "this server has no tokenizer: send the prompt as a list of token ids", "prompt",
                       "invalid_value")
    return list(tokenizer(text)["input_ids"])


def chat_prompt_ids(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    """The chat template applied to the messages, with the assistant's header, as token ids."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template, so /v1/chat/completions cannot build "
                            "a prompt; use /v1/completions with plain text instead", "messages", "no_chat_template")
    msgs = []
    for m in messages:
        content = "".join(part.text for part in m.content) if isinstance(m.content, list) else (m.content or "")
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.name:
            msg["name"] = m.name
        msgs.append(msg)
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja templates raise anything (e.g. "roles must alternate")
        raise APIError(400, f"the model's chat template rejected these messages: {exc}", "messages",
                       "invalid_value") from None
    # the template already holds the special tokens (e.g. BOS) the model expects
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_prompt(ids: list[int], max_tokens: int, vocab: int | None, limit: int | None) -> None:
    """The prompt's ids and the context budget, checked here so each error names its field."""
    if not ids:
        raise APIError(400, "the prompt is empty: give some text or at least one token id", "prompt",
                       "invalid_value")
    if vocab is not None:
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise APIError(400, f"token ids {bad[:5]} are outside the model's vocabulary [0, {vocab})", "prompt",
                           "invalid_value")
    if limit is not None and len(ids) + max_tokens > limit:
        raise APIError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) = {len(ids) + max_tokens} "
                            f"exceeds the model's context of {limit} tokens; shorten the prompt or lower "
                            "max_tokens", "max_tokens", "context_length_exceeded")


# -------------------------------------------------------------------------- validated requests
@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to queue."""

    kind: Literal["completion", "chat"]
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int | None


def prepare(req: CommonRequest, kind: Literal["completion", "chat"], ids: list[int], max_tokens: int) -> Prepared:
    return Prepared(kind=kind, prompt_ids=ids, max_tokens=max_tokens, stop=stop_strings(req), stream=req.stream,
                    include_usage=bool(req.stream_options and req.stream_options.include_usage),
                    temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), seed=req.seed)


# -------------------------------------------------------------------------- responses
def usage(p: Prepared, completion_tokens: int) -> dict[str, int]:
    n = len(p.prompt_ids)
    return {"prompt_tokens": n, "completion_tokens": completion_tokens, "total_tokens": n + completion_tokens}


def final_body(p: Prepared, rid: str, model: str, text: str, reason: str, completion_tokens: int) -> dict[str, Any]:
    if p.kind == "completion":
        obj, choice = "text_completion", {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    else:
        obj, choice = "chat.completion", {"index": 0, "message": {"role": "assistant", "content": text},
                                          "logprobs": None, "finish_reason": reason}
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(p, completion_tokens)}


Chunk = Callable[..., dict[str, Any]]


def chunk_factory(p: Prepared, rid: str, model: str) -> Chunk:
    """``chunk(text, finish=None, role=False, usage=None)``: one streamed chunk in OpenAI's shape."""
    obj, ts = ("text_completion" if p.kind == "completion" else "chat.completion.chunk"), int(time.time())

    def chunk(text: str | None, finish: str | None = None, role: bool = False,
              usage: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": rid, "object": obj, "created": ts, "model": model}
        if usage is not None:
            body["choices"] = []
        elif p.kind == "completion":
            body["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                {"content": text} if text else {})
            body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if p.include_usage:
            body["usage"] = usage
        return body

    return chunk


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
