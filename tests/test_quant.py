"""Quantized draft weights: packing, the kernels' products, fallbacks, the adapter's quantized
forward on every family, the target left untouched, and the disk cache."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.models import get_adapter
from swiftsd.engine.quant import QuantizedWeights
from swiftsd.engine.quant_pack import kernel_works, pack, quantize_int4, quantize_int8, refusal
from swiftsd.engine.skipset import SkipSet
from swiftsd.errors import InvalidArgumentError, QuantFallbackWarning
from swiftsd.loading.quant_cache import cache_key, cache_path, load_or_build
from tiny import ARCHS, tiny_model

pytestmark = pytest.mark.skipif(not (kernel_works("int8", "cpu", torch.bfloat16)
                                     and kernel_works("int4", "cpu", torch.bfloat16)),
                                reason="this torch build has no working CPU int8/int4 weight-only kernels")

CPU = torch.device("cpu")


def _weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    w[0, 0] = 9.0  # an outlier: its row's / group's step is large
    return w


def _build(model, precision: str, compute_dtype=torch.float32, group: int = 32) -> QuantizedWeights:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        return QuantizedWeights.build(model, precision, group, compute_dtype)


def _dequantized_copy(model, qw: QuantizedWeights):
    """A deep copy of ``model`` (test only) whose covered weights are what the kernels multiply by.
    Each weight gets a new Parameter, so a tied LM head is untied from the embeddings."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    for mod, p in qw.packed.items():
        modules[qw.names[mod]].weight = nn.Parameter(p.dequantize().to(mod.weight.dtype), requires_grad=False)
    return ref


