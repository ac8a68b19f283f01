"""Model adapters: run a stock Hugging Face decoder with a skip set and a tree mask.

No forked ``modeling_*.py`` files and no state on the model: each adapter walks
the model's own decoder layers and calls their own submodules (norms, attention,
MLP), wiring the residual stream the way that family does, and leaving out the
sublayers named by the skip set. ``tests/test_adapters.py`` checks every adapter
against the stock model's forward. Given quantized weights (engine/quant.py), a draft
forward runs the projections of attention and MLP and the LM head on their packed
int8/int4 copies instead (:meth:`DecoderAdapter.attend`, :meth:`DecoderAdapter.feed_forward`).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .attention import agrees, pack_mask, packed_attention, packs, projected_attention
from .cache import SlotKVCache
from ..errors import UnsupportedModelError
from .quant import QuantizedWeights, mlp_forward
from .skipset import SkipSet


@dataclass(frozen=True)
class DraftHead:
    """The draft's LM head over a vocabulary subset: rows of the model's own head.

    The LM head cannot be skipped and costs 15-25 % of a step on small models
    with large vocabularies, which bounds what any skip set can save. The draft
    only has to *propose*; the full head verifies, so restricting the draft to
    likely tokens keeps decoding lossless and makes a draft step cheaper.
    """

    token_ids: torch.Tensor  # [K] vocabulary ids, in the order of the rows below
    weight: torch.Tensor  # [K, H] rows of lm_head.weight
    bias: torch.Tensor | None  # [K] or None


def head_product(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool
                 ) -> torch.Tensor:
    """``h @ weight.T + bias`` for hidden rows h [rows, H], as ``F.linear`` or as ``(weight @ h.T).T``.

    Same product, another kernel call: for a few rows against a large matrix, a CPU
    BLAS may pack the large operand first, so F.linear over 4 rows of qwen-0.5b's
    152k-row LM head took 156 ms (fp32, AVX2, one thread) where the transposed
    product, which streams the weights once, took 64 ms (one row: 48 ms either way).
    In bf16 on the same CPU it gained nothing, hence measured per device and dtype
    (``CostModel.head_transposed``) rather than assumed.
    """
    if not transposed or h.shape[0] < 2:
        return nn.functional.linear(h, weight, bias)
    out = torch.mm(weight, h.t()).t()
    return out + bias if bias is not None else out


def _cache_kwarg(attn: nn.Module) -> str:
    """The name under which this transformers' attention modules take the KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still
    works there, with a FutureWarning); 5.23 and earlier take only
    ``past_key_values`` and would silently drop ``cache=`` into ``**kwargs``, so
    the name is read from the signature once, not guessed.
    """
    try:
        params = inspect.signature(attn.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _sdpa_packs_single_query() -> bool:
    """Whether transformers' SDPA attention folds a masked single GQA query into rows (5.23 and later)."""
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:
        return False
    return hasattr(sdpa_attention, "pack_gqa")


