"""Masked attention over several tokens with a KV group's query heads folded into rows.

transformers' SDPA path folds the query heads that share a key/value head into
rows (``pack_gqa``) only for a single token. For more than one token under a
mask (a verification tree, a draft tree's depth, the optimiser's matchness
window) it repeats every key/value head for its query heads (``repeat_kv``):
a copy of the whole cache, in every layer, on every step. On a 2-core CPU
(smollm2-135m bf16, the 5e709a3 bench run's cost model) 8 tree nodes cost 1.42
one-token steps at a 1024-token context, against 1.10 at 64 tokens; packed, a
body forward of 8 nodes at 1000 tokens takes 0.89 of the repeat_kv path's time
(docs/benchmarks/token-trees/packed-attention-*.md).

Here the stock attention module still does everything but the attention
product: its own projections, q/k norms (Qwen3, Gemma 3), RoPE function and
cache update. Only the product runs on the packed rows: the same sums, without
the copy. An adapter uses this path only where :func:`packs` says the module
has the known shape, and only after :func:`agrees` has checked it against the
module's own forward on this model.

A quantized draft (engine/quant.py) passes ``linear``: the projections then run on packed
int8/int4 copies. Where the packed product does not apply (one query, eager attention, no
grouped heads, a mask-free prefill), :func:`projected_attention` computes the module's forward
from its parts: the same projections, norms, RoPE function, cache update and transformers
attention function (``ALL_ATTENTION_FUNCTIONS``, or the family's ``eager_attention_forward``)
the module itself calls, so only the projections change.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


Linear = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def _rope_function(attn: nn.Module) -> Callable | None:
    """The family's own ``apply_rotary_pos_emb``, from the module's modeling file."""
    return _rope_of_class(type(attn))


@functools.lru_cache(maxsize=None)
def _rope_of_class(cls: type) -> Callable | None:  # looked up once per class, not per layer and step
    return getattr(sys.modules.get(cls.__module__), "apply_rotary_pos_emb", None)


def packs(attn: nn.Module) -> bool:
    """Whether ``attn`` is a grouped-query attention module of the shape :func:`packed_attention` knows:
    q/k/v projections (separate, or Phi-3's fused ``qkv_proj``), optional per-head q/k norms,
    the family's RoPE function, ``o_proj``, no logit soft-capping (Gemma 2 needs eager attention)."""
    has_proj = hasattr(attn, "qkv_proj") or all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj"))
    return (has_proj and hasattr(attn, "o_proj") and getattr(attn, "num_key_value_groups", 1) > 1
            and isinstance(getattr(attn, "scaling", None), float) and isinstance(getattr(attn, "layer_idx", None), int)
            and getattr(attn, "attn_logit_softcapping", None) is None and _rope_function(attn) is not None
            and hasattr(attn, "q_norm") == hasattr(attn, "k_norm"))


def _project(attn: nn.Module, x: torch.Tensor, linear: Linear = _call
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [b, n, hidden] -> q [b, H, n, d], k and v [b, KV, n, d], as the module computes them
    (each projection run by ``linear(module, x)``)."""
    shape = (*x.shape[:-1], -1, attn.head_dim)
    if hasattr(attn, "qkv_proj"):  # Phi-3: one fused projection, query first
        qkv = linear(attn.qkv_proj, x)
        nq = attn.config.num_attention_heads * attn.head_dim
        nkv = attn.config.num_key_value_heads * attn.head_dim
        q, k, v = qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]
    else:
        q, k, v = linear(attn.q_proj, x), linear(attn.k_proj, x), linear(attn.v_proj, x)
    q, k, v = q.view(shape), k.view(shape), v.view(shape)
    if hasattr(attn, "q_norm"):  # RMS norms over head_dim: the same before or after the transpose
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def packed_attention(attn: nn.Module, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                     mask_rows: torch.Tensor, cache, linear: Linear = _call) -> torch.Tensor:
    """``attn``'s output [b, n, hidden] for normed hidden states x [b, n, hidden].

    ``mask_rows``: the additive mask [1, 1, n, L] repeated once per query head of a group,
    [1, 1, groups * n, L] (:func:`pack_mask`), rows ordered (head in group, token).
    ``linear``: runs each projection (the module itself by default).
    """
    q, k, v = _project(attn, x, linear)
    cos, sin = position_embeddings
    q, k = _rope_function(attn)(q, k, cos, sin)
    k, v = cache.update(k, v, attn.layer_idx)
    b, heads, n, d = q.shape
    groups = heads // k.shape[1]
    # [b, H, n, d] -> [b, KV, groups * n, d]: head h = kv * groups + g, so a group's heads are adjacent
    out = F.scaled_dot_product_attention(q.reshape(b, k.shape[1], groups * n, d), k, v, attn_mask=mask_rows,
                                         scale=attn.scaling)
    out = out.reshape(b, heads, n, d).transpose(1, 2).reshape(b, n, heads * d)
    return linear(attn.o_proj, out)


def _eager_function(attn: nn.Module) -> Callable | None:
    return getattr(sys.modules.get(type(attn).__module__), "eager_attention_forward", None)


def routes_attention(attn: nn.Module) -> bool:
    """Whether :func:`projected_attention` computes ``attn``'s forward: separate q/k/v projections
    (or Phi-3's fused ``qkv_proj``) and ``o_proj``, optional per-head q/k norms, the family's RoPE
    and eager attention functions in its modeling file."""
    def linear(name: str) -> bool:
        return isinstance(getattr(attn, name, None), nn.Linear)
    has_proj = linear("qkv_proj") or all(linear(n) for n in ("q_proj", "k_proj", "v_proj"))
    return (has_proj and linear("o_proj") and isinstance(getattr(attn, "head_dim", None), int)
            and isinstance(getattr(attn, "layer_idx", None), int) and getattr(attn, "scaling", None) is not None
            and _rope_function(attn) is not None and _eager_function(attn) is not None
            and hasattr(attn, "q_norm") == hasattr(attn, "k_norm"))


def projected_attention(attn: nn.Module, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                        attention_mask: torch.Tensor | None, cache, linear: Linear, **kwargs) -> torch.Tensor:
    """``attn``'s forward for normed hidden states x [b, n, hidden], each projection run by ``linear``.

    The steps of the stock module (transformers 5.2x): project, q/k norms, RoPE, cache update,
    the attention function it would call (with its scaling, sliding window and soft-cap), o_proj.
    ``kwargs`` (e.g. ``position_ids``) reach the attention function as the stock module passes them.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    q, k, v = _project(attn, x, linear)
    cos, sin = position_embeddings
    q, k = _rope_function(attn)(q, k, cos, sin)
    k, v = cache.update(k, v, attn.layer_idx)
    impl = getattr(attn.config, "_attn_implementation", None) or "eager"
    eager = _eager_function(attn)
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        function = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)
    else:  # older transformers: what their modules did inline
        function = eager if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
    extra = {"sliding_window": getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))}
    if getattr(attn, "attn_logit_softcapping", None) is not None:
        extra["softcap"] = attn.attn_logit_softcapping
    out, _ = function(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, **extra, **kwargs)
    return linear(attn.o_proj, out.reshape(*x.shape[:-1], -1).contiguous())


