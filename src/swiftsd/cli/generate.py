"""`swiftsd generate`: one prompt through SWIFT, optionally side by side with plain decoding.

Prints the generated text on stdout and a stats line (and, with ``--compare``,
the speed of plain ``model.generate`` on the same prompt, the ratio and whether
the outputs are identical) on stderr, so stdout stays the text. ``--json``
prints one JSON object on stdout instead. Every argument is validated before the
model is loaded, so a typo fails in milliseconds, not after a model load.

The prompt goes through the tokenizer's chat template when it has one (as ``transformers
chat``, mlx-lm and llama.cpp's CLI do for instruct models: a bare prompt gives a chat model
junk); ``--raw`` sends the text as is. torch and the decoder are imported when the command
runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Iterable

from . import common as cli_common
from .compare import WARMUP_TOKENS, compare_with_plain, warm_up
from .. import progress
from ..config import SamplingParams
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..core.decoder import SwiftDecoder
    from ..core.run import GenerationResult

def add_arguments(p: argparse.ArgumentParser) -> None:
    cli_common.add_model_arguments(p)
    p.add_argument("--prompt", required=True, metavar="TEXT",
                   help="the prompt; sent as a user message through the model's chat template when its "
                        "tokenizer has one (see --raw)")
    template = p.add_mutually_exclusive_group()
    template.add_argument("--raw", action="store_true",
                          help="send --prompt as is, without the chat template (a base-model prompt, or a "
                               "template written by hand)")
    template.add_argument("--chat", action="store_true",
                          help="require the chat template: an error if the tokenizer has none")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="new tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="sampling temperature; 0 = greedy (so is any below 1e-5)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="sample from the likeliest tokens whose probabilities add up to P; 1 = off")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens; 0 = off")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="makes sampling reproducible (default: a fresh random seed each run)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the output on the token that completes TEXT, which the output keeps, as "
                        "model.generate's stop_strings does; repeatable (default: none)")
    p.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                   help="no end-of-sequence before N new tokens, as model.generate's min_new_tokens")
    cli_common.add_skip_arguments(p)
    cli_common.add_decoder_arguments(p)
    p.add_argument("--stream", action="store_true", help="print the text as it is accepted")
    p.add_argument("--compare", action="store_true",
                   help="also run plain model.generate on the same prompt and compare speed and output")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, stats, comparison)")


def run(args: argparse.Namespace) -> int:
    """`swiftsd generate`: validate, load, decode (streamed or not), compare, report.

    Its numbered steps are the command's whole story, in the order a user sees them.
    """
    from ..hf.options import GenerateArgs
    from ..hf.stopping import parse_stop_strings

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
    ids, templated = encode_prompt(tokenizer, prompt, False if args.raw else True if args.chat else None)
    decoder = cli_common.build_decoder(args, model, tokenizer)
    gen_kwargs = request.as_kwargs()
    ends = dict(stop_strings=stops or None, min_new_tokens=args.min_new_tokens)  # the same ends for plain generate

    # 3. Generate (after an untimed warm-up of both methods when comparing).
    _say(doing_line(args, model, len(ids), decoder.optimizer is not None and not _costs_cached(decoder), templated))
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

    _report(args, decoder, result, text, prompt, (len(ids), templated), params, stops, comparison)
    return 0


def _report(args: argparse.Namespace, decoder: "SwiftDecoder", result: Any, text: str, prompt: str,
            prompt_info: tuple[int, bool], params: SamplingParams, stops: list[str], comparison: Any) -> None:
    """5. One JSON object on stdout (--json), else the stats, drafting and comparison lines on stderr."""
    prompt_tokens, templated = prompt_info
    if args.json:
        print(json.dumps(dict(
            model=args.model, method=args.method, drafters=list(decoder.config.drafters), prompt=prompt,
            chat=templated, prompt_tokens=prompt_tokens, text=text,
            tokens=result.new_tokens, sampling=dict(temperature=params.temperature, top_p=params.top_p,
                                                    top_k=params.top_k, seed=args.seed),
            stop=stops, min_new_tokens=args.min_new_tokens,
            stats=result.stats.to_dict(with_lists=False),
            compare=comparison.to_dict() if comparison else None), indent=2))
    else:
        print(f"[swiftsd] {result.stats.summary()}", file=sys.stderr)
        drafting = drafting_line(result.stats, decoder.optimizer is not None, "layerskip" in decoder.drafters)
        print(f"[swiftsd] {drafting}", file=sys.stderr)
        searched = result.stats.optimizer is not None and not {"layerskip_ceiling", "search_budget"} & set(
            result.stats.optimizer)
        if searched:  # the optimizer ran for this request: show its state
            print(f"[swiftsd] {decoder.optimizer.summary()}", file=sys.stderr)
        if comparison is not None:
            print(f"[compare] {comparison.summary()}", file=sys.stderr)


# ---------------------------------------------------------------------------- what is said
def _say(msg: str) -> None:
    print(f"swiftsd: {msg}", file=sys.stderr, flush=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _costs_cached(decoder: "SwiftDecoder") -> bool:
    """Has this device's cost model been measured before (the decoder reads it back from the cache)?"""
    path = decoder.cost_source.cache_file()
    return path is not None and path.is_file()


