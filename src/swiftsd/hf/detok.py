"""Incremental detokenisation: token ids in as they are accepted, text out, never half a character.

One implementation for every edge that streams text (the server, ``swiftsd generate
--stream``). It follows text-generation-inference: decode a short window of ids
twice, without and with the new ones, and release the difference, holding it back
while it ends in an incomplete UTF-8 character (U+FFFD). Decoding a window rather
than the whole text keeps each step O(1), and starting the window inside the prompt
keeps a word's leading space where a tokenizer only emits it after another word.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """``add(ids)`` returns the text those ids complete; ``flush()`` whatever is still held back."""

    def __init__(self, tokenizer: Any, context_ids: Sequence[int] = (), context: int = 5) -> None:
        self.tok = tokenizer
        self.ids = [int(t) for t in list(context_ids)[-context:]] if context > 0 else []
        self.prefix, self.read = 0, len(self.ids)  # window start; end of the text already released

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, ids: Iterable[int]) -> str:
        self.ids.extend(int(t) for t in ids)
        return self._step(final=False)

    def flush(self) -> str:
        """The generation ended: release the tail even if it ends mid-character."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        new_text = self._decode(self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""
