"""Hugging Face assisted generation with a weight-only int4 / int8 copy of the same model as the assistant.

``hf-assisted-int4`` / ``hf-assisted-int8`` call ``model.generate(assistant_model=A)``: HF's own
speculative decoding (separate caches, no trees, HF's draft-length settings), where ``A`` is the
target model with every decoder-layer projection and the LM head run on the weight-only packed
copies swiftsd's quantized draft uses (:mod:`swiftsd.engine.quant`, read from the disk cache
like the decoder's). It is the peer a quantized self-draft is compared with.

The assistant is built without touching the target and without copying its weights:

* :func:`shared_copy` deep-copies the module tree with every parameter and buffer in the
  copy's memo, so the copy's modules are new objects over the target's own tensors (tied
  weights stay tied: one tensor, found once). The copy's ``config`` and
  ``generation_config`` are its own;
* in the copy only, each Linear that has a packed copy is replaced by a :class:`QuantLinear`
  (``packed.matmul(x)``: bf16 activations for the kernel, the result in x's dtype); a matrix
  the kernels refuse keeps its own weight (``QuantFallbackWarning``, once per build);
* the copy's generation config gets the sampling fields the bench passes as None ("off") set to
  their off values: HF fills an assistant's unset fields from *its* generation config, so a
  checkpoint's defaults (say top_k=20, top_p=0.95) would otherwise shape the drafts while the
  target samples without them.

The method owns the assistant (released with it); nothing is set on the target.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine.quant import DEFAULT_GROUP, QuantizedWeights
from ..engine.quant_pack import PackedLinear
from ..loading.quant_cache import load_or_build
from .base import RunParams
from .peers import HFGenerate

PRECISIONS = ("int4", "int8")
# the assistant settings HF reads from the assistant's generation config (its global defaults when unset)
ASSISTANT_SETTINGS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
# what the bench passes as None to mean "off" (HFGenerate._kwargs), resolved to "off" in the assistant too
SAMPLING_OFF = {"do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


class QuantLinear(nn.Module):
    """A Linear's forward on its weight-only packed copy (the bench's assistant only)."""

    def __init__(self, packed: PackedLinear) -> None:
        super().__init__()
        self.packed = packed
        self.in_features, self.out_features = packed.in_features, packed.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed.matmul(x)

    def extra_repr(self) -> str:
        g = f", group={self.packed.group}" if self.packed.precision == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.packed.precision}{g}"


def shared_copy(model: nn.Module) -> nn.Module:
    """New module objects over ``model``'s own parameters and buffers (the same tensor objects)."""
    keep = [*model.parameters(), *model.buffers()]
    return copy.deepcopy(model, memo={id(t): t for t in keep})


def build_assistant(model: nn.Module, qw: QuantizedWeights) -> nn.Module:
    """``model``'s shared copy with each packed Linear replaced by a :class:`QuantLinear`."""
    assistant = shared_copy(model)
    for mod, packed in qw.packed.items():
        assistant.set_submodule(qw.names[mod], QuantLinear(packed))
    own = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    copied = [n for n, t in (*assistant.named_parameters(), *assistant.named_buffers()) if t.data_ptr() not in own]
    if copied:  # a shared-weight copy or nothing: never a second set of weights
        raise RuntimeError(f"the assistant copy holds tensors of its own: {', '.join(copied[:4])}")
    assistant.generation_config.update(**SAMPLING_OFF)
    return assistant


def hf_assistant_defaults() -> dict[str, Any]:
    """HF's global defaults for the assistant settings (what an unset field becomes)."""
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
    return {k: defaults.get(k) for k in ASSISTANT_SETTINGS}


