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

:func:`resolve_options` gives ``dec.generate/stream`` the same habits:
``stop_strings``, ``min_new_tokens``, ``stopping_criteria`` and a ``GenerationConfig``.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ..config import GREEDY_BELOW
from ..errors import InvalidArgumentError
from .stopping import StopCheck, parse_stop_strings, stop_string_criteria
from .eos import resolve_eos

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from ..core.decoder import SwiftDecoder

# Processors that treat every row on its own and keep no per-batch state: called on all k rows at once.
BATCHED = frozenset({
    "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper", "TypicalLogitsWarper",
    "EpsilonLogitsWarper", "EtaLogitsWarper", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "NoRepeatNGramLogitsProcessor", "SequenceBiasLogitsProcessor", "NoBadWordsLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor", "InfNanRemoveLogitsProcessor",
    "ExponentialDecayLengthPenalty", "LogitNormalization", "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
})
# Processors whose result on a tree node cannot equal plain decoding's, and why.
REFUSED = {
    "ClassifierFreeGuidanceLogitsProcessor": "it needs the unconditional half of a doubled batch",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": "it runs its own model with its own cache, one token at a time",
    "SynthIDTextWatermarkLogitsProcessor": "it keeps watermarking state from one call to the next",
    "WhisperTimeStampLogitsProcessor": "it is for Whisper's encoder-decoder timestamps",
    "WhisperNoSpeechDetection": "it is for Whisper and keeps state between calls",
    "AlternatingCodebooksLogitsProcessor": "it is for Bark's codebooks",
    "BarkEosPrioritizerLogitsProcessor": "it is for Bark",
    "DiaClassifierFreeGuidanceLogitsProcessor": "it needs a doubled batch",
    "DiaEOSChannelFilterLogitsProcessor": "it is for Dia's audio channels",
    "DiaEOSDelayPatternLogitsProcessor": "it keeps per-batch state between calls",
}
# model_kwargs generate prepares for its own loop; swiftsd runs the model itself and needs none of them.
IGNORED_MODEL_KWARGS = frozenset({"attention_mask", "position_ids", "logits_to_keep", "use_cache", "cache",
                                  "past_key_values", "cache_position"})


def check_processors(processors: Sequence[Any]) -> None:
    """Refuse, by name, any processor that cannot be applied exactly per tree node."""
    for p in processors:
        name = type(p).__name__
        if name in REFUSED:
            raise InvalidArgumentError(f"swiftsd cannot apply {name} exactly ({REFUSED[name]}); "
                                       "generate without it, or without custom_generate")
        if not callable(p):
            raise InvalidArgumentError(f"a logits processor must be callable (input_ids, scores) -> scores, got {name}")


class TreeProcessors:
    """HF logits processors applied to the rows the decoder hands over (one row per tree node).

    Rows arrive as ``input_ids [k, L]`` (each node's prefix, prompt included) and
    ``scores [k, V]`` (the full model's logits there). Processors in
    :data:`BATCHED` see all k rows at once; any other processor sees one row at a
    time, as in a batch of one, so one written for ``generate`` needs no change.
    With ``record`` it keeps each row's raw and processed scores, keyed by the
    row's tokens after ``base``, for ``output_scores`` / ``output_logits``.
    """

    def __init__(self, processors: Sequence[Any], record: bool = False) -> None:
        check_processors(processors)
        self.processors = list(processors)
        self.record = record
        self.base = 0  # committed length when the current step began
        self._rows: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.scores: list[torch.Tensor] = []  # per committed token: processed scores [1, V]
        self.logits: list[torch.Tensor] = []  # per committed token: raw logits [1, V]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        out = scores.to(torch.float32, copy=True)  # as generate does: processors may write in place
        for p in self.processors:
            if type(p).__name__ in BATCHED:
                out = p(input_ids, out)
            else:
                out = torch.cat([p(input_ids[i : i + 1], out[i : i + 1]) for i in range(out.shape[0])])
        if self.record:
            for i, row in enumerate(input_ids.tolist()):
                self._rows[tuple(row[self.base :])] = (raw[i : i + 1].clone(), out[i : i + 1].clone())
        return out

    def commit(self, step: Sequence[int]) -> None:
        """Keep the scores of the step's committed tokens (found by their prefixes); start the next step."""
        if self.record:
            for i in range(len(step)):
                raw, processed = self._rows[tuple(step[:i])]
                self.logits.append(raw)
                self.scores.append(processed)
            self._rows.clear()
        self.base += len(step)


class CustomGenerate:
    """The ``custom_generate`` callable bound to one :class:`SwiftDecoder` (whose learned state it uses)."""

    def __init__(self, decoder: "SwiftDecoder") -> None:
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


