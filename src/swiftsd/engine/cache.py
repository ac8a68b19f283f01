"""A preallocated KV cache indexed by slot, rolled back by length.

Stock Hugging Face attention modules only call ``cache.update(k, v, layer_idx)``;
this cache writes those keys/values at the slots chosen for the current forward
and returns a view of every slot up to the end of the write. Nothing is ever
copied whole: rejected draft / tree entries are simply overwritten later, and
keeping the accepted tree path moves only those few slots (``keep``).

Slot index and token position are decoupled (RoPE is applied before caching and
the attention mask is built from positions), which lets the optimiser score a
skip set in scratch slots past the committed length without touching them.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    """Per-layer key/value buffers of shape [1, kv_heads, capacity, head_dim]."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.num_layers = num_layers
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0  # committed slots: [0, length) hold the full model's KV
        self._write_start = 0

    # -- used by the adapter before a forward -------------------------------
    def begin_write(self, start: int, count: int) -> None:
        """The next forward writes its ``count`` tokens at slots [start, start+count)."""
        if start + count > self.capacity:
            raise RuntimeError(f"KV cache overflow: need slot {start + count}, capacity {self.capacity}")
        self._write_start = start

    # -- the Hugging Face Cache protocol used by attention modules -----------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf = self.keys[layer_idx]
        if k_buf is None:
            b, h, _, d = key_states.shape
            shape = (b, h, self.capacity, d)
            k_buf = self.keys[layer_idx] = key_states.new_zeros(shape)
            self.values[layer_idx] = value_states.new_zeros(shape)
        v_buf = self.values[layer_idx]
        s, n = self._write_start, key_states.shape[2]
        k_buf[:, :, s : s + n] = key_states
        v_buf[:, :, s : s + n] = value_states
        return k_buf[:, :, : s + n], v_buf[:, :, : s + n]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # -- rollback and compaction ----------------------------------------------
    def rollback(self, length: int) -> None:
        """Forget every slot at or past ``length`` (O(1): they are overwritten later)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"cannot roll back to {length} (capacity {self.capacity})")
        self.length = length

    @torch.inference_mode()
    def keep(self, start: int, indices: list[int]) -> None:
        """Move slots ``start + indices[i]`` to ``start + i`` and commit them.

        After verification the tree occupies slots [start, start+N); the accepted
        path (root first) is compacted to the front. Only those slots move.
        """
        n = len(indices)
        if indices != list(range(n)):
            src = torch.tensor(indices, device=self._device()) + start
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    if buf is not None:
                        buf[:, :, start : start + n] = buf.index_select(2, src)
        self.length = start + n

    def _device(self) -> torch.device:
        for k in self.keys:
            if k is not None:
                return k.device
        return torch.device("cpu")
