"""The keyword arguments of ``SwiftDecoder.generate`` / ``stream``, merged with a ``GenerationConfig``.

:class:`GenerateArgs` is the one definition of those arguments (names, types, defaults):
``generate`` and ``stream`` take them as keywords and show this signature. An argument the
caller did not give is :data:`UNSET` (``None`` counts as not given, as in ``model.generate``),
so one given at its default value still wins over a ``GenerationConfig``: "equals the
default" is never read as "not given". :meth:`GenerateArgs.check` validates what needs no
model, once, for every edge (API, CLI, server, bench, tune); :func:`resolve_options` merges
call, config and :data:`DEFAULTS` as ``generate`` does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..config import GREEDY_BELOW, SamplingParams
from ..errors import InvalidArgumentError
from .eos import eos_ids
from .processors import TreeProcessors
from .stopping import StopCheck, parse_stop_strings, stop_string_criteria

if TYPE_CHECKING:
    from transformers import GenerationConfig, StoppingCriteria

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Unset:
    """The type of :data:`UNSET`: one object, so ``x is UNSET`` is the test."""

    _it: "_Unset | None" = None

    def __new__(cls) -> "_Unset":
        if cls._it is None:
            cls._it = super().__new__(cls)
        return cls._it

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

# What an argument that neither the call nor the GenerationConfig gives becomes.
DEFAULTS: Mapping[str, Any] = MappingProxyType(dict(max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0,
                                                    min_new_tokens=0))


@dataclass(frozen=True)
class GenerateArgs:
    """``generate`` / ``stream`` keyword arguments as given; :data:`UNSET` (or ``None``): not given.

    ``max_new_tokens`` (default 128); ``temperature`` (0 = greedy), ``top_p`` (1.0), ``top_k``
    (0 = off); ``eos_token_id`` (an id or ids; default: the model's generation config);
    ``seed`` (sampling; default random); ``skip_set`` (a fixed draft skip set for this call:
    SkipSet, dict or JSON); ``logits_processor``: an HF-style ``proc(input_ids [k, L], scores
    [k, V])`` applied to the target's logits of every verified node with that node's own
    prefix, which then does the warping (the decoder samples from softmax(processed scores)
    when temperature > 0); ``stop_strings``; ``min_new_tokens`` (0); ``generation_config``
    (a ``GenerationConfig``: its fields fill what the call does not give);
    ``stopping_criteria`` (HF ``StoppingCriteria``, asked after every token).
    """

    max_new_tokens: int = UNSET
    temperature: float = UNSET
    top_p: float = UNSET
    top_k: int = UNSET
    eos_token_id: "int | Sequence[int] | None" = UNSET
    seed: "int | None" = UNSET
    skip_set: Any = UNSET
    logits_processor: "LogitsProcessor | None" = UNSET
    stop_strings: "str | Sequence[str] | None" = UNSET
    min_new_tokens: int = UNSET
    generation_config: "GenerationConfig | None" = UNSET
    stopping_criteria: "Sequence[StoppingCriteria] | None" = UNSET

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, UNSET)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "GenerateArgs":
        """The arguments of one call; an unknown name is refused with the list of known ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(k for k in kwargs if k not in names)
        if unknown:
            raise InvalidArgumentError(f"unknown generate argument(s) {', '.join(unknown)}; "
                                       f"swiftsd takes {', '.join(names)}")
        return cls(**kwargs)

    def given(self, name: str) -> bool:
        return getattr(self, name) is not UNSET

    def get(self, name: str, default: Any = None) -> Any:
        """The value given, else ``default``."""
        value = getattr(self, name)
        return default if value is UNSET else value

    def check(self, spell: Callable[[str], str] = str) -> "GenerateArgs":
        """Validate every argument that needs no model (one message each, naming the fix); returns self.

        ``spell`` names an argument in messages as the caller knows it (the CLI: ``--max-new-tokens``)."""
        n = self.get("max_new_tokens", DEFAULTS["max_new_tokens"])
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"{spell('max_new_tokens')} must be an integer >= 1, got {n!r}")
        m = self.get("min_new_tokens", DEFAULTS["min_new_tokens"])
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise InvalidArgumentError(f"{spell('min_new_tokens')} must be an integer >= 0, got {m!r}")
        SamplingParams(**{k: self.get(k, DEFAULTS[k]) for k in ("temperature", "top_p", "top_k")})
        seed = self.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidArgumentError(f"{spell('seed')} must be an integer, got {seed!r}")
        proc = self.get("logits_processor")
        if proc is not None and not callable(proc):
            raise InvalidArgumentError("logits_processor must be callable(input_ids, scores) -> scores")
        parse_stop_strings(self.get("stop_strings"))
        return self

    def as_kwargs(self) -> dict[str, Any]:
        """The arguments given, as keywords for ``generate`` / ``stream``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if self.given(f.name)}

    @classmethod
    def bind(cls, owner: type, returns: Mapping[str, Any]) -> None:
        """Show these arguments as the signature of ``owner``'s ``(self, input_ids, **kwargs)`` methods named
        in ``returns`` (name -> return type): ``help()`` and IDEs see one copy of them, this one."""
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        head = [inspect.Parameter("self", kind), inspect.Parameter("input_ids", kind, annotation=Any)]
        for name, ret in returns.items():
            getattr(owner, name).__signature__ = cls.signature(head, ret)

    @classmethod
    def signature(cls, head: Sequence[inspect.Parameter], returns: Any) -> inspect.Signature:
        """``head`` then these arguments as keyword-only, for ``generate`` / ``stream``'s ``__signature__``."""
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.type)
                  for f in fields(cls)]
        return inspect.Signature([*head, *params], return_annotation=returns)