def check_call(dec: "SwiftDecoder", model: Any, input_ids: torch.Tensor, gc: "GenerationConfig", synced_gpus: bool,
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


# ------------------------------------------------------------------ swiftsd's own API: the same habits
# GenerationConfig fields dec.generate/stream honour; model.generate(custom_generate=...) honours all of generate's.
CONFIG_FIELDS = frozenset({
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_p", "top_k",
    "min_p", "repetition_penalty", "no_repeat_ngram_size", "eos_token_id", "stop_strings", "max_time",
    "pad_token_id", "bos_token_id", "num_beams", "num_return_sequences", "use_cache", "cache_implementation",
    "transformers_version", "_from_model_config",
})
# The decoder's own defaults: an argument left at its default takes the GenerationConfig's value.
DEFAULTS: dict[str, Any] = dict(max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0, eos_token_id=None,
                                min_new_tokens=0, stop_strings=None)


@dataclass(frozen=True)
class Options:
    """What one ``dec.generate/stream`` call decodes with, after the config, stop strings and min_new_tokens."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    eos_token_id: Any
    logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    stop: StopCheck | None  # asked after every token (the decoder's stop hook)


def resolve_options(dec: "SwiftDecoder", prompt_len: int, generation_config: "GenerationConfig | None" = None,
                    **args: Any) -> Options:
    """Merge ``generation_config`` into the keyword arguments of ``dec.generate/stream``.

    ``args`` are the call's ``max_new_tokens, temperature, top_p, top_k,
    eos_token_id, min_new_tokens, stop_strings, logits_processor,
    stopping_criteria`` (HF ``StoppingCriteria``, asked after every token). An argument
    left at its default takes the config's value (so, as with ``generate``, one
    you set wins). Penalties and minimum lengths become HF's own processors,
    applied per tree node; fields outside :data:`CONFIG_FIELDS` are refused.
    """
    a = {**DEFAULTS, "logits_processor": None, "stopping_criteria": None, **args}
    gc: dict[str, Any] = generation_config.to_diff_dict() if generation_config is not None else {}
    unknown = sorted(k for k in gc if k not in CONFIG_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"dec.generate does not take GenerationConfig field(s) {', '.join(unknown)}; "
                                   "use model.generate(..., custom_generate=dec.custom_generate), which takes them all")
    if (gc.get("num_beams") or 1) > 1 or (gc.get("num_return_sequences") or 1) > 1:
        raise InvalidArgumentError("swiftsd decodes one sequence greedily or by sampling: num_beams and "
                                   "num_return_sequences must be 1; loop to get several samples")

    def pick(name: str, value: Any) -> Any:
        return a[name] if a[name] != DEFAULTS[name] or value is None else value

    max_len = gc.get("max_length")
    max_new = pick("max_new_tokens", gc.get("max_new_tokens", max_len - prompt_len if max_len else None))
    sample = gc.get("do_sample") is True
    temperature = pick("temperature", (gc.get("temperature") or 1.0) if sample else None)
    top_p = pick("top_p", gc.get("top_p") if sample else None)
    top_k = pick("top_k", gc.get("top_k") if sample else None)
    eos = pick("eos_token_id", gc.get("eos_token_id"))
    min_new = pick("min_new_tokens", gc.get("min_new_tokens"))
    if isinstance(min_new, bool) or not isinstance(min_new, int) or min_new < 0:
        raise InvalidArgumentError(f"min_new_tokens must be an integer >= 0, got {min_new!r}")
    stops = parse_stop_strings(pick("stop_strings", gc.get("stop_strings")))

    criteria: list[Any] = list(a["stopping_criteria"] or ())
    if stops:
        criteria.append(stop_string_criteria(dec.tokenizer, stops))
    if gc.get("max_time") is not None:
        from transformers import MaxTimeCriteria

        criteria.append(MaxTimeCriteria(float(gc["max_time"])))
    eos_ids = resolve_eos(dec.model, eos)
    before = _length_processors(prompt_len, min_new, gc.get("min_length") or 0, gc.get("repetition_penalty"),
                                gc.get("no_repeat_ngram_size"), sorted(eos_ids))
    proc = a["logits_processor"]
    if before or gc.get("min_p") is not None:
        procs = before + ([proc] if proc is not None else [])
        greedy = temperature < GREEDY_BELOW  # as SamplingParams.greedy: 0 and any vanishing temperature
        if not greedy:
            procs += _warpers(temperature, top_p, top_k, gc.get("min_p"))
        proc = TreeProcessors(procs)
        temperature, top_p, top_k = (0.0 if greedy else 1.0), 1.0, 0  # the list holds the warpers
    return Options(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                   eos_token_id=sorted(eos_ids), logits_processor=proc, stop=StopCheck(criteria) if criteria else None)


def _length_processors(prompt_len: int, min_new: int, min_length: int, repetition_penalty: float | None,
                       no_repeat: int | None, eos: list[int]) -> list[Any]:
    """HF's sequence-dependent processors, in the order ``generate`` builds them."""
    from transformers import (MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor,
                              NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor)

    out: list[Any] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if no_repeat:
        out.append(NoRepeatNGramLogitsProcessor(int(no_repeat)))
    if min_length > 0 and eos:
        out.append(MinLengthLogitsProcessor(min_length, eos))
    if min_new > 0 and eos:
        out.append(MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos))
    return out


def _warpers(temperature: float, top_p: float, top_k: int, min_p: float | None) -> list[Any]:
    """HF's sampling warpers, in ``generate``'s order."""
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = [TemperatureLogitsWarper(float(temperature))] if temperature != 1.0 else []
    if top_k:
        out.append(TopKLogitsWarper(int(top_k)))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(float(top_p)))
    if min_p is not None:
        out.append(MinPLogitsWarper(float(min_p)))
    return out