# -- packing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 64), (97, 48), (64, 576)])
def test_int8_round_trip_within_half_a_step(shape, compute_dtype) -> None:
    w = _weight(*shape)
    q, s = quantize_int8(w, compute_dtype)
    assert q.dtype == torch.int8 and s.dtype == compute_dtype and s.shape == (shape[0],)
    err = (w - q.float() * s.float()[:, None]).abs()
    assert (err <= 0.5 * s.float()[:, None] * (1 + 1e-5) + 1e-7).all()  # bound: half a step, per row


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,group", [((16, 64), 32), ((48, 128), 64), ((32, 256), 128)])
def test_int4_round_trip_and_the_kernels_convention(shape, group, compute_dtype) -> None:
    """|w - w_q| <= step / 2 plus the rounding of step and zero to the activation dtype; and the
    packed kernel multiplies by exactly (q - 8) * step + zero, with zero = min + 8 step."""
    n, k = shape
    w = _weight(n, k)
    q, sz = quantize_int4(w, group, compute_dtype)
    assert q.min() >= 0 and q.max() <= 15 and sz.shape == (k // group, n, 2) and sz.dtype == compute_dtype
    step = sz[..., 0].float().t().repeat_interleave(group, dim=1)  # [n, k]
    zero = sz[..., 1].float().t().repeat_interleave(group, dim=1)
    deq = (q.float() - 8) * step + zero
    eps = 2.0 ** -8 if compute_dtype == torch.bfloat16 else 1e-6
    assert ((w - deq).abs() <= 0.5 * step + eps * (zero.abs() + 16 * step) + 1e-6).all()
    packed = pack(w, None, "int4", group, compute_dtype)
    torch.testing.assert_close(packed.dequantize(), deq, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,rows", [(16, 64, 1), (64, 128, 2), (128, 576, 5), (48, 256, 8)])
def test_packed_matmul_equals_reference_on_dequantized_weights(precision, compute_dtype, n, k, rows) -> None:
    gen = torch.Generator().manual_seed(n + k)
    w, bias = _weight(n, k), torch.randn(n, generator=gen)
    assert refusal(precision, n, k, 32, CPU) is None
    p = pack(w, bias, precision, 32, compute_dtype)
    for x_dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, rows, k, generator=gen).to(x_dtype)
        got = p.matmul(x)
        assert got.dtype == x_dtype and got.shape == (1, rows, n)  # back in the caller's dtype
        want = x.to(compute_dtype).float() @ p.dequantize().t() + bias
        tol = 1e-5 if compute_dtype == x_dtype == torch.float32 else 1.5e-2  # bf16 rounds x and the output
        torch.testing.assert_close(got.float(), want, atol=tol * float(want.abs().max()), rtol=tol)


def test_int8_kernel_gets_aligned_activations() -> None:
    """The bf16 int8 kernel's aligned loads segfault on a view that starts mid-vector; matmul copies it."""
    p = pack(_weight(32, 64), None, "int8", 0, torch.bfloat16)
    buf = torch.randn(3 * 64 + 1).bfloat16()
    x = buf[1:].view(3, 64)  # 2-byte offset: not 32-byte aligned
    assert x.data_ptr() % 32 != 0
    torch.testing.assert_close(p.matmul(x), p.matmul(x.clone()), atol=0, rtol=0)


def test_refusals_name_the_kernels_constraints() -> None:
    assert refusal("int8", 97, 64, 0, CPU) is None
    assert "16" in refusal("int8", 64, 72, 0, CPU)  # bf16 int8: K % 16
    assert refusal("int4", 64, 64, 32, CPU) is None
    assert "group 32" in refusal("int4", 64, 48, 32, CPU)  # K % group
    assert "multiple of 16" in refusal("int4", 72, 64, 32, CPU)  # CPU int4: N % 16
    assert refusal("int4", 68, 64, 32, torch.device("cuda")) is not None  # CUDA: N % 8
    assert refusal("int4", 40, 64, 32, torch.device("cuda")) is None
    with pytest.raises(InvalidArgumentError):
        QuantizedWeights.build(tiny_model("llama"), "int4", group=16)
    with pytest.raises(InvalidArgumentError):
        QuantizedWeights.build(tiny_model("llama"), "int3")


def test_shapes_the_kernels_refuse_fall_back_and_warn_once() -> None:
    """intermediate 72: gate/up [72 x 64] are no int4 width (N % 16) -> int8; down [64 x 72] has a K
    that neither group 32 nor the int8 kernel's 16 divides -> the module's own weight."""
    model = tiny_model("llama", seed=3, intermediate_size=72, vocab_size=112)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qw = QuantizedWeights.build(model, "int4", 32, torch.float32)
    ours = [w for w in caught if issubclass(w.category, QuantFallbackWarning)]
    assert len(ours) == 1 and "down_proj" in str(ours[0].message)
    mlp, attn = model.model.layers[2].mlp, model.model.layers[2].self_attn
    assert qw.precision_of(mlp.gate_proj) == qw.precision_of(mlp.up_proj) == "int8"
    assert qw.precision_of(mlp.down_proj) == "full" and mlp.down_proj not in qw.packed
    assert qw.precision_of(attn.q_proj) == qw.precision_of(model.lm_head) == "int4"
    assert len(qw.fallbacks) == 3 * model.config.num_hidden_layers
    ad, ref = get_adapter(model), get_adapter(_dequantized_copy(model, qw))
    ids = torch.arange(10) % 112
    got = ad.forward(ids, torch.arange(10), cache=SlotKVCache(6, 16), weights=qw)
    torch.testing.assert_close(got, ref.forward(ids, torch.arange(10), cache=SlotKVCache(6, 16)),
                               atol=1e-4, rtol=1e-4)


# -- the adapter's quantized forward, every family --------------------------------------------------
def _three_forwards(ad, ids: torch.Tensor, **kw) -> list[torch.Tensor]:
    """A masked prefill of 24 tokens, a 4-token chain block after it, and a one-token layer-skipped step."""
    cache = SlotKVCache(ad.num_layers, 40)
    causal = torch.ones(24, 24, dtype=torch.bool).tril()
    out = [ad.forward(ids[:24], torch.arange(24), cache=cache, block_mask=causal, **kw)]
    cache.rollback(24)
    out.append(ad.forward(ids[24:28], torch.arange(24, 28), cache=cache, slot_start=24, visible_prefix=24,
                          block_mask=torch.ones(4, 4, dtype=torch.bool).tril(), **kw))
    cache.rollback(28)
    out.append(ad.forward(ids[28:29], torch.tensor([28]), cache=cache, slot_start=28, visible_prefix=28,
                          skip=SkipSet(attn=(2,), mlp=(3,)), **kw))
    return out


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_forward_equals_forward_of_the_dequantized_model(arch: str, precision: str) -> None:
    """The quantized draft computes what the same model with the dequantized weights computes: tightly
    with float32 activations (only the projections differ), within bf16 rounding with bf16 ones."""
    model = tiny_model(arch, seed=4, attn_implementation="eager" if arch == "gemma2" else "sdpa")
    ids = torch.randint(0, 97, (29,), generator=torch.Generator().manual_seed(1))
    for compute_dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        qw = _build(model, precision, compute_dtype)
        assert len(qw.routed) == 2 * model.config.num_hidden_layers  # every attention and MLP is routed
        got = _three_forwards(get_adapter(model), ids, weights=qw)
        want = _three_forwards(get_adapter(_dequantized_copy(model, qw)), ids)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=tol * float(w.abs().max()), rtol=tol)