def pack_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """[1, 1, n, L] -> [1, 1, groups * n, L]: the rows :func:`packed_attention` attends with."""
    return mask.repeat(1, 1, groups, 1)


@torch.inference_mode()
def agrees(attn: nn.Module, rope: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
           cache_kwarg: str, make_cache: Callable[[], object]) -> bool:
    """Does :func:`packed_attention` compute what ``attn``'s own forward does, on this model?

    A check at run time, on 8 random tokens under a causal mask, so that a transformers
    release that changes an attention module's arithmetic turns the fast path off rather
    than changing the output. ``rope(h, position_ids)`` gives the position embeddings.
    """
    try:
        return _agrees(attn, rope, cache_kwarg, make_cache)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError, IndexError):
        return False  # a module this path does not fit: the stock path, never a crash at load time


def _agrees(attn: nn.Module, rope: Callable, cache_kwarg: str, make_cache: Callable[[], object]) -> bool:
    w = next(attn.parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = attn.o_proj.out_features
    x = torch.randn(1, 8, hidden, generator=gen).to(device=w.device, dtype=w.dtype)
    pos = torch.arange(8, device=w.device)[None]
    pe = rope(x, pos)
    mask = torch.zeros(1, 1, 8, 8, dtype=w.dtype, device=w.device)
    mask.masked_fill_(~torch.ones(8, 8, dtype=torch.bool, device=w.device).tril_(), torch.finfo(w.dtype).min)
    outs = []
    for packed in (False, True):
        cache = make_cache()
        cache.begin_write(0, 8)
        if packed:
            groups = attn.num_key_value_groups
            outs.append(packed_attention(attn, x, pe, pack_mask(mask, groups), cache))
        else:
            outs.append(attn(hidden_states=x, position_embeddings=pe, attention_mask=mask, **{cache_kwarg: cache})[0])
    want, got = outs[0].float(), outs[1].float()
    tol = 1e-4 if w.dtype == torch.float32 else 3e-2
    return bool(torch.allclose(got, want, atol=tol * max(1.0, float(want.abs().max())), rtol=tol))
