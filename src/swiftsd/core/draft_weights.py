"""The quantized draft's weights, owned by the decoder: built on first use of a precision, freed with it.

A quantized self-draft (issue 33) runs the layer-skip draft over int8 / int4 copies of the model's
own projections and LM head (``engine/quant.py``). The copies are an argument of the draft forward,
never attached to the model, so the decoder keeps them here: one :class:`QuantizedWeights` per
precision, built lazily (seconds; read from the disk cache when the decoder's caches are on), and
per request one copy made for the request's draft head (``with_head``, once per head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..engine.quant import QuantizedWeights
from ..loading.quant_cache import load_or_build

if TYPE_CHECKING:
    from torch import nn

    from ..engine.models import DraftHead
    from ..optimize import SkipOptimizer

FULL = "full"
# Acceptance of a quantized copy of the whole model before the loop has counted any: such copies agree
# 0.93-1.0 with the model, teacher-forced (MODELS.md); the drafter's counts correct it within a few steps.
QUANT_PRIOR = 0.8


def prior(opt: "SkipOptimizer | None", precision: str, overridden: bool) -> float:
    """A draft's per-depth acceptance before any count: the optimiser's estimate for its best set
    (``opt``: the optimiser, when it scores at ``precision``), else a quantized copy's, else 0.5."""
    if opt is not None and opt.best()[1] is not None:
        return opt.acceptance(opt.best()[1])
    return QUANT_PRIOR if precision != FULL and not overridden and opt is None else 0.5


class DraftWeights:
    """Quantized copies of one model's weights by precision ("full" has none: the model's own)."""

    def __init__(self, model: "nn.Module", group: int, use_cache: bool) -> None:
        self.model, self.group, self.use_cache = model, group, use_cache
        self._built: dict[str, QuantizedWeights] = {}

    def get(self, precision: str) -> QuantizedWeights | None:
        """The model's weights at ``precision``: None for "full", else built (or read) the first time.

        The activations of a quantized matmul run in bf16 whatever the model's dtype: PyTorch's
        weight-only kernels are fast only there (fp32 activations ran 3-6x slower than the fp32
        model itself, MODELS.md), and verification by the full model keeps the output exact."""
        if precision == FULL:
            return None
        if precision not in self._built:
            self._built[precision] = load_or_build(self.model, precision, self.group, torch.bfloat16,
                                                   use_cache=self.use_cache)
        return self._built[precision]

    def for_request(self, mine: dict[str, QuantizedWeights], precision: str, head: "DraftHead | None"
                    ) -> QuantizedWeights | None:
        """``get(precision)`` with the request's draft head quantized too, made once per request into ``mine``."""
        base = self.get(precision)
        if base is None or head is None:
            return base
        if precision not in mine:
            mine[precision] = base.with_head(head)
        return mine[precision]

    def built(self) -> dict[str, QuantizedWeights]:
        """The precisions built so far (for the memory report)."""
        return dict(self._built)

    def extra_bytes(self) -> int:
        """Bytes the packed copies hold beyond the model's own weights."""
        return sum(w.extra_bytes for w in self._built.values())
