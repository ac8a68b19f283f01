"""Model identity: computed from the model, nothing written on it, different models told apart."""

from __future__ import annotations

import json

import pytest
import torch

from swiftsd import InvalidArgumentError, ModelIdentity, model_identity
from swiftsd.loading import load
from tiny import tiny_model


def _saved(tmp_path, seed=0, name="m"):
    d = tmp_path / name
    tiny_model("llama", seed=seed).save_pretrained(d)
    return d


def test_load_writes_nothing_on_the_config_and_save_pretrained_stays_clean(tmp_path):
    d = _saved(tmp_path)
    before = json.loads((d / "config.json").read_text())
    model, _ = _load_no_tokenizer(d)
    ident = model_identity(model)
    assert ident.name == str(d.resolve()) and ident.dtype == "float32" and ident.revision.startswith("sha256:")
    assert not [k for k in vars(model.config) if "swiftsd" in k]
    out = tmp_path / "again"
    model.save_pretrained(out)
    after = json.loads((out / "config.json").read_text())
    assert not [k for k in after if "swiftsd" in k.lower()]
    assert set(after) - set(before) <= {"transformers_version"}
    assert model_identity(model) == ident  # computing it changed nothing either


def _load_no_tokenizer(d):
    """swiftsd.load needs a tokenizer in the directory: give it a trivial one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(d)
    return load(str(d), device="cpu")


def test_identity_tells_models_and_dtypes_apart(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    ia, ib = model_identity(a), model_identity(b)
    assert ia.name == ib.name == "LlamaForCausalLM"  # built in memory: no path to name them by
    assert ia.revision != ib.revision  # ... but their weights differ
    assert model_identity(tiny_model("llama", seed=0)) == ia  # same weights, same identity
    half = model_identity(tiny_model("llama", seed=0).to(torch.bfloat16))
    assert half.dtype == "bfloat16" and half != ia
    with torch.no_grad():
        a.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # sampled: element 0 of every tensor
    assert model_identity(a).revision != ia.revision
    assert "revision" in ia.mismatch(ib) and ia.mismatch(ia) is None


def test_hub_commit_is_the_revision():
    m = tiny_model("llama", seed=0)
    m.config._commit_hash = "abc123"
    assert model_identity(m).revision == "rev:abc123"


def test_round_trip_and_bad_dicts():
    ident = ModelIdentity("m", "sha256:00", "float32")
    assert ModelIdentity.from_dict(json.loads(json.dumps(ident.to_dict()))) == ident
    with pytest.raises(InvalidArgumentError, match="name, revision, dtype"):
        ModelIdentity.from_dict({"name": "m"})
