"""Chunked prefill (core/prefill.py): lossless on every family for prompts of 1, 2 and 5 chunks,
sliding windows crossed at chunk boundaries; the stream pauses between chunks and stops there."""

from __future__ import annotations

import pytest
import torch

from swiftsd import SkipSet, SwiftDecoder
from swiftsd.core.prefill import chunk_bounds, prefill_chunks
from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.models import get_adapter
from swiftsd.errors import InvalidArgumentError
from lossless_helpers import _first_diff, _ids, cached_plain_generate
from tiny import ARCHS, tiny_model

CHUNK = 16
WINDOW = 20  # Mistral's sliding window here; Gemma 2 / 3's tiny configs have 24: both below 2 chunks
NEW = 30  # decoding crosses the window again


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def _model(models: dict, arch: str):
    if arch not in models:
        over = {"sliding_window": WINDOW} if arch == "mistral" else {}
        models[arch] = tiny_model(arch, seed=1, **over)
    return models[arch]


def test_chunk_bounds() -> None:
    assert chunk_bounds(5, 0) == [(0, 5)] and chunk_bounds(5, 9) == [(0, 5)]
    assert chunk_bounds(32, 16) == [(0, 16), (16, 32)] and chunk_bounds(33, 16)[-1] == (32, 33)


def test_mistral_here_really_has_a_window(models) -> None:
    ad = get_adapter(_model(models, "mistral"))
    assert ad.sliding_window == WINDOW and set(ad.layer_types) == {"sliding_attention"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_chunked_prefill_greedy_equals_generate(arch, n_chunks, models) -> None:
    model = _model(models, arch)
    n = CHUNK * n_chunks - (3 if n_chunks > 1 else 0)  # the last chunk a short one
    ids = _ids(n, seed=100 + n)
    want = cached_plain_generate(model, ids, NEW)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2], mlp=[3]), planner=False,
                       prefill_chunk=CHUNK)
    stream = dec.stream(ids, max_new_tokens=NEW)
    steps = list(stream)
    empties = 0
    while not steps[empties]:
        empties += 1
    assert empties == n_chunks - 1  # one pause between two chunks, none after the first token
    assert all(steps[empties:])
    got = stream.result.sequences
    assert torch.equal(got, want), f"{arch}: first difference at {_first_diff(got, want)}"


@pytest.mark.parametrize("arch", ["gemma2", "mistral", "llama"])
def test_chunked_prefill_writes_the_one_forwards_cache(arch, models) -> None:
    """The KV and last logits of 5 chunks equal one forward's (to float rounding)."""
    model = _model(models, arch)
    ad = get_adapter(model)
    tokens = _ids(77, seed=5)[0].tolist()
    caches = [SlotKVCache(ad.num_layers, 80) for _ in range(2)]
    outs = []
    for cache, chunk in zip(caches, (0, CHUNK)):
        gen = prefill_chunks(ad, cache, tokens, chunk)
        try:
            while True:
                assert next(gen) == []
        except StopIteration as stop:
            outs.append(stop.value)
        assert cache.length == 77
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        torch.testing.assert_close(a[:, :, :77], b[:, :, :77], atol=1e-5, rtol=1e-5)


def test_closing_the_stream_between_chunks_stops_the_prefill(models) -> None:
    model = _model(models, "llama")
    mlp0 = model.model.layers[0].mlp  # the adapter calls each sublayer module once per forward
    calls: list[int] = []
    handle = mlp0.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(1), with_kwargs=True)
    try:
        dec = SwiftDecoder(model, optimizer=False, prefill_chunk=CHUNK)
        stream = dec.stream(_ids(5 * CHUNK, seed=9), max_new_tokens=8)
        it = iter(stream)
        assert next(it) == [] and next(it) == []  # two chunks written, paused before the third
        stream.close()
        with pytest.raises(StopIteration):
            next(it)
    finally:
        handle.remove()
    assert len(calls) == 2 and stream.result is None


def test_prefill_chunk_is_validated() -> None:
    model = tiny_model("llama")
    for bad in (-1, 2.5, True, "64"):
        with pytest.raises(InvalidArgumentError, match="prefill_chunk"):
            SwiftDecoder(model, prefill_chunk=bad)
    assert SwiftDecoder(model, prefill_chunk=0).config.prefill_chunk == 0
