"""Weight-only int8 / int4 copies of one Linear, packed for PyTorch's own kernels.

Decoding a token is memory-bound: a draft step costs what it reads. An int8 copy
of a weight reads half the bytes of bf16, an int4 copy about a third (group 32),
so a draft that runs its projections on them steps 2-3x faster (MODELS.md).

Kernels (built into PyTorch, no extra package):

* int8, symmetric per output channel: ``torch._weight_int8pack_mm(x, q[N, K] int8, scales[N])``,
  y = x @ (q * scale).T.
* int4, asymmetric per group of ``group`` inputs: on CPU
  ``torch._weight_int4pack_mm_for_cpu(x, _convert_weight_to_int4pack_for_cpu(q[N, K] int32, 1), group,
  scales_and_zeros[K/group, N, 2])``; on CUDA ``torch._weight_int4pack_mm`` with
  ``_convert_weight_to_int4pack(q_uint8[N, K/2], inner_k_tiles)`` (two codes a byte, even column in the
  high nibble, as torchao packs it). Both compute w = (q - 8) * scale + zero, so a group with
  minimum m and step s stores zero = m + 8 s.

What the kernels take, found on this machine (torch 2.13, AVX-512) and in their sources:

* x, scales and zeros must share one dtype; x must be 2-D and contiguous. They are fast only with
  bf16 activations (fp32 activations ran 3-6x *slower* than the fp32 model), so the activations of
  a quantized matmul run in ``compute_dtype`` (bf16) and the result returns in the caller's dtype.
* int8 with bf16 activations reads x 16 values at a time with *aligned* vector loads: a K that is
  not a multiple of 16 reads past each row (wrong results, or a segfault from 2 rows on), and an x
  whose data does not start on a 32-byte boundary (a view at an odd offset) segfaults. K % 16 is
  checked here at build time, and x is copied when it is not 64-byte aligned.
* int4 on CPU: group in {32, 64, 128, 256}, K % group == 0, N % 16 == 0 (checked by the kernel, an
  error). The packed layout depends on the CPU's vector width (64-wide blocks on AVX-512, 32 on
  AVX2), so a packed tensor is only valid on the machine kind that packed it; the inner-k-tiles
  argument of the CPU converter is unused (torchao passes 1).
* int4 on CUDA (tinygemm, untested here: no GPU): bf16 only, N % 8 == 0, K % (inner_k_tiles * 16)
  == 0 with inner_k_tiles in {2, 4, 8}.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

PRECISIONS = ("int8", "int4")
INT4_GROUPS = (32, 64, 128, 256)
_ROWS_PER_CHUNK = 4096  # quantize a matrix in row chunks: the float32 scratch stays small (LM heads)
_ALIGN = 64


@dataclass(frozen=True)
class PackedLinear:
    """One Linear's weight in a weight-only quantized form, ready for its kernel.

    ``weight``: int8 [N, K] (int8), or the kernel's packed int4 layout (int4);
    ``scales``: [N] (int8), or scales and zeros [K/group, N, 2] (int4), in ``compute_dtype``;
    ``bias``: the module's own bias tensor (a reference, not a copy), or None.
    """

    precision: str
    group: int  # inputs per int4 group; 0 for int8
    weight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    out_features: int
    in_features: int
    compute_dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes this copy adds (the bias is the module's own)."""
        return self.weight.nbytes + self.scales.nbytes

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` for x [..., K], with x cast to ``compute_dtype`` for the kernel; returns x's dtype."""
        lead = x.shape[:-1]
        x2 = _aligned(x.reshape(-1, self.in_features).to(self.compute_dtype))
        if self.precision == "int8":
            y = torch._weight_int8pack_mm(x2, self.weight, self.scales)
        elif self.weight.device.type == "cpu":
            y = torch._weight_int4pack_mm_for_cpu(x2, self.weight, self.group, self.scales)
        else:
            y = torch._weight_int4pack_mm(x2, self.weight, self.group, self.scales)
        y = y.to(x.dtype).reshape(*lead, self.out_features)  # a fresh tensor: the bias goes in in place
        return y.add_(self.bias) if self.bias is not None else y

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] the kernel multiplies by (tests and diagnostics only).

        int4 is read back through the kernel itself (x = identity rows), so the answer holds for
        whatever layout the packing used; that costs K x N x K work. On CUDA the kernel takes only
        bf16, so the values come back rounded to bf16.
        """
        if self.precision == "int8":
            return self.weight.float() * self.scales.float()[:, None]
        on_cpu = self.weight.device.type == "cpu"
        dtype = torch.float32 if on_cpu else torch.bfloat16
        sz = self.scales.to(dtype)
        rows = []
        for start in range(0, self.in_features, 1024):
            n = min(1024, self.in_features - start)
            eye = torch.zeros(n, self.in_features, dtype=dtype, device=self.weight.device)
            eye[:, start:start + n].fill_diagonal_(1)
            mm = torch._weight_int4pack_mm_for_cpu if on_cpu else torch._weight_int4pack_mm
            rows.append(mm(eye, self.weight, self.group, sz).float())
        return torch.cat(rows).t().contiguous()


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x, contiguous and starting on a 64-byte boundary (the int8 kernel's aligned loads need 32)."""
    if x.is_contiguous() and x.data_ptr() % _ALIGN == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


# -- what each kernel can take -------------------------------------------------------------------
def refusal(precision: str, out_features: int, in_features: int, group: int, device: torch.device) -> str | None:
    """Why ``precision``'s kernel cannot take an [N, K] = [out, in] weight, or None if it can."""
    n, k = out_features, in_features
    if precision == "int8":
        return None if k % 16 == 0 else f"in_features {k} is not a multiple of 16"
    if k % group:
        return f"in_features {k} is not a multiple of the group {group}"
    if device.type == "cuda":
        if n % 8:
            return f"out_features {n} is not a multiple of 8"
        return None  # group >= 32 and k % group == 0: k % 32 == 0, so inner_k_tiles 2 fits
    return None if n % 16 == 0 else f"out_features {n} is not a multiple of 16"


@functools.lru_cache(maxsize=None)
def kernel_works(precision: str, device_type: str, compute_dtype: torch.dtype) -> bool:
    """Does this torch build run ``precision``'s kernel on this device, correctly? (Probed once.)"""
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(32, 64, generator=gen).to(device_type)
        x = torch.randn(3, 64, generator=gen).to(device=device_type, dtype=compute_dtype)
        packed = pack(w, None, precision, 32, compute_dtype)
        want = x.float() @ packed.dequantize().t()
        got = packed.matmul(x).float()
        return bool(torch.allclose(got, want, atol=0.05 * float(want.abs().max()), rtol=0.05))
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        return False


# -- quantize and pack ------------------------------------------------------------------------------
@torch.no_grad()
def quantize_int8(w: torch.Tensor, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: q [N, K] int8 and scales [N] in ``compute_dtype``, |w - q s| <= s / 2.

    The scale is rounded to ``compute_dtype`` *before* the codes are chosen, so the codes sit on the
    grid the kernel multiplies by.
    """
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scales = torch.empty(w.shape[0], dtype=compute_dtype, device=w.device)
    for start in range(0, w.shape[0], _ROWS_PER_CHUNK):
        rows = w[start:start + _ROWS_PER_CHUNK].float()
        s = (rows.abs().amax(dim=1) / 127).clamp_(min=1e-8).to(compute_dtype)
        scales[start:start + rows.shape[0]] = s
        q[start:start + rows.shape[0]] = torch.round(rows / s.float()[:, None]).clamp_(-128, 127).to(torch.int8)
    return q, scales


@torch.no_grad()
def quantize_int4(w: torch.Tensor, group: int, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group`` inputs: codes q [N, K] int32 in 0..15 and
    scales_and_zeros [K/group, N, 2] in ``compute_dtype`` with w ~ (q - 8) * scale + zero.

    Step s = (max - min) / 15 and zero = min + 8 s per group, both rounded to ``compute_dtype``
    before the codes are chosen (the grid the kernel uses); |w - w_q| <= s / 2 up to that rounding.
    """
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.int32, device=w.device)
    sz = torch.empty(k // group, n, 2, dtype=compute_dtype, device=w.device)
    for start in range(0, n, _ROWS_PER_CHUNK):
        rows = w[start:start + _ROWS_PER_CHUNK].float().reshape(-1, k // group, group)
        lo, hi = rows.amin(dim=-1), rows.amax(dim=-1)
        step = ((hi - lo) / 15).clamp_(min=1e-6).to(compute_dtype)
        zero = (lo + 8 * step.float()).to(compute_dtype)
        s, z = step.float()[..., None], zero.float()[..., None]
        codes = torch.round((rows - (z - 8 * s)) / s).clamp_(0, 15)
        end = start + rows.shape[0]
        q[start:end] = codes.to(torch.int32).reshape(-1, k)
        sz[:, start:end, 0] = step.t()
        sz[:, start:end, 1] = zero.t()
    return q, sz


def _inner_k_tiles(k: int) -> int:
    return next(t for t in (8, 4, 2) if k % (t * 16) == 0)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] int32 in 0..15 -> the int4 kernel's packed layout on q's device."""
    if q.device.type == "cpu":
        return torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # CUDA (torch >= 2.5): two codes a byte
    return torch._convert_weight_to_int4pack(pairs.contiguous(), _inner_k_tiles(q.shape[1]))


def pack(weight: torch.Tensor, bias: torch.Tensor | None, precision: str, group: int,
         compute_dtype: torch.dtype) -> PackedLinear:
    """Quantize and pack one [N, K] weight (the caller checked :func:`refusal`)."""
    n, k = weight.shape
    if precision == "int8":
        q, scales = quantize_int8(weight, compute_dtype)
        return PackedLinear("int8", 0, q, scales, bias, n, k, compute_dtype)
    if precision != "int4":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    q, sz = quantize_int4(weight, group, compute_dtype)
    return PackedLinear("int4", group, pack_int4(q), sz, bias, n, k, compute_dtype)
