"""Quantized draft weights: int8 / int4 copies of a model's own projections, as an argument.

Built once from the model's weights (training-free, no second checkpoint) and owned by
whoever builds it (the decoder), never attached to the model: the draft forward receives
a :class:`QuantizedWeights` as it receives a skip set, and the adapter runs each projection
through :meth:`QuantizedWeights.linear`, which uses the packed copy when there is one and
the module itself otherwise. Embeddings, norms, RoPE, the KV cache and the adapters' code
stay shared with the target; no weight is copied in bf16.

Covered: every projection of a decoder layer's attention (q/k/v or Phi-3's fused qkv, o)
and MLP (gate/up/down or Phi-3's fused gate_up, down), the LM head, and a draft-vocabulary
head (:meth:`QuantizedWeights.with_head`). A matrix the kernel cannot take falls back
(int4 -> int8 -> the module's own weight) and the build says so once
(:class:`~swiftsd.errors.QuantFallbackWarning`). Packing details: :mod:`.quant_pack`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import InvalidArgumentError, QuantFallbackWarning
from .attention import routes_attention
from .quant_pack import INT4_GROUPS, PRECISIONS, PackedLinear, kernel_works, pack, refusal

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj", "gate_up_proj")
# int4's group: 32, by measurement. Group 128 saves only 2-8 % of a GEMV's time (torchao.md's table) and
# agrees less with the model (top-1: qwen-1.5b 0.967 -> 0.927, qwen-0.5b 0.96 -> 0.935, MODELS.md), and
# smollm2's 576-wide inputs take no group of 128 at all; end to end: docs/benchmarks/quant/README.md.
DEFAULT_GROUP = 32


def routes_mlp(mlp: nn.Module) -> bool:
    """Whether :func:`mlp_forward` computes this MLP: gated (gate/up/down + ``act_fn``) or
    Phi-3's fused ``gate_up_proj`` + ``activation_fn``."""
    def linears(*names: str) -> bool:
        return all(isinstance(getattr(mlp, n, None), nn.Linear) for n in names)
    if linears("gate_up_proj", "down_proj"):
        return callable(getattr(mlp, "activation_fn", None))
    return linears("gate_proj", "up_proj", "down_proj") and callable(getattr(mlp, "act_fn", None))


def mlp_forward(mlp: nn.Module, x: torch.Tensor, linear: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
    """The MLP's own forward with each projection run by ``linear(module, x)`` (same arithmetic)."""
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate first, then up
        gate, up = linear(mlp.gate_up_proj, x).chunk(2, dim=-1)
        return linear(mlp.down_proj, up * mlp.activation_fn(gate))
    return linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))