def _hooked(model: nn.Module) -> list[str]:
    return [n or "<root>" for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


class HFAssisted(HFGenerate):
    """``model.generate(assistant_model=A)``, A the same model over int4 / int8 copies of its matrices."""

    def __init__(self, model: Any, tokenizer: Any, precision: str = "int4", group: int = DEFAULT_GROUP,
                 use_cache: bool = True) -> None:
        super().__init__(model, tokenizer)
        self.name = f"hf-assisted-{precision}"
        self.precision, self.group, self.use_cache = precision, group, use_cache
        self.generate_kwargs = {}
        self.weights: QuantizedWeights | None = None
        self.assistant: nn.Module | None = None
        self._why: str | None = None
        self._checked = False

    # -- the assistant, built on first need ---------------------------------------------------------
    def _assistant(self) -> nn.Module:
        if self.assistant is None:
            why = self.unavailable()
            assert self.assistant is not None, f"{self.name} is unavailable: {why}"
        return self.assistant

    def unavailable(self) -> str | None:
        """Builds the assistant (once) and runs a two-token assisted generate: the installed
        transformers' refusal, if any, becomes the reason."""
        if not self._checked:
            self._checked = True
            self._why = self._build()
        return self._why

    def _build(self) -> str | None:
        if self.precision not in PRECISIONS:
            return f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
        hooked = _hooked(self.model)
        if hooked:
            return (f"the model has forward hooks ({', '.join(hooked[:3])}; accelerate's device map?), which "
                    "a shared-weight copy would carry")
        try:
            with torch.no_grad():
                self.weights = load_or_build(self.model, self.precision, self.group, torch.bfloat16,
                                             use_cache=self.use_cache)
                self.assistant = build_assistant(self.model, self.weights)
            self.assistant.generation_config.update(**self.settings())  # HF's values, stated, never None
        except Exception as exc:  # noqa: BLE001 - any failure to build is this method's n/a, with its reason
            self.weights = self.assistant = None
            return f"cannot build the {self.precision} assistant: {type(exc).__name__}: {exc}"
        state = self.learned_state()
        try:
            probe = self.tokenizer.bos_token_id if getattr(self.tokenizer, "bos_token_id", None) is not None else 0
            ids = torch.tensor([[probe]], device=self.device)
            self.model.generate(ids, **self._kwargs(ids, RunParams(max_new_tokens=2)))
        except Exception as exc:  # noqa: BLE001 - the installed transformers' refusal, said rather than raised
            self.weights = self.assistant = None
            return f"transformers refuses assistant_model here: {type(exc).__name__}: {exc}"
        finally:
            self.set_state(state)
        return None

    def _call_kwargs(self) -> dict[str, Any]:
        return {"assistant_model": self._assistant()}

    def _draft_models(self) -> tuple[Any, ...]:
        return (self._assistant(),)

    # -- the report -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The assistant settings HF uses: the assistant's generation config, else HF's defaults."""
        gc = (self.assistant if self.assistant is not None else self.model).generation_config
        return {k: getattr(gc, k, None) if getattr(gc, k, None) is not None else v
                for k, v in hf_assistant_defaults().items()}

    def describe(self) -> dict[str, Any]:
        from transformers.utils import is_sklearn_available

        qw = self.weights
        return {
            "assistant_model": f"the same model over weight-only {self.precision} copies of its projections and "
                               "LM head (bf16 activations), sharing every other tensor with it",
            "precision": self.precision, "group": self.group if self.precision == "int4" else 0,
            "packed_matrices": len(qw.packed) if qw is not None else None,
            "fallbacks": list(qw.fallbacks) if qw is not None else None,
            "extra_mib": round(qw.extra_bytes / 2**20, 2) if qw is not None else None,
            **self.settings(),
            # with scikit-learn installed, HF retunes the confidence threshold during each call (ROC curve)
            "confidence_threshold_adapts": bool(is_sklearn_available()),
        }

    # -- state: HF's "heuristic" schedule keeps num_assistant_tokens on the assistant across calls ---
    def learned_state(self) -> Any:
        return None if self.assistant is None else self.assistant.generation_config.num_assistant_tokens

    def set_state(self, state: Any) -> None:
        if self.assistant is not None:
            self.assistant.generation_config.num_assistant_tokens = state

    def warmup(self, input_ids: list[int], params: RunParams, seed: int) -> None:
        state = self.learned_state()
        self.generate(input_ids, params, seed)
        self.set_state(state)
