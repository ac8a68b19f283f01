"""Compatibility with the transformers range in pyproject: the KV cache goes in under the name it takes."""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

from swiftsd import SwiftDecoder
from swiftsd.engine.models import _cache_kwarg, get_adapter
from tiny import tiny_model


class _Old(nn.Module):  # transformers <= 5.23
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kw):
        return hidden_states


class _New(nn.Module):  # transformers >= 5.24 (past_key_values still accepted, with a FutureWarning)
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kw):
        return hidden_states


def test_cache_kwarg_follows_the_signature() -> None:
    assert _cache_kwarg(_Old()) == "past_key_values"
    assert _cache_kwarg(_New()) == "cache"


def test_installed_transformers_gets_a_name_it_declares_and_no_deprecation_warning() -> None:
    model = tiny_model("llama", seed=0)
    adapter = get_adapter(model)
    assert adapter.cache_kwarg in inspect.signature(model.model.layers[0].self_attn.forward).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = SwiftDecoder(model, optimizer=False).generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    assert out.stats.new_tokens == 4
