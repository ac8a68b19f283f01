"""Whether this CPU multiplies a half-precision dtype natively, checked once at load time.

On an x86 CPU without AVX512-BF16 / AMX (or AVX512-FP16), PyTorch multiplies bfloat16
(float16) matrices in a generic loop: a forward over n tokens costs about n one-token
forwards. Prefill and tree verification, the very forwards speculative decoding
relies on, slow down most: on a 2-core AVX2 EPYC, plain decoding of qwen2.5-coder-0.5b,
prompts included, ran at 2.1 tok/s in bf16 against 3.9 in fp32 (two Spec-Bench runs,
`docs/benchmarks/token-trees/`). A user who asked for bf16 should hear that once.
"""

from __future__ import annotations

import torch

__all__ = ["slow_dtype_note"]

_CHECKS = {torch.bfloat16: ("_is_mkldnn_bf16_supported", "AVX512-BF16 or AMX"),
           torch.float16: ("_is_mkldnn_fp16_supported", "AVX512-FP16 or AMX-FP16")}


def native_half_matmul(dtype: torch.dtype) -> bool | None:
    """True / False when oneDNN says whether this CPU has native ``dtype`` matmul; None when it cannot tell."""
    check = _CHECKS.get(dtype)
    if check is None or not torch.backends.mkldnn.is_available():
        return None
    fn = getattr(torch.ops.mkldnn, check[0], None)
    try:
        return None if fn is None else bool(fn())
    except (RuntimeError, AttributeError):  # a private op: absent or renamed in some torch builds
        return None


def slow_dtype_note(dtype: torch.dtype, device: torch.device) -> str | None:
    """The warning to give for ``dtype`` on ``device``, or None when there is nothing to say."""
    if device.type != "cpu" or dtype not in _CHECKS or native_half_matmul(dtype) is not False:
        return None
    name, units = str(dtype).removeprefix("torch."), _CHECKS[dtype][1]
    return (f"this CPU has no native {name} matrix multiply ({units}), so a forward over n tokens costs about n "
            f"one-token forwards: prefill and tree verification slow down most. float32 (--dtype float32, or "
            f"dtype=None: the CPU default) is likely faster here")
