"""The decoder's one cost model: read from the on-disk cache, else measured once, on first use.

One owner, :class:`CostSource`, held by the decoder and handed to the planner and the optimiser,
so the model is measured once, saved once and refused once when it was measured elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .cost import CostModel, cost_key, measure_costs
from .cost_quant import with_precisions

if TYPE_CHECKING:
    from .models import DecoderAdapter
    from .quant import QuantizedWeights


@dataclass(frozen=True)
class QuantDrafts:
    """The quantized drafts a cost model prices: their precisions, int4's group, and who builds the weights."""

    precisions: tuple[str, ...]  # "int8" / "int4"; empty: full precision only
    group: int
    weights: Callable[[str], "QuantizedWeights | None"]
    vocab: int = 0  # the vocabulary a quantized draft scores (0: the whole head)

    @property
    def key(self) -> str:
        return f"{','.join(self.precisions)}/g{self.group}/v{self.vocab}" if self.precisions else ""


class CostSource:
    """A lazily measured :class:`CostModel` for one adapter.

    ``directory()`` names the on-disk cache when the model is first needed (None: measure, keep
    nothing on disk); asked late, so a cache folder set after the decoder was built is honoured.
    """

    def __init__(self, adapter: "DecoderAdapter", draft_vocab: int, directory: Callable[[], Path | None],
                 quant: QuantDrafts | None = None) -> None:
        self.adapter, self.draft_vocab, self.directory, self.quant = adapter, draft_vocab, directory, quant
        self._model: CostModel | None = None

    def get(self) -> CostModel:
        """The cost model, measured (seconds) or read from the cache the first time."""
        if self._model is None:
            self._model = cached_costs(self.adapter, self.draft_vocab, self.directory(), self.quant)
        return self._model

    def peek(self) -> CostModel | None:
        """The cost model if it is already known; never measures."""
        return self._model

    def cache_file(self) -> Path | None:
        """Where :meth:`get` reads and keeps the cost model on disk (None: not kept)."""
        directory = self.directory()
        return None if directory is None else cache_path(self.adapter, self.draft_vocab, directory, self.quant)

    def set(self, costs: CostModel | None) -> None:
        """Use ``costs`` (None: measure afresh on next use)."""
        self._model = costs

    def fits_here(self, costs: CostModel) -> bool:
        """Whether ``costs`` was measured on this device and dtype (or says nothing of them)."""
        here = (str(self.adapter.device), str(self.adapter.dtype).replace("torch.", ""))
        return not any(got and got != want for got, want in zip((costs.device, costs.dtype), here))

    def state_dict(self) -> dict[str, Any] | None:
        return self._model.to_dict() if self._model is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a saved cost model; one measured on another device or dtype is ignored (this one times its own)."""
        costs = CostModel.from_dict(state) if state is not None else None
        if costs is not None and self.fits_here(costs):
            self._model = costs


def cache_path(adapter: "DecoderAdapter", draft_vocab: int, directory: Any, quant: QuantDrafts | None) -> Path:
    """The one file a cost model of this (model, device, dtype, threads, drafts) lives in (:func:`cost_key`)."""
    return Path(directory) / f"{cost_key(adapter, draft_vocab, quant.key if quant else '')}.json"


def cached_costs(adapter: "DecoderAdapter", draft_vocab: int, directory: Any | None,
                 quant: QuantDrafts | None = None) -> CostModel:
    """The cost model from ``directory`` (one JSON per :func:`cost_key`), measured and saved when absent.

    Measuring takes seconds; every later decoder of the same (model, device, dtype,
    threads) reads it back. A file that cannot be read is measured over.
    """
    import json
    import os
    import tempfile

    if directory is None:
        return _measure_visibly(adapter, draft_vocab, "measuring this model's step costs", quant)
    path = cache_path(adapter, draft_vocab, directory, quant)
    try:
        return CostModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        pass
    costs = _measure_visibly(adapter, draft_vocab, f"measuring this model's step costs once (kept in {path.parent})",
                             quant)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(costs.to_dict(), f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measure again next time
    return costs


def _measure_visibly(adapter: "DecoderAdapter", draft_vocab: int, what: str, quant: QuantDrafts | None = None
                     ) -> CostModel:
    """:func:`measure_costs` (and each quantized draft's, :mod:`.cost_quant`) under a status line: on a
    first run it takes seconds to a minute, unannounced."""
    from ..progress import Ticker

    with Ticker(what):
        costs = measure_costs(adapter, draft_vocab=draft_vocab)
        if quant is not None and quant.precisions:
            costs = with_precisions(costs, adapter, quant.precisions, quant.weights, quant.vocab)
        return costs