@dataclass(frozen=True)
class Options:
    """One call's merged values: what the loop decodes with, after the config, stops and min_new_tokens."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    eos: frozenset[int]
    logits_processor: "LogitsProcessor | None"
    stop: StopCheck | None  # asked after every token (the decoder's stop hook)


# GenerationConfig fields dec.generate/stream honour; model.generate(custom_generate=...) honours all of generate's.
CONFIG_FIELDS = frozenset({
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_p", "top_k",
    "min_p", "repetition_penalty", "no_repeat_ngram_size", "eos_token_id", "stop_strings", "max_time",
    "pad_token_id", "bos_token_id", "num_beams", "num_return_sequences", "use_cache", "cache_implementation",
    "transformers_version", "_from_model_config",
})


def resolve_options(args: GenerateArgs, prompt_len: int, tokenizer: Any, default_eos: Any) -> Options:
    """Merge ``args.generation_config`` into the call's arguments, as ``model.generate`` does.

    An argument given in the call wins; else the config's field; else :data:`DEFAULTS`.
    Penalties and minimum lengths become HF's own processors, applied per tree node;
    fields outside :data:`CONFIG_FIELDS` are refused. ``default_eos`` is the model's
    generation config's ``eos_token_id``, used when neither the call nor the config names one.
    """
    config = args.get("generation_config")
    gc: dict[str, Any] = config.to_diff_dict() if config is not None else {}
    unknown = sorted(k for k in gc if k not in CONFIG_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"dec.generate does not take GenerationConfig field(s) {', '.join(unknown)}; "
                                   "use model.generate(..., custom_generate=dec.custom_generate), which takes them all")
    if (gc.get("num_beams") or 1) > 1 or (gc.get("num_return_sequences") or 1) > 1:
        raise InvalidArgumentError("swiftsd decodes one sequence greedily or by sampling: num_beams and "
                                   "num_return_sequences must be 1; loop to get several samples")

    def pick(name: str, from_config: Any) -> Any:
        if args.given(name):
            return getattr(args, name)
        return from_config if from_config is not None else DEFAULTS.get(name)

    max_len = gc.get("max_length")
    max_new = pick("max_new_tokens", gc.get("max_new_tokens", max_len - prompt_len if max_len else None))
    sample = gc.get("do_sample") is True
    temperature = pick("temperature", (gc.get("temperature") or 1.0) if sample else None)
    top_p = pick("top_p", gc.get("top_p") if sample else None)
    top_k = pick("top_k", gc.get("top_k") if sample else None)
    eos = eos_ids(pick("eos_token_id", gc.get("eos_token_id")), default_eos)
    min_new = pick("min_new_tokens", gc.get("min_new_tokens"))
    if isinstance(min_new, bool) or not isinstance(min_new, int) or min_new < 0:
        raise InvalidArgumentError(f"min_new_tokens must be an integer >= 0, got {min_new!r}")
    stops = parse_stop_strings(pick("stop_strings", gc.get("stop_strings")))

    criteria: list[Any] = list(args.get("stopping_criteria") or ())
    if stops:
        criteria.append(stop_string_criteria(tokenizer, stops))
    if gc.get("max_time") is not None:
        from transformers import MaxTimeCriteria

        criteria.append(MaxTimeCriteria(float(gc["max_time"])))
    before = _length_processors(prompt_len, min_new, gc.get("min_length") or 0, gc.get("repetition_penalty"),
                                gc.get("no_repeat_ngram_size"), sorted(eos))
    proc = args.get("logits_processor")
    if before or gc.get("min_p") is not None:
        procs = before + ([proc] if proc is not None else [])
        greedy = temperature < GREEDY_BELOW  # as SamplingParams.greedy: 0 and any vanishing temperature
        if not greedy:
            procs += _warpers(temperature, top_p, top_k, gc.get("min_p"))
        proc = TreeProcessors(procs)
        temperature, top_p, top_k = (0.0 if greedy else 1.0), 1.0, 0  # the list holds the warpers
    return Options(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k, eos=frozenset(eos),
                   logits_processor=proc, stop=StopCheck(criteria) if criteria else None)


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