def test_quantized_tree_forward_uses_the_packed_attention_path() -> None:
    """An SDPA GQA model's masked multi-token forward takes attention.py's packed product; quantized
    weights go through it too (and the result is still the dequantized model's)."""
    model = tiny_model("qwen2", seed=5)
    ad = get_adapter(model)
    assert ad.packed_gqa
    qw = _build(model, "int8")
    ids = torch.randint(0, 97, (29,), generator=torch.Generator().manual_seed(2))
    got = _three_forwards(ad, ids, weights=qw)
    want = _three_forwards(get_adapter(_dequantized_copy(model, qw)), ids)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * float(w.abs().max()), rtol=1e-4)


# -- the target is never touched ---------------------------------------------------------------------
def test_weights_none_is_bitwise_the_plain_forward_and_the_target_is_untouched() -> None:
    model = tiny_model("qwen2", seed=6)  # q/k/v have biases: the packed copies share them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {n: (set(vars(m)), set(m._parameters), set(m._buffers)) for n, m in model.named_modules()}
    ad = get_adapter(model)
    ids = torch.randint(0, 97, (29,), generator=torch.Generator().manual_seed(3))
    plain = _three_forwards(ad, ids)
    for precision in ("int8", "int4"):
        qw = _build(model, precision, torch.bfloat16)
        _three_forwards(ad, ids, weights=qw)
        for a, b in zip(plain, _three_forwards(ad, ids, weights=None)):
            assert torch.equal(a, b)
        storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        for mod, p in qw.packed.items():
            assert p.weight.untyped_storage().data_ptr() not in storages  # its own (int) storage...
            assert p.weight.dtype in (torch.int8, torch.uint8, torch.int32)  # ...never a float copy
            assert p.scales.numel() <= 2 * mod.weight.numel() // 16
            if mod.bias is not None:  # the module's bias, shared, not copied
                assert p.bias.untyped_storage().data_ptr() == mod.bias.untyped_storage().data_ptr()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert attrs == {n: (set(vars(m)), set(m._parameters), set(m._buffers)) for n, m in model.named_modules()}


def test_the_packed_copies_are_freed_with_their_owner() -> None:
    """Nothing global (the kernel probe's cache, the model) keeps a quantized copy alive."""
    import gc
    import weakref

    model = tiny_model("llama", seed=6)
    qw = _build(model, "int4", torch.bfloat16)
    get_adapter(model).forward(torch.arange(5), torch.arange(5), cache=SlotKVCache(6, 8), weights=qw)
    refs = [weakref.ref(p.weight) for p in qw.packed.values()]
    del qw
    gc.collect()
    assert all(r() is None for r in refs)


