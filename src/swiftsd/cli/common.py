"""Flags shared by the subcommands (model, dtype, skip set, store, decoder), parsed once here, and the one
decoder builder every command uses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DRAFT_PRECISIONS, DRAFTER_NAMES, METHODS, QUANT_GROUPS
from ..errors import InvalidArgumentError, InvalidSkipSetError
from ..engine.skipset import SkipSet

if TYPE_CHECKING:
    from ..core.decoder import SwiftDecoder


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", metavar="NAME",
                   help="packaged short name (smollm2-135m, qwen2.5-coder-0.5b, ...), HF directory, .gguf file or "
                        "hub id")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help="fp32, bf16, fp16 or auto (the checkpoint's own); float32, bfloat16 and float16 work too "
                        "(default: fp32 on a CPU, bf16 on a GPU)")
    p.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda or cuda:N (default: cuda if available)")


def add_skip_arguments(p: argparse.ArgumentParser, what: str = "a fixed skip set, used as is",
                       default: str = "none; the optimizer learns one while decoding") -> None:
    """``what`` ``--skip-set`` is for this command, and what happens without it (``default``)."""
    p.add_argument("--skip-set", default=None, metavar="JSON",
                   help=f"{what}: inline JSON such as '{{\"attn\": [3, 5], \"mlp\": [4]}}' or a path to such a file "
                        f"(default: {default})")
    p.add_argument("--skip-set-store", default=None, metavar="FILE",
                   help="JSON store of tuned skip sets (written by swiftsd tune) to start from (default: none)")
    p.add_argument("--task", default="default", metavar="NAME", help="task name to look up in --skip-set-store")


def add_draft_precision(p: argparse.ArgumentParser, what: str = "the layer-skip draft") -> None:
    p.add_argument("--draft-precision", default=None, choices=DRAFT_PRECISIONS, metavar="P",
                   help=f"weights {what} reads: auto (the planner chooses per step by measured cost), full "
                        "(the model's own dtype, the paper's draft), int8 or int4 (weight-only copies of the "
                        "model's own weights, built at load) (default: auto; swift-paper: full)")
    p.add_argument("--quant-group", default=None, type=int, choices=QUANT_GROUPS, metavar="G",
                   help="int4 copies: inputs per quantization group, one of 32, 64, 128, 256 (PyTorch's int4 "
                        "kernels); smaller agrees better with the model, larger reads fewer scales (default: 32)")


def add_decoder_arguments(p: argparse.ArgumentParser) -> None:
    add_draft_precision(p)
    p.add_argument("--drafters", default=None, metavar="LIST",
                   help=f"where drafts come from, comma-separated from {', '.join(DRAFTER_NAMES)} "
                        "(default: all three; with --method swift-paper, layerskip)")
    p.add_argument("--method", default="swiftsd", metavar="NAME",
                   help="swiftsd (every drafter, steps chosen by cost) or swift-paper (the paper's algorithm: "
                        "layer-skip chain plus siblings, the reference optimizer)")


def decoder_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--method`` / ``--drafters`` / ``--draft-precision`` as SwiftDecoder keyword arguments, checked before
    any model loads."""
    if args.method not in METHODS:
        raise InvalidArgumentError(f"--method must be one of {', '.join(METHODS)}; got {args.method!r}")
    out: dict[str, Any] = {"method": args.method}
    if getattr(args, "draft_precision", None) is not None:
        out["draft_precision"] = args.draft_precision
    if getattr(args, "quant_group", None) is not None:
        out["quant_group"] = args.quant_group
    if args.drafters is not None:
        names = tuple(x.strip() for x in args.drafters.split(",") if x.strip())
        unknown = [n for n in names if n not in DRAFTER_NAMES]
        if unknown or not names or len(set(names)) != len(names):
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else \
                "nothing given" if not names else "a name given twice"
            raise InvalidArgumentError(f"--drafters takes distinct names from {','.join(DRAFTER_NAMES)}, "
                                       f"comma-separated ({what}: {args.drafters!r})")
        out["drafters"] = names
    if "layerskip" not in out.get("drafters", ("layerskip",)) and (args.skip_set or args.skip_set_store):
        raise InvalidArgumentError("--skip-set and --skip-set-store configure the layerskip drafter: "
                                   "add layerskip to --drafters, or drop the skip set")
    return out


def parse_skip_set(value: str | None) -> SkipSet | None:
    """A skip set from inline JSON or a JSON file path."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise InvalidSkipSetError(f"--skip-set is neither inline JSON nor an existing file: {value!r}")
        text = path.read_text()
    return SkipSet.from_json(text)


def check_skip_choice(args: argparse.Namespace) -> SkipSet | None:
    """``--skip-set`` parsed (None if not given); refused together with ``--skip-set-store``. No model needed."""
    skip = parse_skip_set(getattr(args, "skip_set", None))
    if skip is not None and getattr(args, "skip_set_store", None):
        raise InvalidArgumentError("give either --skip-set (fixed) or --skip-set-store (tuned and saved), not both")
    return skip


def start_skip_set(args: argparse.Namespace, model: Any, missing_ok: bool = False) -> tuple[SkipSet | None, bool]:
    """The skip set a command starts from, and whether it is fixed (a hand-given ``--skip-set``, used as
    is) or a start for the optimizer (the ``--skip-set-store`` set for this model and ``--task``).

    ``missing_ok``: an absent store, or none stored for this model and task, starts from the default
    (the server, which writes the store on shutdown); else that is an error naming the fix.
    """
    skip = check_skip_choice(args)
    if skip is not None:
        return skip, True
    path = getattr(args, "skip_set_store", None)
    if not path:
        return None, False
    from ..persist.store import model_key, resolve_start_set

    stored = resolve_start_set(path, model, args.task, missing_ok=missing_ok)
    if stored is None and not missing_ok:
        raise InvalidArgumentError(
            f"{path!r} holds no skip set for model {model_key(model)!r} and task {args.task!r}; "
            "tune one with `swiftsd tune`, pick another --task, or drop --skip-set-store")
    return stored, False


def build_decoder(args: argparse.Namespace, model: Any, tokenizer: Any, store_missing_ok: bool = False,
                  skip: SkipSet | None = None, **overrides: Any) -> "SwiftDecoder":
    """The decoder of ``generate``, ``serve`` and ``tune``: ``--method`` / ``--drafters`` and the skip-set
    choice of :func:`start_skip_set` (or ``skip``, a start set the command found itself), then
    ``overrides`` (SwiftDecoder keyword arguments). A hand-given set is used as is, not tuned."""
    from ..core.decoder import SwiftDecoder

    config: dict[str, Any] = decoder_options(args) if hasattr(args, "method") else {}
    fixed = False
    if skip is None:
        skip, fixed = start_skip_set(args, model, store_missing_ok)
    if fixed:
        config["optimizer"] = False
    return SwiftDecoder(model, tokenizer, skip_set=skip, **{**config, **overrides})


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..loading import load

    return load(args.model, dtype=args.dtype, device=args.device)


def flag(name: str) -> str:
    """An argument's name as the command line spells it: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


def read_text_arg(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise InvalidArgumentError(f"{what} is empty: give some text")
    return value


def costs_before_bars(decoder: Any) -> None:
    """Read, or on a first run measure, the decoder's cost model now, if decoding will use it.

    Left to the first step, a first measurement's status line would be drawn nested under the
    command's own progress bar, leaving blank lines; done here it comes and goes before the bar.
    """
    if decoder.drafters and (decoder.config.planner or decoder.optimizer is not None):
        _ = decoder.costs
