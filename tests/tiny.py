"""Tiny random-weight models of every supported family (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
)

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]


def tiny_config(arch: str, **over):
    kw = dict(COMMON, **over)
    if arch == "llama":
        return LlamaConfig(**kw)
    if arch == "mistral":
        return MistralConfig(**{"sliding_window": None, **kw})  # a test may give a window
    if arch == "qwen2":
        return Qwen2Config(**kw)
    if arch == "qwen3":
        return Qwen3Config(head_dim=16, **kw)
    if arch == "gemma2":
        return Gemma2Config(head_dim=16, sliding_window=24, query_pre_attn_scalar=16, **kw)
    if arch == "gemma3_text":
        return Gemma3TextConfig(head_dim=16, sliding_window=24, query_pre_attn_scalar=16, **kw)
    if arch == "phi3":
        kw.pop("num_key_value_heads")
        return Phi3Config(num_key_value_heads=4, **kw)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, dtype=torch.float32, **over):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **over), dtype=dtype)
    # random init gives near-uniform logits; sharpen them so greedy decoding is
    # far from ties and drafts are sometimes right (makes trees non-trivial)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0) if not model.config.tie_word_embeddings else None
    return model.eval()


def cheap_tree_costs(num_layers: int = 6):
    """A device cost model on which trees are nearly free and a layer-skipped draft is cheap (a GPU's
    shape): the default decoder's optimiser always searches here (``planner.layerskip_ceiling``),
    whatever this machine's own timings of a tiny model say."""
    from swiftsd.engine.cost import CostModel

    per = 0.008 / (2 * (num_layers - 2))  # every inner sublayer together: 80 % of a step
    return CostModel(full_step=0.01, attn=per, mlp=per, lm_head=0.001, fixed=0.001, draft_extra=0.0,
                     verify_sizes=(1, 8, 32, 64), verify_times=(0.01, 0.011, 0.013, 0.018), num_layers=num_layers)
