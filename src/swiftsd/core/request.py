"""One request's arguments, parsed and validated once at the edge, before the loop starts.

``SwiftDecoder.stream`` takes ``model.generate``'s habits (a prompt in any form, stop
strings, a ``GenerationConfig``, stopping criteria); this turns them into the few values
the loop needs, and raises a one-line error naming the problem and the fix for bad ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..config import SamplingParams
from ..hf.eos import resolve_eos
from ..engine.skipset import SkipSet
from ..errors import ContextLengthError, InvalidArgumentError

if TYPE_CHECKING:
    from transformers import GenerationConfig, StoppingCriteria

    from .decoder import SwiftDecoder
    from .run import LogitsProcessor, StopHook


@dataclass(frozen=True)
class RequestArgs:
    ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    eos: frozenset[int]
    seed: int
    skip: SkipSet | None
    processor: "LogitsProcessor | None"
    stop: "StopHook | None"


def parse_skip(skip: SkipSet | dict | str, num_layers: int) -> SkipSet:
    """A skip set from a SkipSet, its dict or its JSON, checked against the model's layers."""
    if isinstance(skip, str):
        skip = SkipSet.from_json(skip)
    return SkipSet.from_dict(skip).validate(num_layers)


def parse_request(
    dec: "SwiftDecoder", input_ids: Any, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
    eos_token_id: int | Sequence[int] | None, seed: int | None, skip_set: SkipSet | dict | str | None,
    logits_processor: "LogitsProcessor | None", stop_strings: str | Sequence[str] | None, min_new_tokens: int,
    generation_config: "GenerationConfig | None", stopping_criteria: "Sequence[StoppingCriteria] | None",
) -> RequestArgs:
    """``SwiftDecoder.stream``'s arguments (see there) as the loop's values; raises on bad input."""
    from ..hf.prompt import parse_prompt  # str, ids, tensor, BatchEncoding / dict: see swiftsd.hf.prompt

    ids = parse_prompt(input_ids, dec.tokenizer, dec.model.get_input_embeddings().weight.shape[0])
    stop = None
    if stop_strings is not None or min_new_tokens or generation_config is not None or stopping_criteria:
        from ..hf.custom_generate import resolve_options  # stop strings, min_new_tokens, a GenerationConfig: as generate

        o = resolve_options(dec, len(ids), generation_config, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id,
                            min_new_tokens=min_new_tokens, stop_strings=stop_strings,
                            logits_processor=logits_processor, stopping_criteria=stopping_criteria)
        max_new_tokens, temperature, top_p, top_k = o.max_new_tokens, o.temperature, o.top_p, o.top_k
        eos_token_id, logits_processor, stop = o.eos_token_id, o.logits_processor, o.stop
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    limit = dec.adapter.max_positions
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise ContextLengthError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = {len(ids) + max_new_tokens} "
            f"exceeds the model's context of {limit} tokens; shorten the prompt or lower max_new_tokens"
        )
    if logits_processor is not None and not callable(logits_processor):
        raise InvalidArgumentError("logits_processor must be callable(input_ids, scores) -> scores")
    eos = frozenset(resolve_eos(dec.model, eos_token_id))
    skip = parse_skip(skip_set, dec.num_layers) if skip_set is not None else None
    seed = seed if seed is not None else random.getrandbits(63)
    return RequestArgs(ids, max_new_tokens, params, eos, seed, skip, logits_processor, stop)