def test_extra_memory_is_reported_as_a_share_of_the_linear_weights() -> None:
    model = tiny_model("llama", seed=7, vocab_size=112, dtype=torch.bfloat16)  # every shape fits int4
    int8, int4 = _build(model, "int8", torch.bfloat16), _build(model, "int4", torch.bfloat16)
    assert not int8.fallbacks and not int4.fallbacks
    for qw in (int8, int4):
        assert qw.extra_bytes == sum(p.weight.nbytes + p.scales.nbytes for p in qw.packed.values())
        assert qw.linear_bytes == sum(m.weight.nbytes for m in qw.packed)
    assert 0.5 < int8.extra_share < 0.52  # 1 byte a weight (+ a scale a row) against bf16's 2
    assert abs(int4.extra_share - (0.5 + 4 / 32) / 2) < 0.01  # half a byte + 2 bf16 values a group of 32
    assert "MiB" in int4.summary() and "int4 group 32" in int4.summary()


def test_draft_head_rows_are_the_quantized_lm_head_rows() -> None:
    model = tiny_model("llama", seed=8, vocab_size=112)
    ad = get_adapter(model)
    qw = _build(model, "int4")
    head = ad.draft_head(torch.arange(0, 112, 7))  # 16 rows: an int4 width
    qh = qw.with_head(head)
    packed = qh.head_linear(head)
    assert packed is not None and packed.precision == "int4" and qw.head_linear(head) is None
    full = qw.packed[model.lm_head].dequantize()
    torch.testing.assert_close(packed.dequantize(), full[head.token_ids], atol=0, rtol=0)
    ids = torch.arange(12) % 112
    rows = ad.forward(ids, torch.arange(12), cache=SlotKVCache(6, 16), weights=qh, head=head)
    every = ad.forward(ids, torch.arange(12), cache=SlotKVCache(6, 16), weights=qw)
    torch.testing.assert_close(rows, every[:, head.token_ids], atol=1e-5, rtol=1e-5)
    with pytest.warns(RuntimeWarning, match="with_head"):  # not quantized for this head: full rows, said
        ad.forward(ids, torch.arange(12), cache=SlotKVCache(6, 16), weights=qw, head=head)


# -- the disk cache ----------------------------------------------------------------------------------
@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path))
    return tmp_path


def _same(a: QuantizedWeights, b: QuantizedWeights) -> None:
    assert set(a.names.values()) == set(b.names.values()) and a.fallbacks == b.fallbacks
    assert a.extra_bytes == b.extra_bytes and a.linear_bytes == b.linear_bytes
    for mod, p in a.packed.items():
        q = b.packed[mod]
        assert (p.precision, p.group) == (q.precision, q.group)
        assert torch.equal(p.weight, q.weight) and torch.equal(p.scales, q.scales)


def test_disk_cache_round_trips(cache_root, capsys) -> None:
    model = tiny_model("phi3", seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        first = load_or_build(model, "int4")
        assert "built" in capsys.readouterr().err
        path = cache_path(cache_key(model, "int4", 32, torch.bfloat16))
        assert path.is_file() and path.parent == cache_root / "quant"
        second = load_or_build(model, "int4")
    assert "built" not in capsys.readouterr().err  # read back, not rebuilt
    _same(first, second)
    assert second.routed == first.routed and second.head_module is model.lm_head
    ids = torch.arange(9) % 97
    ad = get_adapter(model)
    a = ad.forward(ids, torch.arange(9), cache=SlotKVCache(6, 12), weights=first)
    assert torch.equal(a, ad.forward(ids, torch.arange(9), cache=SlotKVCache(6, 12), weights=second))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "other-key"])
def test_a_corrupt_or_mismatched_cache_file_is_rebuilt(cache_root, capsys, damage: str) -> None:
    model = tiny_model("qwen3", seed=10)
    good = load_or_build(model, "int8")
    path = cache_path(cache_key(model, "int8", 32, torch.bfloat16))
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        state = torch.load(path, weights_only=True)
        if damage == "flipped":  # one code changed: the file still loads, its digest does not match
            state["entries"]["lm_head"]["weight"][0, 0] += 1
        else:
            state["key"] = dict(state["key"], torch="0.0")
        torch.save(state, path)
    capsys.readouterr()
    rebuilt = load_or_build(model, "int8")
    err = capsys.readouterr().err
    assert "rebuilding" in err and "built" in err
    _same(good, rebuilt)
    _same(good, load_or_build(model, "int8"))  # the rewritten file is good again
    assert "built" not in capsys.readouterr().err
