"""`swiftsd generate`: one prompt through SWIFT, optionally side by side with plain decoding.

Prints the generated text on stdout and a stats line (and, with ``--compare``,
the speed of plain ``model.generate`` on the same prompt, the ratio and whether
the outputs are identical) on stderr, so stdout stays the text. ``--json``
prints one JSON object on stdout instead. Every argument is validated before the
model is loaded, so a typo fails in milliseconds, not after a model load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .. import progress
from . import common as cli_common
from ..config import SamplingParams
from ..core.decoder import SwiftDecoder
from ..core.run import GenerationResult
from ..hf.detok import IncrementalDetokenizer
from ..hf.eos import resolve_eos
from ..errors import InvalidArgumentError
from ..hf.stopping import parse_stop_strings
from ..hf.options import GenerateArgs

WARMUP_TOKENS = 8  # --compare: tokens each method generates once, untimed, before the timed runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli_common.add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="makes sampling reproducible (default: a fresh random seed each run)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the output on the token that completes TEXT, which the output keeps, as "
                        "model.generate's stop_strings does (repeatable; default: none)")
    p.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                   help="no end-of-sequence before N new tokens, as model.generate's min_new_tokens")
    cli_common.add_skip_arguments(p)
    cli_common.add_decoder_arguments(p)
    p.add_argument("--stream", action="store_true", help="print the text as it is accepted")
    p.add_argument("--compare", action="store_true",
                   help="also run plain model.generate on the same prompt and compare speed and output")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, stats, comparison)")


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


def run(args: argparse.Namespace) -> int:
    """`swiftsd generate`: validate, load, decode (streamed or not), compare, report.

    Its numbered steps are the command's whole story, in the order a user sees them.
    """
    # 1. Validate everything that needs no model.
    prompt = cli_common.read_text_arg(args.prompt, "--prompt")
    stops = list(parse_stop_strings(args.stop))
    request = GenerateArgs(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, seed=args.seed, stop_strings=stops or None,
                           min_new_tokens=args.min_new_tokens).check(cli_common.flag)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    cli_common.check_skip_choice(args)
    if args.stream and args.json:
        raise InvalidArgumentError("--stream prints text as it comes and --json prints one object: pick one")
    cli_common.decoder_options(args)  # --method, --drafters

    # 2. Load the model; build the prompt and the decoder.
    model, tokenizer = cli_common.load_model(args)
    ids = encode_prompt(tokenizer, prompt, args.chat)
    decoder = cli_common.build_decoder(args, model, tokenizer)
    gen_kwargs = request.as_kwargs()
    ends = dict(stop_strings=stops or None, min_new_tokens=args.min_new_tokens)  # the same ends for plain generate

    # 3. Generate (after an untimed warm-up of both methods when comparing).
    _say(doing_line(args, model, len(ids), decoder.optimizer is not None and not _costs_cached(decoder)))
    cli_common.costs_before_bars(decoder)
    if args.compare:
        warm_up(decoder, model, ids, gen_kwargs, params, args.seed)
    if args.stream:  # the text itself is the progress
        result = _print_stream(decoder, tokenizer, ids, gen_kwargs)
    else:
        result = _generate_with_bar(decoder, ids, gen_kwargs)
    text = tokenizer.decode(result.new_tokens, skip_special_tokens=True)
    if not args.stream and not args.json:
        print(text, flush=True)

    # 4. Compare with plain decoding on the same prompt and settings.
    if args.compare:
        _say(f"now plain model.generate on the same prompt, for the comparison ({result.stats.new_tokens} tokens)")
    comparison = compare_with_plain(model, ids, result, params, args.seed, tokenizer, ends) if args.compare else None

    _report(args, decoder, result, text, prompt, len(ids), params, stops, comparison)
    return 0


def _report(args: argparse.Namespace, decoder: SwiftDecoder, result: Any, text: str, prompt: str,
            prompt_tokens: int, params: SamplingParams, stops: list[str], comparison: Any) -> None:
    """5. One JSON object on stdout (--json), else the stats, drafting and comparison lines on stderr."""
    if args.json:
        print(json.dumps(dict(
            model=args.model, method=args.method, drafters=list(decoder.config.drafters), prompt=prompt,
            chat=args.chat, prompt_tokens=prompt_tokens, text=text,
            tokens=result.new_tokens, sampling=dict(temperature=params.temperature, top_p=params.top_p,
                                                    top_k=params.top_k, seed=args.seed),
            stop=stops, min_new_tokens=args.min_new_tokens,
            stats=result.stats.to_dict(with_lists=False),
            compare=comparison.to_dict() if comparison else None), indent=2))
    else:
        print(f"[swiftsd] {stats_line(result.stats)}", file=sys.stderr)
        drafting = drafting_line(result.stats, decoder.optimizer is not None, "layerskip" in decoder.drafters)
        print(f"[swiftsd] {drafting}", file=sys.stderr)
        searched = result.stats.optimizer is not None and not {"layerskip_ceiling", "search_budget"} & set(
            result.stats.optimizer)
        if searched:  # the optimiser ran for this request: show its state
            print(f"[swiftsd] {decoder.optimizer.summary()}", file=sys.stderr)
        if comparison is not None:
            print(f"[compare] {comparison.summary()}", file=sys.stderr)


# ---------------------------------------------------------------------------- what is said
def _say(msg: str) -> None:
    print(f"swiftsd: {msg}", file=sys.stderr, flush=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _costs_cached(decoder: SwiftDecoder) -> bool:
    """Has this device's cost model been measured before (the decoder reads it back from the cache)?"""
    try:
        from ..engine.cost import cost_key
        from ..loading import cache_dir

        if not decoder.config.cost_cache:
            return False
        key = cost_key(decoder.adapter, decoder.config.draft_vocab)
    except (AttributeError, ImportError):
        return False
    return (cache_dir() / "costs" / f"{key}.json").is_file()


