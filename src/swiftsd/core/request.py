"""One request, typed: the caller's arguments and the model's facts in, one frozen :class:`Request` out.

``SwiftDecoder.stream`` takes ``model.generate``'s habits (a prompt in any form, stop
strings, a ``GenerationConfig``, stopping criteria). :meth:`Request.build` turns them into
the few values the loop needs, once, and raises a one-line error naming the problem and
the fix for bad ones. It needs the model's :class:`ModelFacts`, never the decoder, so the
CLI, the server, the bench and ``tune`` build the same type the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..config import SamplingParams
from ..engine.skipset import SkipSet
from ..errors import ContextLengthError
from ..hf.options import GenerateArgs, LogitsProcessor, resolve_options
from ..hf.prompt import parse_prompt

if TYPE_CHECKING:
    from ..engine.models import DecoderAdapter

StopHook = Callable[[list[int], int], "int | None"]  # (tokens, n_new) -> how many new tokens to keep, if it ends


@dataclass(frozen=True)
class ModelFacts:
    """What parsing a request needs to know about the model, read once when the decoder is built."""

    tokenizer: Any  # for text prompts and stop strings; None: token ids only
    vocab_size: int  # rows of the input embedding: a prompt id must be below it
    max_positions: int | None  # the model's context length, if it states one
    default_eos: Any  # the generation config's eos_token_id (an id, ids or None)
    num_layers: int  # for checking skip sets

    @classmethod
    def of(cls, model: Any, tokenizer: Any, adapter: "DecoderAdapter") -> "ModelFacts":
        return cls(tokenizer=tokenizer, vocab_size=int(model.get_input_embeddings().weight.shape[0]),
                   max_positions=adapter.max_positions, num_layers=adapter.num_layers,
                   default_eos=getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def parse_skip(skip: SkipSet | dict | str, num_layers: int) -> SkipSet:
    """A skip set from a SkipSet, its dict or its JSON, checked against the model's layers."""
    if isinstance(skip, str):
        skip = SkipSet.from_json(skip)
    return SkipSet.from_dict(skip).validate(num_layers)


@dataclass(frozen=True)
class Request:
    """What the loop decodes: the prompt's ids and every setting, resolved and validated."""

    ids: tuple[int, ...]
    max_new_tokens: int
    params: SamplingParams
    eos: frozenset[int]
    seed: int
    skip: SkipSet | None  # a fixed draft skip set for this request (the optimiser's otherwise)
    processor: LogitsProcessor | None
    stop: StopHook | None

    @classmethod
    def build(cls, facts: ModelFacts, input_ids: Any, args: GenerateArgs | None = None) -> "Request":
        """Parse the prompt, merge ``args`` with its GenerationConfig and defaults, validate; raises on bad input."""
        args = (args or GenerateArgs()).check()
        ids = parse_prompt(input_ids, facts.tokenizer, facts.vocab_size)
        o = resolve_options(args, len(ids), facts.tokenizer, facts.default_eos)
        GenerateArgs(max_new_tokens=o.max_new_tokens).check()  # a config's max_length may leave no room
        limit = facts.max_positions
        if limit is not None and len(ids) + o.max_new_tokens > limit:
            raise ContextLengthError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({o.max_new_tokens}) = {len(ids) + o.max_new_tokens} "
                f"exceeds the model's context of {limit} tokens; shorten the prompt or lower max_new_tokens"
            )
        params = SamplingParams(temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)
        skip = parse_skip(args.skip_set, facts.num_layers) if args.given("skip_set") else None
        seed = args.get("seed", random.getrandbits(63))
        return cls(tuple(ids), o.max_new_tokens, params, o.eos, seed, skip, o.logits_processor, o.stop)
