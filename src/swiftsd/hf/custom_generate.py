"""``model.generate(**inputs, custom_generate=dec.custom_generate)``: Hugging Face prepares, swiftsd decodes.

transformers 5 accepts a callable ``custom_generate``: ``generate`` validates its
arguments, merges the generation config, builds the logits processors and the
stopping criteria as usual, puts the prompt to the streamer, and then calls
``custom_generate(model, input_ids, logits_processor=, stopping_criteria=,
generation_config=, **model_kwargs)`` in place of its own loop, returning what
that returns: a LongTensor ``[1, prompt+new]``, or a ``GenerateDecoderOnlyOutput``
under ``return_dict_in_generate``. :class:`CustomGenerate` is that callable.

How each piece stays exact:

* logits processors run on the full model's logits of every verified tree node,
  each row with that node's own prefix (the decoder's ``logits_processor`` hook),
  so sequence-dependent ones (repetition penalty, no-repeat n-gram, bad words,
  min length) see what plain decoding would show them; the ``do_sample`` warpers
  are in the list, and the decoder samples from ``softmax(processed scores)``.
  Processors that need a doubled batch, run their own model or keep state
  across calls are refused by name (:data:`REFUSED`).
* stopping criteria (``max_length``, EOS, ``stop_strings``, ``max_time``, your
  own) are asked after every token of a step, in order (stopping.StopCheck),
  and the output ends on the token where plain ``generate`` would end.
* the streamer gets each step's kept tokens as one ``[1, k]`` tensor (as HF's
  assisted decoding puts them), then ``end()``; ``generate`` has put the prompt.

Two gaps in transformers 5.24 are worked around, not patched: a callable
``custom_generate`` is called without the ``streamer`` it was given (it is read
from ``generate``'s own frame), and ``tokenizer=`` is dropped before the stop
strings are built (so :class:`CustomGenerate` takes ``stop_strings`` itself and
uses the decoder's tokenizer). With ``return_dict_in_generate`` the output's
``cache`` is None: swiftsd's cache is its own, not a transformers ``Cache``.

``options.py`` gives ``dec.generate/stream`` the same habits: ``stop_strings``,
``min_new_tokens``, ``stopping_criteria`` and a ``GenerationConfig``.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence

import torch

from ..config import GREEDY_BELOW
from ..errors import InvalidArgumentError
from .processors import TreeProcessors
from .stopping import parse_stop_strings, stop_string_criteria

if TYPE_CHECKING:
    from transformers import GenerationConfig


class StreamingDecoder(Protocol):
    """What the callable needs of a decoder (``SwiftDecoder``): its model, tokenizer and ``stream``."""

    model: Any
    tokenizer: Any

    def stream(self, input_ids: Any, **kwargs: Any) -> Iterable[list[int]]: ...


# model_kwargs generate prepares for its own loop; swiftsd runs the model itself and needs none of them.
IGNORED_MODEL_KWARGS = frozenset({"attention_mask", "position_ids", "logits_to_keep", "use_cache", "cache",
                                  "past_key_values", "cache_position"})


class CustomGenerate:
    """The ``custom_generate`` callable bound to one :class:`SwiftDecoder` (whose learned state it uses)."""

    def __init__(self, decoder: "StreamingDecoder") -> None:
        self.decoder = decoder

    def __call__(self, model: Any, input_ids: torch.Tensor, logits_processor: Sequence[Any] | None = None,
                 stopping_criteria: Sequence[Any] | None = None, generation_config: "GenerationConfig | None" = None,
                 synced_gpus: bool = False, streamer: Any = None, stop_strings: str | Sequence[str] | None = None,
                 **model_kwargs: Any) -> Any:
        """Called by ``generate`` (the signature it calls with); returns what ``generate`` returns."""
        found = _from_generate_frame()
        streamer = streamer if streamer is not None else found.get("streamer")
        try:
            return self._generate(model, input_ids, list(logits_processor or ()), list(stopping_criteria or ()),
                                  generation_config, synced_gpus, streamer, stop_strings, found, model_kwargs)
        finally:
            if streamer is not None:  # as generate does; on a refusal too, so no TextIteratorStreamer waits forever
                streamer.end()

    def _generate(self, model: Any, input_ids: torch.Tensor, processors: list, criteria: list,
                  gc: "GenerationConfig | None", synced_gpus: bool, streamer: Any,
                  stop_strings: str | Sequence[str] | None, found: dict, model_kwargs: dict) -> Any:
        dec = self.decoder
        if gc is None:
            raise InvalidArgumentError("dec.custom_generate is called by model.generate(..., custom_generate="
                                       "dec.custom_generate); to generate directly, use dec.generate")
        check_call(dec, model, input_ids, gc, synced_gpus, found, model_kwargs)
        if parse_stop_strings(stop_strings):
            criteria.append(stop_string_criteria(dec.tokenizer, stop_strings))
        sample = bool(gc.do_sample)
        if sample and gc.temperature is not None and gc.temperature < GREEDY_BELOW:
            # greedy, as swiftsd decodes any temperature under GREEDY_BELOW (HF's own warper would divide
            # the scores by it: +inf for every positive logit, and generate itself fails on the NaN)
            from transformers import TemperatureLogitsWarper

            sample, processors = False, [p for p in processors if not isinstance(p, TemperatureLogitsWarper)]
        record = bool(gc.return_dict_in_generate and (gc.output_scores or gc.output_logits))
        procs = TreeProcessors(processors, record) if processors or record else None
        prompt = input_ids[0].tolist()
        if procs is not None:
            procs.base = len(prompt)
        eos = gc._eos_token_tensor  # generate's resolved EOS ids (generation config, model defaults)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gc.max_length - len(prompt), temperature=1.0 if sample else 0.0,
            eos_token_id=[] if eos is None else eos.reshape(-1).tolist(), stopping_criteria=criteria,
            # sampling draws its seed from torch's global generator, so torch.manual_seed(...) repeats a run
            seed=int(torch.randint(0, 2**62, (1,))) if sample else None)
        if procs is not None:
            kwargs["logits_processor"] = procs
        new = _decode(dec.stream(prompt, **kwargs), procs, streamer)
        seq = torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)], dim=1)
        if not gc.return_dict_in_generate:
            return seq
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(
            sequences=seq, scores=tuple(procs.scores) if procs is not None and gc.output_scores else None,
            logits=tuple(procs.logits) if procs is not None and gc.output_logits else None)


def _decode(stream: Any, procs: TreeProcessors | None, streamer: Any) -> list[int]:
    """Run the stream (its steps already end where the stopping criteria end them); put each to the streamer."""
    new: list[int] = []
    for step in stream:
        if procs is not None:
            procs.commit(step)
        new += step
        if streamer is not None and step:
            streamer.put(torch.tensor([step], dtype=torch.long))
    return new


def check_call(dec: "StreamingDecoder", model: Any, input_ids: torch.Tensor, gc: "GenerationConfig", synced_gpus: bool,
               found: dict, model_kwargs: dict) -> None:
    """Refuse, with one clear message each, what swiftsd cannot do exactly."""
    if model is not dec.model:
        raise InvalidArgumentError("this SwiftDecoder was built for another model; build SwiftDecoder(model, "
                                   "tokenizer) for the model whose generate you call")
    extra = sorted(k for k, v in model_kwargs.items() if k not in IGNORED_MODEL_KWARGS and v is not None)
    if extra:
        raise InvalidArgumentError(f"swiftsd's custom_generate takes token ids only; it cannot use {', '.join(extra)}")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        raise InvalidArgumentError("the attention_mask hides some prompt tokens (padding); swiftsd decodes one "
                                   "unpadded sequence: pass the prompt without padding")
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
        raise InvalidArgumentError("a pre-filled cache was passed; swiftsd keeps its own cache: leave cache out")
    mode = str(gc.get_generation_mode(found.get("assistant_model")).value)
    if mode == "assisted_generation":
        raise InvalidArgumentError("assistant_model / prompt_lookup_num_tokens / use_mtp choose HF's assisted "
                                   "decoding; swiftsd drafts by itself: leave them out")
    if mode not in ("greedy_search", "sample"):
        raise InvalidArgumentError(f"swiftsd does greedy decoding and sampling, not {mode.replace('_', ' ')} "
                                   "(num_beams, penalty_alpha, constraints, dola_layers): leave those out")
    if input_ids.shape[0] != 1:
        why = f" (num_return_sequences={gc.num_return_sequences})" if (gc.num_return_sequences or 1) > 1 else ""
        raise InvalidArgumentError(f"swiftsd's custom_generate decodes one sequence, got a batch of "
                                   f"{input_ids.shape[0]}{why}; loop over the prompts, or use the server "
                                   "(`swiftsd serve`), which queues requests")
    if input_ids.shape[1] == 0:
        raise InvalidArgumentError("the prompt is empty: give at least one token")
    if synced_gpus or found.get("synced_gpus"):
        raise InvalidArgumentError("synced_gpus is not supported: swiftsd decodes on one device")
    if gc.return_dict_in_generate and (gc.output_attentions or gc.output_hidden_states):
        raise InvalidArgumentError("output_attentions / output_hidden_states are not available: the full model "
                                   "reads whole token trees, never one token at a time; output_scores and "
                                   "output_logits are")


def _from_generate_frame() -> dict[str, Any]:
    """``streamer``, ``assistant_model`` and ``synced_gpus`` as given to ``generate``, read from its frame.

    transformers 5.24 rebuilds the mode arguments of a callable ``custom_generate``
    from that callable's own extra parameters, dropping the standard ones, so
    neither arrives; ``generate`` is our direct caller (or nearly, through a
    wrapper), and its locals hold them unchanged. Read only, nothing is patched.
    """
    from transformers.generation.utils import GenerationMixin

    code = inspect.unwrap(GenerationMixin.generate).__code__
    frame = sys._getframe(1)
    for _ in range(4):
        frame = frame.f_back
        if frame is None:
            break
        if frame.f_code is code:
            return {k: frame.f_locals.get(k) for k in ("streamer", "assistant_model", "synced_gpus")}
    return {}