def doing_line(args: argparse.Namespace, model: Any, prompt_tokens: int, times_device: bool) -> str:
    """What happens next, said once the model is loaded (a first request can sit silent for seconds)."""
    dev = model.get_input_embeddings().weight
    what = (f"generating up to {_plural(args.max_new_tokens, 'new token')} after a {prompt_tokens}-token prompt "
            f"({str(dev.dtype).replace('torch.', '')}, {dev.device.type})")
    if times_device:
        what += "; first the optimiser times this device's layers (once; cached for later runs)"
    if args.compare:
        what += f"; --compare warms both methods up first ({WARMUP_TOKENS} untimed tokens each)"
    return what


def stats_line(stats: Any) -> str:
    """The request in one line: speed, steps and how many drafted tokens the full model accepted.

    Two counts, named apart because they differ on trees: acceptance is per position (tokens
    accepted / the deepest draft of each step, summed: Spec-Bench's measure); each drafter's is
    per tree node it proposed (a node two drafters proposed counts for both).
    """
    drafted, accepted = stats.draft_tokens, stats.accepted_tokens
    if drafted:
        acceptance = f"acceptance {accepted}/{drafted} draft positions ({accepted / drafted:.0%})"
        per = getattr(stats, "per_drafter", None) or {}
        parts = [f"{name} {d.get('accepted', 0)}/{d.get('proposed', 0)}" for name, d in per.items()
                 if d.get("proposed")]
        if parts:
            acceptance += f" (tree nodes accepted/proposed by drafter: {', '.join(parts)})"
    else:
        acceptance = "acceptance: nothing drafted"
    return (f"{_plural(stats.new_tokens, 'token')} in {stats.wall_time:.2f}s ({stats.tokens_per_s:.1f} tok/s), "
            f"{_plural(stats.steps, 'step')} ({stats.mean_accepted_tokens:.2f} tokens/step), {acceptance}; "
            f"time draft {stats.time_draft:.2f}s verify {stats.time_verify:.2f}s "
            f"optimise {stats.time_optimize:.2f}s other {stats.time_other + stats.time_prefill:.2f}s")