class DecoderAdapter:
    """Llama-style pre-norm residual wiring (Llama, Mistral, Qwen2, Qwen3, Phi-3)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.base = model.base_model
        self.layers: nn.ModuleList = self.base.layers
        self.num_layers = len(self.layers)
        cfg = self.config
        types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if types is None:
            types = ["sliding_attention" if window else "full_attention"] * self.num_layers
        self.layer_types: list[str] = list(types)
        self.sliding_window: int | None = window if "sliding_attention" in self.layer_types else None
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None)
        self.vocab_size: int = model.lm_head.weight.shape[0] if hasattr(model, "lm_head") else 0
        self.softcap: float | None = getattr(cfg, "final_logit_softcapping", None)
        self.cache_kwarg: str = _cache_kwarg(self.layers[0].self_attn) if self.num_layers else "cache"
        impl = getattr(cfg, "_attn_implementation", "eager")
        # SDPA given no mask applies is_causal and grouped-query attention itself (no repeat_kv copy):
        # a prefill then costs what `generate`'s does, 13-15 % less than with an explicit causal mask.
        self.causal_without_mask: bool = impl == "sdpa" and all(
            getattr(layer.self_attn, "is_causal", True) for layer in self.layers)
        # ...but a single grouped-query token runs 4-10x faster with a mask: transformers then folds the
        # query heads of a KV group into rows (``pack_gqa``), where SDPA's own GQA path is slow on CPU
        # (qwen-0.5b bf16, 969-token context: a plain step 120-133 ms without a mask, 86-90 ms with one).
        self.mask_single_query: bool = impl == "sdpa" and _sdpa_packs_single_query() and any(
            getattr(layer.self_attn, "num_key_value_groups", 1) > 1 for layer in self.layers)
        # ...and several masked tokens skip transformers' repeat_kv copy of the cache (attention.py)
        self.packed_gqa: bool = self.mask_single_query and all(packs(layer.self_attn) for layer in self.layers) \
            and agrees(self.layers[0].self_attn, lambda h, pos: self.rope(h, pos)(0), self.cache_kwarg,
                       lambda: SlotKVCache(self.num_layers, 8))
        if impl and "flash" in impl:
            raise UnsupportedModelError(
                f"attention implementation {impl!r} cannot take a tree attention mask; "
                "load the model with attn_implementation='sdpa' or 'eager'"
            )

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # -- pieces a family may override ------------------------------------------
    def rope(self, h: torch.Tensor, position_ids: torch.Tensor) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        pe = self.base.rotary_emb(h, position_ids)
        return lambda i: pe

    def attn_block(self, layer: nn.Module, h: torch.Tensor, weights: QuantizedWeights | None = None, **kw
                   ) -> torch.Tensor:
        return h + self.attend(layer.self_attn, layer.input_layernorm(h), weights=weights, **kw)

    def attend(self, attn: nn.Module, x: torch.Tensor, packed_mask: torch.Tensor | None = None,
               weights: QuantizedWeights | None = None, **kw) -> torch.Tensor:
        """The attention module's output for normed hidden states x; with ``packed_mask``
        (several masked tokens, see attention.py) its product runs on packed query rows.
        With ``weights`` its projections run on their quantized copies (attention.py computes
        the module's forward from its parts); without, the module runs as it is."""
        if weights is not None and weights.routes(attn):
            cache = kw.pop(self.cache_kwarg)
            pe = kw.pop("position_embeddings")
            if packed_mask is not None:
                return packed_attention(attn, x, pe, packed_mask, cache, weights.linear)
            return projected_attention(attn, x, pe, kw.pop("attention_mask"), cache, weights.linear, **kw)
        if packed_mask is not None:
            return packed_attention(attn, x, kw["position_embeddings"], packed_mask, kw[self.cache_kwarg])
        return attn(hidden_states=x, **kw)[0]

    def mlp_block(self, layer: nn.Module, h: torch.Tensor, weights: QuantizedWeights | None = None) -> torch.Tensor:
        return h + self.feed_forward(layer.mlp, layer.post_attention_layernorm(h), weights)

    def feed_forward(self, mlp: nn.Module, x: torch.Tensor, weights: QuantizedWeights | None) -> torch.Tensor:
        """The MLP module's output; with ``weights``, its projections run on their quantized copies."""
        if weights is not None and weights.routes(mlp):
            return mlp_forward(mlp, x, weights.linear)
        return mlp(x)

    # -- the forward ---------------------------------------------------------
    def build_masks(
        self, positions: torch.Tensor, visible_prefix: int, slot_start: int, block_mask: torch.Tensor | None,
        past_visible: torch.Tensor | None = None, past_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Additive masks [1, 1, q, slot_start+q], one per attention type.

        Queries see slots [0, visible_prefix) (committed tokens at positions
        0..visible_prefix-1), the block's own slots as ``block_mask`` [q, q] allows
        (``None``: causally, the prefill's case),
        and of the slots [visible_prefix, slot_start) only those ``past_visible``
        [q, slot_start - visible_prefix] allows (a draft tree's earlier depths, at
        ``past_positions``); none of them without it.

        A single query that sees every slot (a draft step or a plain step, whose
        position equals its slot) gets an all-zero mask where that is faster
        (``mask_single_query``), else ``None``.
        """
        q = positions.numel()
        dev = positions.device
        window = self.sliding_window
        if q == 1 and visible_prefix == slot_start and (window is None or slot_start < window):
            if not self.mask_single_query:
                return dict.fromkeys(self.layer_types)
            return dict.fromkeys(self.layer_types, torch.zeros(1, 1, 1, slot_start + 1, dtype=self.dtype, device=dev))
        if block_mask is None:
            if slot_start == 0 and self.causal_without_mask and (window is None or q <= window):
                return dict.fromkeys(self.layer_types)  # the whole cache is this causal block: SDPA's is_causal
            block_mask = torch.ones(q, q, dtype=torch.bool, device=dev).tril_()
        vis = torch.zeros(q, slot_start + q, dtype=torch.bool, device=dev)
        vis[:, :visible_prefix] = True
        vis[:, slot_start:] = block_mask
        if past_visible is not None:
            vis[:, visible_prefix:slot_start] = past_visible
        masks = {}
        neg = torch.finfo(self.dtype).min
        for kind in set(self.layer_types):
            v = vis
            if kind == "sliding_attention" and self.sliding_window:
                k_pos = torch.full((slot_start + q,), -(10**9), dtype=torch.long, device=dev)
                k_pos[:visible_prefix] = torch.arange(visible_prefix, device=dev)
                k_pos[slot_start:] = positions
                if past_positions is not None:
                    k_pos[visible_prefix:slot_start] = past_positions
                v = vis & (k_pos[None, :] > positions[:, None] - self.sliding_window)
            m = torch.zeros(v.shape, dtype=self.dtype, device=dev).masked_fill_(~v, neg)
            masks[kind] = m[None, None]
        return masks

    @torch.inference_mode()
    def draft_head(self, token_ids: torch.Tensor) -> DraftHead:
        """Gather the LM-head rows of ``token_ids`` (once per request, K x H)."""
        lm = self.model.lm_head
        ids = token_ids.to(lm.weight.device)
        bias = lm.bias.index_select(0, ids) if getattr(lm, "bias", None) is not None else None
        return DraftHead(token_ids=ids, weight=lm.weight.index_select(0, ids), bias=bias)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        *,
        cache: SlotKVCache,
        slot_start: int = 0,
        visible_prefix: int = 0,
        block_mask: torch.Tensor | None = None,
        skip: SkipSet | None = None,
        logits_rows: torch.Tensor | slice | str | None = None,
        head: DraftHead | None = None,
        past_visible: torch.Tensor | None = None,
        past_positions: torch.Tensor | None = None,
        weights: QuantizedWeights | None = None,
    ) -> torch.Tensor:
        """Logits [rows, V] (float32) for ``input_ids`` [q] written at slots [slot_start, slot_start+q).

        ``skip`` leaves those sublayers out (the draft); ``None`` runs the full model.
        ``logits_rows`` picks which positions reach the LM head (all by default;
        ``"hidden"`` returns the final-normed hidden states [q, H] instead, see :meth:`logits`);
        ``head`` scores only a vocabulary subset (columns follow ``head.token_ids``).
        ``past_visible`` / ``past_positions``: see :meth:`build_masks` (tree drafting).
        ``weights``: a quantized draft's packed projections and LM head (``None``: the model's own);
        with ``head``, pass ``weights.with_head(head)`` so the draft head is quantized too.
        """
        q = input_ids.numel()
        cache.begin_write(slot_start, q)
        position_ids = positions[None]
        h = self.base.embed_tokens(input_ids[None])
        masks = self.build_masks(positions, visible_prefix, slot_start, block_mask, past_visible, past_positions)
        pe = self.rope(h, position_ids)
        packed = {}
        if self.packed_gqa and q > 1:
            groups = self.layers[0].self_attn.num_key_value_groups
            packed = {k: pack_mask(m, groups) for k, m in masks.items() if m is not None}
        skip_attn = set(skip.attn) if skip else set()
        skip_mlp = set(skip.mlp) if skip else set()
        for i, layer in enumerate(self.layers):
            if i not in skip_attn:
                h = self.attn_block(
                    layer,
                    h,
                    weights=weights,
                    position_embeddings=pe(i),
                    attention_mask=masks[self.layer_types[i]],
                    packed_mask=packed.get(self.layer_types[i]),
                    position_ids=position_ids,
                    **{self.cache_kwarg: cache},
                )
            if i not in skip_mlp:
                h = self.mlp_block(layer, h, weights)
        hidden_only = isinstance(logits_rows, str)
        h = h[0] if logits_rows is None or hidden_only else h[0, logits_rows]
        h = self.base.norm(h)
        if hidden_only:
            return h
        if weights is None:
            return self.logits(h, head)  # the call as it was: code that wraps ``logits`` keeps working
        return self.logits(h, head, weights=weights)

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, head: DraftHead | None = None, transposed: bool = False,
               weights: QuantizedWeights | None = None) -> torch.Tensor:
        """Float logits [rows, V] of final-normed hidden states [rows, H] (softcap applied).

        Split from :meth:`forward` so verification can score only the tree nodes it
        visits: the LM head is the largest matrix of a small model, and a tree's
        rejected branches never need it. ``transposed``: see :func:`head_product`
        (the cost model measures which product is faster on this device).
        ``weights``: the LM head (or the draft head, see :meth:`forward`) runs on its quantized copy.
        """
        if weights is not None:
            logits = self._quantized_head(h, head, weights, transposed)
        elif head is not None:
            logits = head_product(h, head.weight, head.bias, transposed)
        elif transposed and h.shape[0] > 1 and isinstance(self.model.lm_head, nn.Linear):
            logits = head_product(h, self.model.lm_head.weight, self.model.lm_head.bias, True)
        else:
            logits = self.model.lm_head(h)
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _quantized_head(self, h: torch.Tensor, head: DraftHead | None, weights: QuantizedWeights,
                        transposed: bool) -> torch.Tensor:
        if head is None:
            return weights.linear(self.model.lm_head, h)
        packed = weights.head_linear(head)
        if packed is not None:
            return packed.matmul(h)
        if weights.packed.get(self.model.lm_head) is not None:  # a head quantizing would have covered
            warnings.warn("a draft head was given with quantized weights not made for it: it runs at full "
                          "precision; pass weights.with_head(head)", RuntimeWarning, stacklevel=4)
        return head_product(h, head.weight, head.bias, transposed)


class GemmaAdapter(DecoderAdapter):
    """Gemma 2 / 3: sandwich norms around attention and MLP; Gemma 3 has per-type RoPE."""

    def rope(self, h, position_ids):
        if getattr(self.config, "model_type", "") == "gemma3_text":
            pes = {t: self.base.rotary_emb(h, position_ids, t) for t in set(self.layer_types)}
            return lambda i: pes[self.layer_types[i]]
        return super().rope(h, position_ids)

    def attn_block(self, layer, h, weights=None, **kw):
        x = self.attend(layer.self_attn, layer.input_layernorm(h), weights=weights, **kw)
        return h + layer.post_attention_layernorm(x)

    def mlp_block(self, layer, h, weights=None):
        return h + layer.post_feedforward_layernorm(self.feed_forward(layer.mlp, layer.pre_feedforward_layernorm(h),
                                                                      weights))


ADAPTERS: dict[str, type[DecoderAdapter]] = {
    "llama": DecoderAdapter,
    "mistral": DecoderAdapter,
    "qwen2": DecoderAdapter,
    "qwen3": DecoderAdapter,
    "phi3": DecoderAdapter,
    "gemma2": GemmaAdapter,
    "gemma3_text": GemmaAdapter,
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module) -> DecoderAdapter:
    """The adapter for ``model.config.model_type``, or a clear UnsupportedModelError."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = ADAPTERS.get(model_type)
    if cls is None or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(
            f"swiftsd has no adapter for model_type {model_type!r} ({type(model).__name__}); "
            f"supported model types: {', '.join(supported_model_types())}. "
            "Load a causal LM (AutoModelForCausalLM) of one of these families."
        )
    return cls(model)
