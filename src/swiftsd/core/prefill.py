"""Chunked prefill: the prompt's keys and values written a chunk at a time, with a pause between chunks.

One forward over a long prompt cannot be interrupted, and it builds every layer's
whole P x P attention at once (issue 32: 8,000 tokens held the server's only worker
for 52 s, 45 s past the request's timeout). A chunk of C tokens attends to the slots
written before it plus itself, C x (start + C), so the prefill can be stopped between
two chunks and its attention memory is bounded by the chunk. The keys and values it
writes are the full forward's (a query attends to earlier keys only; sliding windows
are applied by position in the adapter's masks), so greedy output is unchanged.

Stopping is the consumer's: this is a generator that yields ``[]`` (a step with no
tokens) between chunks, so whoever iterates the decoder's stream (the server's
worker) checks its deadline and its client there and closes the stream to stop.
No flag or callback travels down into the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator, Sequence

import torch

if TYPE_CHECKING:
    from ..engine.cache import SlotKVCache
    from ..engine.models import DecoderAdapter

__all__ = ["prefill_chunks", "chunk_bounds"]


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of ``n`` tokens; ``chunk`` 0 (or >= n): one chunk."""
    step = n if chunk <= 0 else chunk
    return [(s, min(s + step, n)) for s in range(0, n, max(step, 1))]


def prefill_chunks(adapter: "DecoderAdapter", cache: "SlotKVCache", tokens: Sequence[int], chunk: int
                   ) -> Generator[list[int], None, torch.Tensor]:
    """Write ``tokens``' KV to ``cache`` slots [0, P) in chunks of ``chunk`` tokens (0: one forward)
    and return the full model's logits [1, V] after the last token.

    Yields ``[]`` between two chunks (never before the first or after the last); closing the
    generator there stops the prefill, leaving the slots written so far committed.
    """
    dev, n = adapter.device, len(tokens)
    ids = torch.tensor(list(tokens), device=dev)
    logits = None
    for start, end in chunk_bounds(n, chunk):
        if start:
            yield []  # between chunks: the consumer may stop here
        q = end - start
        rows = slice(q - 1, q) if end == n else slice(0, 0)  # the LM head for the prompt's last token only
        logits = adapter.forward(ids[start:end], torch.arange(start, end, device=dev), cache=cache,
                                 slot_start=start, visible_prefix=start, logits_rows=rows)
        cache.rollback(end)  # committed: the next chunk sees slots [0, end)
    assert logits is not None, "an empty prompt has nothing to prefill"
    return logits