@dataclass(frozen=True, eq=False)
class QuantizedWeights:
    """Packed copies of a model's projections, keyed by module identity (the modules are the model's own).

    ``routed``: the attention and MLP modules whose projections the draft computes itself
    (the others run as stock modules, at full precision). ``fallbacks``: one line per
    matrix that runs at another precision than ``precision``, and why.
    """

    precision: str
    group: int  # int4's group size; 0 for int8
    compute_dtype: torch.dtype
    packed: Mapping[nn.Module, PackedLinear]
    names: Mapping[nn.Module, str]
    routed: frozenset
    head_module: nn.Module
    fallbacks: tuple[str, ...]
    linear_bytes: int  # the model's own bytes of every matrix covered here (decoder layers + LM head)
    draft_head: tuple[Any, PackedLinear | None] | None = field(default=None)

    # -- the draft forward's helpers ----------------------------------------------------------------
    def linear(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` through the packed copy when there is one, else the module itself."""
        p = self.packed.get(module)
        return module(x) if p is None else p.matmul(x)

    def routes(self, sublayer: nn.Module) -> bool:
        return sublayer in self.routed

    def with_head(self, head: Any) -> "QuantizedWeights":
        """These weights plus a quantized copy of a draft head's rows (a ``DraftHead``: ``weight``
        [K, H], ``bias``). Rows are quantized alone (per row, per group along H), so they equal the
        same rows of the quantized LM head. Call once per draft head; the forward uses the copy when
        given that same head object."""
        lm = self.packed.get(self.head_module)
        packed = None
        if lm is not None:
            packed, _ = _pack_best(head.weight, head.bias, lm.precision, self.group, self.compute_dtype)
        return dataclasses.replace(self, draft_head=(head, packed))

    def head_linear(self, head: Any) -> PackedLinear | None:
        """The packed copy of ``head`` made by :meth:`with_head`, or None."""
        if self.draft_head is not None and self.draft_head[0] is head:
            return self.draft_head[1]
        return None

    # -- what it costs ------------------------------------------------------------------------------
    @property
    def extra_bytes(self) -> int:
        head = self.draft_head[1].nbytes if self.draft_head and self.draft_head[1] is not None else 0
        return sum(p.nbytes for p in self.packed.values()) + head

    @property
    def extra_share(self) -> float:
        """Extra bytes as a share of the model's own bytes of the matrices covered."""
        return self.extra_bytes / max(1, self.linear_bytes)

    def precision_of(self, module: nn.Module) -> str:
        p = self.packed.get(module)
        return p.precision if p is not None else "full"

    def summary(self) -> str:
        g = f" group {self.group}" if self.precision == "int4" else ""
        s = (f"{self.precision}{g}: {len(self.packed)} matrices, +{self.extra_bytes / 2**20:.1f} MiB "
             f"({100 * self.extra_share:.0f} % of their {self.linear_bytes / 2**20:.1f} MiB), "
             f"{str(self.compute_dtype).replace('torch.', '')} activations")
        return s + (f"; {len(self.fallbacks)} at another precision" if self.fallbacks else "")

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, precision: str, group: int = DEFAULT_GROUP,
              compute_dtype: torch.dtype = torch.bfloat16) -> "QuantizedWeights":
        """Quantize every projection of ``model``'s decoder layers and its LM head (seconds)."""
        check_settings(precision, group)
        group = group if precision == "int4" else 0
        names = {m: n for n, m in model.named_modules()}
        targets, routed, notes = covered_modules(model)
        packed: dict[nn.Module, PackedLinear] = {}
        for mod in targets:
            p, reasons = _pack_best(mod.weight, mod.bias, precision, group, compute_dtype)
            if p is not None:
                packed[mod] = p
            if reasons:
                notes.append(_fallback_line(names[mod], mod, reasons, p))
        qw = cls(precision, group, compute_dtype, packed, {m: names[m] for m in targets}, frozenset(routed),
                 model.lm_head, tuple(notes), sum(m.weight.nbytes for m in targets))
        qw.warn_fallbacks()
        return qw

    def warn_fallbacks(self) -> None:
        """Say once, for this set of weights, which matrices run at another precision."""
        if not self.fallbacks:
            return
        shown = "; ".join(self.fallbacks[:4]) + ("; ..." if len(self.fallbacks) > 4 else "")
        warnings.warn(f"quantized draft ({self.precision}): {len(self.fallbacks)} matrices or sublayers run at "
                      f"another precision: {shown}", QuantFallbackWarning, stacklevel=3)


def check_settings(precision: str, group: int) -> None:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"draft precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int4" and group not in INT4_GROUPS:
        raise InvalidArgumentError(f"int4 group size must be one of {INT4_GROUPS} (what PyTorch's int4 kernels "
                                   f"take); got {group!r}")


def covered_modules(model: nn.Module) -> tuple[list[nn.Linear], list[nn.Module], list[str]]:
    """The Linear modules a quantized draft runs (routed sublayers' projections, then the LM head),
    the sublayers it routes, and a note per sublayer it cannot route (those run as stock modules)."""
    targets: list[nn.Linear] = []
    routed: list[nn.Module] = []
    notes: list[str] = []
    for i, layer in enumerate(model.base_model.layers):
        for kind, sub, ok, names in (("attention", getattr(layer, "self_attn", None), routes_attention, ATTN_LINEARS),
                                     ("MLP", getattr(layer, "mlp", None), routes_mlp, MLP_LINEARS)):
            if sub is None or not ok(sub):
                notes.append(f"layer {i} {kind}: a module of unknown shape, runs at full precision")
                continue
            routed.append(sub)
            targets += [getattr(sub, n) for n in names if isinstance(getattr(sub, n, None), nn.Linear)]
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        targets.append(head)
    return targets, routed, notes


def _pack_best(weight: torch.Tensor, bias: torch.Tensor | None, precision: str, group: int,
               compute_dtype: torch.dtype) -> tuple[PackedLinear | None, list[str]]:
    """``precision`` if its kernel takes this shape, else the next that does (int4 -> int8), else
    None (the module's own weight); with the reason for each precision refused."""
    chain = ("int4", "int8") if precision == "int4" else ("int8",)
    n, k = weight.shape
    reasons = []
    for p in chain:
        why = refusal(p, n, k, group, weight.device)
        if why is None and not kernel_works(p, weight.device.type, compute_dtype):
            why = f"no working {p} kernel on {weight.device.type} in torch {torch.__version__}"
        if why is None:
            return pack(weight, bias, p, group, compute_dtype), reasons
        reasons.append(f"{p}: {why}")
    return None, reasons


def _fallback_line(name: str, mod: nn.Linear, reasons: list[str], got: PackedLinear | None) -> str:
    where = got.precision if got is not None else "the model's own weight"
    return f"{name} [{mod.out_features}x{mod.in_features}] runs in {where} ({', '.join(reasons)})"