def doing_line(args: argparse.Namespace, model: Any, prompt_tokens: int, times_device: bool,
               templated: bool = False) -> str:
    """What happens next, said once the model is loaded (a first request can sit silent for seconds)."""
    dev = model.get_input_embeddings().weight
    how = " in the chat template (--raw: as is)" if templated else ""
    what = (f"generating up to {_plural(args.max_new_tokens, 'new token')} after a {prompt_tokens}-token prompt"
            f"{how} ({str(dev.dtype).replace('torch.', '')}, {dev.device.type})")
    if times_device:
        what += "; first the optimizer times this device's layers (once; cached for later runs)"
    if args.compare:
        what += f"; --compare warms both methods up first ({WARMUP_TOKENS} untimed tokens each)"
    return what


def _layerskip_drafted(stats: Any) -> bool:
    per = getattr(stats, "per_drafter", None) or {}
    if per:
        return bool(per.get("layerskip", {}).get("proposed"))
    return stats.skip_set is not None and stats.draft_tokens > 0


def drafting_line(stats: Any, optimizing: bool, layerskip: bool = True) -> str:
    """Whether the layer-skipped model drafted, and, when it did not, what that means and what to do
    (``layerskip``: the layer-skip drafter is on at all)."""
    if _layerskip_drafted(stats):
        per = getattr(stats, "per_precision", None) or {}
        if set(per) - {"full"}:  # int8 / int4 copies of the model's own weights drafted
            return ("layer-skip drafts read " + " and ".join(
                f"{p} weights ({d['steps']} steps)" if p != "full" else
                f"the model's own weights skipping {stats.skip_set} ({d['steps']} steps)" for p, d in per.items())
                + "; the planner chose the weights per step by measured cost")
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
                f"optimizer does not search{others} (the output is the same either way)")
    if optimizing and "search_budget" in (getattr(stats, "optimizer", None) or {}):
        return (f"drafting off: the layer-skipped draft has not earned back the time its search took (it gained "
                f"too little over the other drafters), so the optimizer stopped searching{others} (the output "
                "is the same either way)")
    if optimizing:
        return (f"drafting off: in this run the optimizer found no skip set that makes a layer-skipped draft pay, "
                f"so no step used one{others} (the output is the same either way). One run is short for a search: "
                "`swiftsd tune --out sets.json` searches over a stream of prompts (built-in ones, or --data FILE), "
                "then pass --skip-set-store sets.json")
    return f"drafting off: the layer-skipped model drafted nothing{others} (the output is the same either way)"


# ---------------------------------------------------------------------------- pieces
def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> tuple[list[int], bool]:
    """Token ids of the prompt, and whether they went through the chat template (with the assistant header).

    ``chat``: True requires the template, False sends the text as is, None (the default) uses the
    template when the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise InvalidArgumentError(
            "--chat needs a tokenizer with a chat template, and this model's tokenizer has none; "
            "drop --chat and write the prompt in the model's own format")
    if has_template and chat is not False:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), True
    return list(tokenizer(prompt)["input_ids"]), False


def _generate_with_bar(decoder: "SwiftDecoder", ids: list[int], gen_kwargs: dict) -> "GenerationResult":
    """``decoder.generate`` with a progress bar (on a terminal) that counts the accepted tokens."""
    stream = decoder.stream(ids, **gen_kwargs)
    with progress.bar(desc="swiftsd", total=gen_kwargs["max_new_tokens"], unit="tok", leave=False) as pbar:
        for chunk in stream:
            pbar.update(len(chunk))
    assert stream.result is not None
    return stream.result


def _print_stream(decoder: "SwiftDecoder", tokenizer: Any, ids: list[int], gen_kwargs: dict) -> "GenerationResult":
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
    from ..hf.detok import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tokenizer)
    for chunk in chunks:
        if text := detok.add(chunk):
            yield text
    if tail := detok.flush():
        yield tail
