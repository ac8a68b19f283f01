"""Helpers shared by the lossless test modules: the reference (stock ``model.generate``) and prompts."""

from __future__ import annotations

import weakref

import torch

VOCAB = 97

_REFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(prompt, length): output}


def plain_generate(model, ids: torch.Tensor, max_new: int, eos: int | list[int] | None = None) -> torch.Tensor:
    """Greedy ``model.generate``: the output every lossless test compares against."""
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                              eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else 0)


def cached_plain_generate(model, ids: torch.Tensor, max_new: int) -> torch.Tensor:
    """``plain_generate`` once per (model, prompt, length): several decoders compare to one reference."""
    mine = _REFERENCE.setdefault(model, {})
    key = (tuple(ids[0].tolist()), max_new)
    if key not in mine:
        mine[key] = plain_generate(model, ids, max_new)
    return mine[key].clone()


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _first_diff(a: torch.Tensor, b: torch.Tensor) -> int | None:
    x, y = a[0].tolist(), b[0].tolist()
    return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), None if len(x) == len(y) else min(len(x), len(y)))