def _layerskip_drafted(stats: Any) -> bool:
    per = getattr(stats, "per_drafter", None) or {}
    if per:
        return bool(per.get("layerskip", {}).get("proposed"))
    return stats.skip_set is not None and stats.draft_tokens > 0


def drafting_line(stats: Any, optimizing: bool, layerskip: bool = True) -> str:
    """Whether the layer-skipped model drafted, and, when it did not, what that means and what to do
    (``layerskip``: the layer-skip drafter is on at all)."""
    if _layerskip_drafted(stats):
        return f"layer-skip drafts came from skip set {stats.skip_set} (the model without these sublayers)"
    if not layerskip:
        return "layer-skip drafting is off (not in --drafters); " + (
            "the other drafters drafted" if stats.draft_tokens else "nothing was drafted: every step decoded plainly")
    others = "; the other drafters (prompt lookup, suffix) drafted" if stats.draft_tokens else \
        ", and every step decoded plainly"
    ceiling = (getattr(stats, "optimizer", None) or {}).get("layerskip_ceiling")
    if optimizing and ceiling is not None:
        return (f"drafting off: by this device's measured costs a layer-skipped draft cannot pay even at 80% "
                f"acceptance (at best {ceiling:.2f}x plain: verifying a tree costs too much here), so the "
                f"optimiser does not search{others} (the output is the same either way)")
    if optimizing and "search_budget" in (getattr(stats, "optimizer", None) or {}):
        return (f"drafting off: the layer-skipped draft has not earned back the time its search took (it gained "
                f"too little over the other drafters), so the optimiser stopped searching{others} (the output "
                "is the same either way)")
    if optimizing:
        return (f"drafting off: in this run the optimizer found no skip set that makes a layer-skipped draft pay, "
                f"so no step used one{others} (the output is the same either way). One run is short for a search: "
                "`swiftsd tune --out sets.json` searches over a stream of prompts (built-in ones, or --data FILE), "
                "then pass --skip-set-store sets.json")
    return f"drafting off: the layer-skipped model drafted nothing{others} (the output is the same either way)"


# ---------------------------------------------------------------------------- pieces
def warm_up(decoder: SwiftDecoder, model: Any, ids: list[int], gen_kwargs: dict, params: SamplingParams,
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


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt, through the chat template (with the assistant header) if ``chat``."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgumentError(
                "--chat needs a tokenizer with a chat template, and this model's tokenizer has none; "
                "drop --chat and write the prompt in the model's own format")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def _generate_with_bar(decoder: SwiftDecoder, ids: list[int], gen_kwargs: dict) -> GenerationResult:
    """``decoder.generate`` with a progress bar (on a terminal) that counts the accepted tokens."""
    stream = decoder.stream(ids, **gen_kwargs)
    with progress.bar(desc="swiftsd", total=gen_kwargs["max_new_tokens"], unit="tok", leave=False) as pbar:
        for chunk in stream:
            pbar.update(len(chunk))
    assert stream.result is not None
    return stream.result


def _print_stream(decoder: SwiftDecoder, tokenizer: Any, ids: list[int], gen_kwargs: dict) -> GenerationResult:
    """Print each step's text as it is accepted, then a newline."""
    stream = decoder.stream(ids, **gen_kwargs)
    for piece in incremental_text(tokenizer, stream):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    assert stream.result is not None
    return stream.result


def incremental_text(tokenizer: Any, chunks: Iterable[list[int]]) -> Iterable[str]:
    """The new text after each chunk of token ids; a character split across tokens is held back
    until it is whole (and flushed as is if the generation ends inside it)."""
    detok = IncrementalDetokenizer(tokenizer)
    for chunk in chunks:
        if text := detok.add(chunk):
            yield text
    if tail := detok.flush():
        yield tail


def _eos(model: Any) -> list[int] | None:
    """The model's EOS ids as ``model.generate`` takes them (None: no EOS)."""
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


def compare_with_plain(model: Any, ids: list[int], result: GenerationResult, params: SamplingParams,
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
