"""Hugging Face logits processors applied per tree node, and the ones that cannot be.

A processor sees what plain decoding would show it: each verified node's own prefix and the
full model's logits there. Row-independent processors get all of a tree's rows at once.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import InvalidArgumentError

# Processors that treat every row on its own and keep no per-batch state: called on all k rows at once.
BATCHED = frozenset({
    "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper", "TypicalLogitsWarper",
    "EpsilonLogitsWarper", "EtaLogitsWarper", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "NoRepeatNGramLogitsProcessor", "SequenceBiasLogitsProcessor", "NoBadWordsLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor", "InfNanRemoveLogitsProcessor",
    "ExponentialDecayLengthPenalty", "LogitNormalization", "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
})
# Processors whose result on a tree node cannot equal plain decoding's, and why.
REFUSED = {
    "ClassifierFreeGuidanceLogitsProcessor": "it needs the unconditional half of a doubled batch",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": "it runs its own model with its own cache, one token at a time",
    "SynthIDTextWatermarkLogitsProcessor": "it keeps watermarking state from one call to the next",
    "WhisperTimeStampLogitsProcessor": "it is for Whisper's encoder-decoder timestamps",
    "WhisperNoSpeechDetection": "it is for Whisper and keeps state between calls",
    "AlternatingCodebooksLogitsProcessor": "it is for Bark's codebooks",
    "BarkEosPrioritizerLogitsProcessor": "it is for Bark",
    "DiaClassifierFreeGuidanceLogitsProcessor": "it needs a doubled batch",
    "DiaEOSChannelFilterLogitsProcessor": "it is for Dia's audio channels",
    "DiaEOSDelayPatternLogitsProcessor": "it keeps per-batch state between calls",
}
def check_processors(processors: Sequence[Any]) -> None:
    """Refuse, by name, any processor that cannot be applied exactly per tree node."""
    for p in processors:
        name = type(p).__name__
        if name in REFUSED:
            raise InvalidArgumentError(f"swiftsd cannot apply {name} exactly ({REFUSED[name]}); "
                                       "generate without it, or without custom_generate")
        if not callable(p):
            raise InvalidArgumentError(f"a logits processor must be callable (input_ids, scores) -> scores, got {name}")


class TreeProcessors:
    """HF logits processors applied to the rows the decoder hands over (one row per tree node).

    Rows arrive as ``input_ids [k, L]`` (each node's prefix, prompt included) and
    ``scores [k, V]`` (the full model's logits there). Processors in
    :data:`BATCHED` see all k rows at once; any other processor sees one row at a
    time, as in a batch of one, so one written for ``generate`` needs no change.
    With ``record`` it keeps each row's raw and processed scores, keyed by the
    row's tokens after ``base``, for ``output_scores`` / ``output_logits``.
    """

    def __init__(self, processors: Sequence[Any], record: bool = False) -> None:
        check_processors(processors)
        self.processors = list(processors)
        self.record = record
        self.base = 0  # committed length when the current step began
        self._rows: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.scores: list[torch.Tensor] = []  # per committed token: processed scores [1, V]
        self.logits: list[torch.Tensor] = []  # per committed token: raw logits [1, V]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        out = scores.to(torch.float32, copy=True)  # as generate does: processors may write in place
        for p in self.processors:
            if type(p).__name__ in BATCHED:
                out = p(input_ids, out)
            else:
                out = torch.cat([p(input_ids[i : i + 1], out[i : i + 1]) for i in range(out.shape[0])])
        if self.record:
            for i, row in enumerate(input_ids.tolist()):
                self._rows[tuple(row[self.base :])] = (raw[i : i + 1].clone(), out[i : i + 1].clone())
        return out

    def commit(self, step: Sequence[int]) -> None:
        """Keep the scores of the step's committed tokens (found by their prefixes); start the next step."""
        if self.record:
            for i in range(len(step)):
                raw, processed = self._rows[tuple(step[:i])]
                self.logits.append(raw)
                self.scores.append(processed)
            self._rows.clear()
        self.base += len(step)
