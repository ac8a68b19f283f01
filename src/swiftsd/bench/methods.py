"""The methods a benchmark compares: one table from name to method.

swiftsd's entries only name decoder options (``SwiftDecoder(model, tok, **options)``);
the decoder validates them. HF's entries call ``model.generate`` (:mod:`.peers`, :mod:`.assisted`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config import SwiftConfig
from ..engine.skipset import SkipSet
from ..errors import InvalidArgumentError
from .base import AccountingError, Method, RunParams, TurnOutput, accounting_problems, eos_ids, trim_at_eos
from .assisted import HFAssisted
from .choices import DEFAULT_METHODS, METHOD_NAMES
from .peers import PLD, EarlyExit, Plain, steps_from_log
from .swift import Swift

SWIFT_METHODS: dict[str, dict[str, Any]] = {
    "swiftsd": {},  # the default decoder, every drafter; --method / --drafters change this entry only
    "swift-paper": {"method": "swift-paper"},  # the paper's algorithm: layer-skip chain plus siblings
    "lookup-only": {"drafters": ("lookup", "suffix")},  # copying drafters, no layer-skip draft
    # ablation: the quantized self-draft alone (int4 copies of the model's own weights, no copy drafts)
    "quant-draft": {"drafters": ("layerskip",), "draft_precision": "int4"},
    "swiftsd-static": {"optimizer": False},  # a fixed skip set (--skip-set / store), no optimiser
    "swiftsd-chain": {"use_tree": False},  # ablation: the layer-skip chain without a tree
}
# hf-assisted-P: model.generate(assistant_model=the same model over weight-only P copies of its matrices)
HF_METHODS = ("plain", "pld", "early-exit", "hf-assisted-int4", "hf-assisted-int8")

__all__ = [
    "AccountingError", "DEFAULT_METHODS", "METHOD_NAMES", "Method", "RunParams", "Swift", "TurnOutput",
    "accounting_problems", "build_methods", "eos_ids", "steps_from_log", "trim_at_eos",
]


def build_methods(names: Sequence[str], model: Any, tokenizer: Any, static_skip: SkipSet | None = None,
                  pld_tokens: int = 10, early_exit_layer: int | None = None,
                  swift_options: Mapping[str, Any] | None = None, quant_group: int | None = None) -> list[Method]:
    """Instantiate the named methods (``plain`` always first: it is the reference).

    ``swift_options`` (``method=``, ``drafters=``) go to the ``swiftsd`` entry; ``quant_group`` (int4's
    group size) to every method that may draft on quantized copies, swiftsd's and HF's alike.
    """
    group = SwiftConfig.quant_group if quant_group is None else quant_group
    out: list[Method] = []
    for name in dict.fromkeys(["plain", *names]):
        if name == "plain":
            out.append(Plain(model, tokenizer))
        elif name == "pld":
            out.append(PLD(model, tokenizer, pld_tokens))
        elif name == "early-exit":
            out.append(EarlyExit(model, tokenizer, early_exit_layer))
        elif name.startswith("hf-assisted-") and name in METHOD_NAMES:
            out.append(HFAssisted(model, tokenizer, name.removeprefix("hf-assisted-"), group))
        elif name in SWIFT_METHODS:
            options = dict(SWIFT_METHODS[name])
            if quant_group is not None and name != "swift-paper":  # every quantized draft of the run alike
                options["quant_group"] = quant_group
            if name == "swiftsd":
                options.update(swift_options or {})
            skip = static_skip if name == "swiftsd-static" else None
            out.append(Swift(model, tokenizer, name, skip_set=skip, **options))
        else:
            raise InvalidArgumentError(f"unknown method {name!r}; choose from {','.join(METHOD_NAMES)}")
    return out
