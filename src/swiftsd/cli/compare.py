"""``generate --compare``: plain ``model.generate`` on the same prompt and settings, timed beside swiftsd.

Both run once untimed first (:func:`warm_up`), swiftsd on a snapshot of what its decoder
knew, so neither side's timed run starts with anything the other lacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import progress
from ..config import SamplingParams

if TYPE_CHECKING:
    import torch

    from ..core.decoder import SwiftDecoder
    from ..core.run import GenerationResult

WARMUP_TOKENS = 8  # tokens each method generates once, untimed, before the timed runs


@dataclass(frozen=True)
class Comparison:
    """Plain ``model.generate`` against SWIFT on the same prompt and settings."""

    plain_tokens: int
    plain_seconds: float
    swift_tokens: int
    swift_seconds: float
    identical: bool | None  # None when sampling: two draws need not agree
    first_difference: int | None  # index into the new tokens, greedy only

    @property
    def plain_tok_s(self) -> float:
        return self.plain_tokens / self.plain_seconds if self.plain_seconds > 0 else 0.0

    @property
    def swift_tok_s(self) -> float:
        return self.swift_tokens / self.swift_seconds if self.swift_seconds > 0 else 0.0

    @property
    def ratio(self) -> float:
        """SWIFT speed / plain speed (> 1 means SWIFT is faster)."""
        return self.swift_tok_s / self.plain_tok_s if self.plain_tok_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(plain_tokens=self.plain_tokens, plain_seconds=self.plain_seconds, plain_tok_s=self.plain_tok_s,
                    swift_tokens=self.swift_tokens, swift_seconds=self.swift_seconds, swift_tok_s=self.swift_tok_s,
                    ratio=self.ratio, identical=self.identical, first_difference=self.first_difference)

    def summary(self) -> str:
        if self.identical is None:
            same = "n/a (sampling: two independent draws)"
        elif self.identical:
            same = "yes"
        else:
            same = f"NO (first difference at new token {self.first_difference})"
        return (f"plain {self.plain_tok_s:.1f} tok/s ({self.plain_tokens} tokens in {self.plain_seconds:.2f}s), "
                f"swiftsd {self.swift_tok_s:.1f} tok/s ({self.swift_tokens} tokens in {self.swift_seconds:.2f}s), "
                f"ratio {self.ratio:.2f}x; outputs identical: {same}")


def warm_up(decoder: "SwiftDecoder", model: Any, ids: list[int], gen_kwargs: dict, params: SamplingParams,
            seed: int | None) -> None:
    """``--compare``: run both methods untimed (first-call costs: kernels, allocations, lazy imports), then
    give the decoder back what it knew before, so the timed run learns nothing from the warm-up that plain
    ``generate`` cannot (the suffix index would replay the warm-up's tokens on the same prompt).

    The device's cost model, once measured, is kept: it is timing, not learning."""
    n = min(WARMUP_TOKENS, gen_kwargs["max_new_tokens"])
    learned = decoder.state_dict()
    decoder.generate(ids, **dict(gen_kwargs, max_new_tokens=n))
    decoder.load_state_dict(learned)
    plain_generate(model, ids, n, params, _eos(model), seed)


def _eos(model: Any) -> list[int] | None:
    """The model's EOS ids as ``model.generate`` takes them (None: no EOS)."""
    from ..hf.eos import resolve_eos

    return sorted(resolve_eos(model)) or None


class _BarStreamer:
    """A ``model.generate`` streamer that only moves a progress bar (the first put is the prompt)."""

    def __init__(self, pbar: Any) -> None:
        self.pbar, self.seen_prompt = pbar, False

    def put(self, value: torch.Tensor) -> None:
        if self.seen_prompt:
            self.pbar.update(int(value.numel()))
        self.seen_prompt = True

    def end(self) -> None:
        self.pbar.close()


def plain_generate(model: Any, ids: list[int], max_new_tokens: int, params: SamplingParams,
                   eos: list[int] | None, seed: int | None, bar: str | None = None, tokenizer: Any = None,
                   ends: dict | None = None) -> torch.Tensor:
    """Plain ``model.generate`` with exactly the processors SWIFT applies, nothing from the model's defaults.

    A model's generation_config may carry a repetition penalty, a default
    top_k or min_p; those would change the output, so they are set to neutral.
    ``ends``: the run's ``stop_strings`` (with ``tokenizer``) and ``min_new_tokens``.
    """
    import torch

    dev = model.get_input_embeddings().weight.device
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    gc = getattr(model, "generation_config", None)
    pad = getattr(gc, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos, pad_token_id=pad,
                              repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, epsilon_cutoff=0.0,
                              eta_cutoff=0.0, num_beams=1)
    if ends:
        kw["min_new_tokens"] = ends.get("min_new_tokens") or 0
        if ends.get("stop_strings"):
            kw.update(stop_strings=ends["stop_strings"], tokenizer=tokenizer)
    if params.greedy:
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if seed is not None:
            torch.manual_seed(seed)
    if bar is not None and progress.enabled():
        kw["streamer"] = _BarStreamer(progress.bar(desc=bar, total=max_new_tokens, unit="tok", leave=False))
    with torch.inference_mode():
        return model.generate(x, attention_mask=torch.ones_like(x), **kw)


def compare_with_plain(model: Any, ids: list[int], result: "GenerationResult", params: SamplingParams,
                       seed: int | None, tokenizer: Any = None, ends: dict | None = None) -> Comparison:
    """Time plain decoding of the same request (same stop strings, min_new_tokens) and compare it with ``result``."""
    n_new = result.stats.new_tokens
    t0 = time.perf_counter()
    plain = plain_generate(model, ids, n_new, params, _eos(model), seed, bar="plain", tokenizer=tokenizer, ends=ends)
    seconds = time.perf_counter() - t0
    plain_new = plain[0, len(ids):].tolist()
    identical: bool | None = None
    first: int | None = None
    if params.greedy:
        ours = result.new_tokens
        identical = plain_new == ours
        if not identical:
            first = next((i for i, (a, b) in enumerate(zip(plain_new, ours)) if a != b), min(len(plain_new), len(ours)))
    return Comparison(plain_tokens=len(plain_new), plain_seconds=seconds, swift_tokens=n_new,
                      swift_seconds=result.stats.wall_time, identical=identical, first_difference=first)
