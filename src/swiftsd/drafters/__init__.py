"""Where candidate tokens come from: every drafter behind one small interface (``base.Drafter``).

``layerskip`` runs the target with a skip set (SWIFT's draft); ``lookup`` copies from the
request's own text; ``suffix`` from earlier requests of the stream. The last two cost no
model forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import DraftContext, Drafter, DraftRequest, DraftTrie, Learner, ModelDrafter
from .layerskip import LayerSkipDrafter
from .lookup import LookupDrafter
from .suffix import SuffixDrafter

if TYPE_CHECKING:
    from ..config import SwiftConfig


def make_drafters(config: "SwiftConfig") -> dict[str, Drafter | ModelDrafter]:
    """The configured drafters by name, in the order they draft (free ones first)."""
    made: dict[str, Drafter | ModelDrafter] = {}
    for name in ("lookup", "suffix", "layerskip"):
        if name not in config.drafters:
            continue
        if name == "lookup":
            made[name] = LookupDrafter()
        elif name == "suffix":
            made[name] = SuffixDrafter(max_tokens=config.suffix_max_tokens)
        else:
            made[name] = LayerSkipDrafter(shape=config.tree)
    return made


__all__ = ["DraftContext", "DraftRequest", "DraftTrie", "Drafter", "LayerSkipDrafter", "Learner", "LookupDrafter",
           "ModelDrafter", "SuffixDrafter", "make_drafters"]
