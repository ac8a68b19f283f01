"""SlotKVCache: writes at chosen slots, O(1) rollback, compaction of the accepted path."""

from __future__ import annotations

import pytest
import torch

from swiftsd.engine.cache import SlotKVCache

H, D = 2, 3  # kv heads, head dim


def _kv(n: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values [1, H, n, D] whose every entry encodes (base, slot offset)."""
    k = base + torch.arange(n, dtype=torch.float32)[None, None, :, None].expand(1, H, n, D).clone()
    return k, -k


def _filled(layers: int = 2, capacity: int = 16, n: int = 12) -> SlotKVCache:
    c = SlotKVCache(layers, capacity)
    c.begin_write(0, n)
    for layer in range(layers):
        k, v = _kv(n, 100.0 * (layer + 1))
        c.update(k, v, layer)
    c.rollback(n)
    return c


def test_update_writes_at_slots_and_returns_prefix_view() -> None:
    c = SlotKVCache(2, 10)
    c.begin_write(0, 4)
    k, v = _kv(4, 0.0)
    ks, vs = c.update(k, v, 0)
    assert ks.shape == (1, H, 4, D) and torch.equal(ks, k) and torch.equal(vs, v)
    c.begin_write(6, 2)  # slots need not be contiguous with earlier writes
    k2, v2 = _kv(2, 50.0)
    ks, vs = c.update(k2, v2, 0)
    assert ks.shape == (1, H, 8, D)
    assert torch.equal(ks[:, :, :4], k) and torch.equal(ks[:, :, 6:8], k2)
    assert torch.equal(vs[:, :, 6:8], v2)
    assert c.keys[1] is None  # layers are allocated lazily, on first write
    assert c.get_seq_length() == 0  # only rollback / keep commit a length


def test_begin_write_past_capacity_raises() -> None:
    c = SlotKVCache(1, 8)
    with pytest.raises(RuntimeError, match="overflow"):
        c.begin_write(6, 3)


def test_rollback_is_constant_time_and_later_writes_overwrite() -> None:
    c = _filled()
    buf = c.keys[0]
    ptr, before = buf.data_ptr(), buf.clone()
    c.rollback(5)
    assert c.length == 5 and c.get_seq_length() == 5
    assert c.keys[0] is buf and buf.data_ptr() == ptr  # no reallocation, no copy
    assert torch.equal(buf, before)  # nothing touched: stale slots are just forgotten
    c.begin_write(5, 2)
    k, v = _kv(2, 900.0)
    ks, _ = c.update(k, v, 0)
    assert ks.shape[2] == 7  # the view ends at the new write, stale slots 7.. are not visible
    assert torch.equal(buf[:, :, 5:7], k)
    assert torch.equal(buf[:, :, :5], before[:, :, :5])
    assert torch.equal(buf[:, :, 7:], before[:, :, 7:])


@pytest.mark.parametrize("bad", [-1, 17])
def test_rollback_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        _filled().rollback(bad)


@pytest.mark.parametrize("indices", [[0, 2, 5], [0, 1, 4], [0, 3], [0, 1, 2, 3], [0]])
def test_keep_moves_exactly_the_selected_slots(indices: list[int]) -> None:
    start = 4  # the tree occupies slots [4, 12) after verification
    c = _filled()
    before_k = [b.clone() for b in c.keys]
    before_v = [b.clone() for b in c.values]
    c.keep(start, indices)
    n = len(indices)
    assert c.length == start + n
    for layer in range(2):
        for bufs, before in ((c.keys, before_k), (c.values, before_v)):
            now = bufs[layer]
            for i, j in enumerate(indices):
                assert torch.equal(now[:, :, start + i], before[layer][:, :, start + j])
            # everything else (committed prefix and the slots past the path) is untouched
            assert torch.equal(now[:, :, :start], before[layer][:, :, :start])
            assert torch.equal(now[:, :, start + n :], before[layer][:, :, start + n :])


def test_keep_identity_path_moves_nothing() -> None:
    c = _filled()
    ptr, before = c.keys[0].data_ptr(), c.keys[0].clone()
    c.keep(3, [0, 1, 2])
    assert c.length == 6
    assert c.keys[0].data_ptr() == ptr and torch.equal(c.keys[0], before)
