"""Generated token ids in, text safe to send out: detokenisation, end of sequence and stop strings.

Text that might be the start of a stop string is held back, so the output stops
*before* the stop text, as OpenAI's does, and streamed chunks always concatenate to
the non-streamed text. The two stop-string rules, :func:`find_stop` and
:func:`held_back`, are swiftsd.hf.stopping's (shared with the Python API and the CLI,
which keep the stop text as ``model.generate`` does); they are all this module
knows about stop strings. The server matches the decoded text, so a request pays
nothing to index the vocabulary, as Hugging Face's stop-string criterion would.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..hf.detok import IncrementalDetokenizer
from ..hf.stopping import find_stop
from ..hf.stopping import partial_stop_length as held_back

DETOK_CONTEXT = 5  # prompt tokens decoded ahead of the completion, so the first word keeps its leading space


class TextAssembler:
    """``feed(step_tokens)`` returns the text that can be released now; ``finish()`` the rest."""

    def __init__(self, tokenizer: Any, context_ids: Sequence[int], stop: Sequence[str], eos: set[int]) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, context_ids, DETOK_CONTEXT)
        self.stop = tuple(stop)
        self.eos = eos
        self.text = ""  # decoded completion so far (up to a stop string)
        self.sent = 0  # characters of self.text already released
        self.n_tokens = 0  # completion tokens consumed, eos and the token completing a stop included
        self.finish_reason: str | None = None

    def feed(self, tokens: Sequence[int]) -> str:
        """Consume one step's tokens; return the text that can be released now."""
        for t in tokens:
            if self.finish_reason is not None:
                break
            self.n_tokens += 1
            if t in self.eos:
                self._end("stop")
                break
            self.text += self.detok.add([t])
            if self.stop and (i := find_stop(self.text, self.stop, self.sent)) is not None:
                self.text, self.finish_reason = self.text[:i], "stop"
        return self._release()

    def finish(self) -> str:
        """The generation ended (token budget): flush what was held back."""
        if self.finish_reason is None:
            self._end("length")
        return self._release()

    def _end(self, reason: str) -> None:
        self.text += self.detok.flush()
        i = find_stop(self.text, self.stop, self.sent)
        if i is not None:
            self.text = self.text[:i]
        self.finish_reason = reason

    def _release(self) -> str:
        end = len(self.text) if self.finish_reason is not None else len(self.text) - held_back(
            self.text, self.stop, self.sent)
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out
