"""swiftsd.hf.prompt: every prompt form a Hugging Face workflow produces, and clear refusals of the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BatchEncoding

from swiftsd import InvalidArgumentError, SwiftDecoder
from swiftsd.hf.prompt import parse_prompt
from tiny import tiny_model

VOCAB = 97  # the tiny models' vocabulary
IDS = [5, 7, 11, 13]


class WordTokenizer:
    """Maps each word to its length: enough to tell that text went through a tokenizer."""

    def __call__(self, text: str, return_tensors=None):
        return {"input_ids": [len(w) for w in text.split()], "attention_mask": [1] * len(text.split())}


@pytest.mark.parametrize("prompt", [
    IDS,
    tuple(IDS),
    [IDS],  # a batch of one, as tokenizer([text]) returns
    torch.tensor(IDS),
    torch.tensor([IDS]),
    torch.tensor([IDS], dtype=torch.int32),
    np.array([IDS]),
    [np.int64(i) for i in IDS],
    {"input_ids": IDS},
    {"input_ids": torch.tensor([IDS]), "attention_mask": torch.ones(1, 4, dtype=torch.long)},
    BatchEncoding({"input_ids": torch.tensor([IDS]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}),
    BatchEncoding({"input_ids": IDS, "attention_mask": [1, 1, 1, 1]}),
])
def test_accepted_forms_give_the_same_ids(prompt) -> None:
    assert parse_prompt(prompt, None, VOCAB) == IDS


def test_text_goes_through_the_tokenizer() -> None:
    assert parse_prompt("a bb ccc", WordTokenizer(), VOCAB) == [1, 2, 3]
    with pytest.raises(InvalidArgumentError, match="needs a tokenizer"):
        parse_prompt("a bb ccc", None, VOCAB)


@pytest.mark.parametrize("prompt,words", [
    (None, ["no prompt", "input_ids"]),
    ([], ["prompt is empty"]),
    (torch.empty(1, 0, dtype=torch.long), ["prompt is empty"]),
    (torch.zeros(2, 5, dtype=torch.long), ["batch of 2", "once per prompt"]),
    ([[1, 2], [3, 4]], ["batch of 2", "once per prompt"]),
    (torch.tensor([[0.5, 1.0]]), ["LongTensor", "(1, 2)", "torch.float32"]),
    (torch.zeros(1, 2, 3, dtype=torch.long), ["LongTensor", "(1, 2, 3)"]),
    ([1.0, 2.0], ["token ids", "item 0", "float"]),
    ([1, True], ["item 1", "bool"]),
    (["a", "b"], ["token ids", "item 0", "string"]),
    (3.5, ["token ids", "float"]),
    ({"ids": [1, 2]}, ["no 'input_ids'", "['ids']"]),
    ({"input_ids": [1, 2, 3], "attention_mask": [1, 1]}, ["attention_mask has 2", "3 tokens"]),
    ([1, 200, 300, -1], ["3 token id(s)", "[200, 300, -1]", "vocabulary [0, 97)"]),
])
def test_bad_prompts_are_refused_in_one_line(prompt, words) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_prompt(prompt, None, VOCAB)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"
    assert "\n" not in msg
    assert info.value.__cause__ is None  # no chained traceback from deep inside
    assert info.value.__suppress_context__ or info.value.__context__ is None


@pytest.mark.parametrize("mask", [
    torch.tensor([[0, 0, 1, 1]]),  # left padding, as a batched tokenizer call gives
    [1, 1, 1, 0],  # right padding
])
def test_padding_is_refused_with_the_fix(mask) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_prompt({"input_ids": torch.tensor([IDS]), "attention_mask": mask}, None, VOCAB)
    msg = str(info.value)
    assert "padding" in msg and "strip the padding" in msg and "of 4 tokens" in msg


def test_no_message_dumps_a_long_prompt() -> None:
    """A long prompt is described by its shape and dtype; at most five ids are quoted."""
    long = torch.arange(100_000, 100_000 + 3000).float()[None]
    with pytest.raises(InvalidArgumentError) as info:
        parse_prompt(BatchEncoding({"input_ids": long}), None, VOCAB)
    assert "(1, 3000)" in str(info.value) and "100001" not in str(info.value)
    with pytest.raises(InvalidArgumentError) as info:
        parse_prompt(torch.arange(100_000, 103_000)[None], None, VOCAB)
    msg = str(info.value)
    assert "3000 token id(s)" in msg and "100004, ..." in msg and "100005" not in msg and len(msg) < 300
    with pytest.raises(InvalidArgumentError) as info:
        parse_prompt(torch.zeros(4, 3000, dtype=torch.long), None, VOCAB)
    assert len(str(info.value)) < 300


def test_decoder_takes_a_batch_encoding_and_refuses_padding() -> None:
    """generate and stream accept the tokenizer's BatchEncoding and decode exactly what a list gives."""
    dec = SwiftDecoder(tiny_model("llama", seed=0), optimizer=False)
    enc = BatchEncoding({"input_ids": torch.tensor([IDS]), "attention_mask": torch.ones(1, 4, dtype=torch.long)})
    want = dec.generate(IDS, max_new_tokens=6).new_tokens
    assert dec.generate(enc, max_new_tokens=6).new_tokens == want
    assert [t for chunk in dec.stream(enc, max_new_tokens=6) for t in chunk] == want
    padded = BatchEncoding({"input_ids": torch.tensor([[0] + IDS]), "attention_mask": torch.tensor([[0, 1, 1, 1, 1]])})
    with pytest.raises(InvalidArgumentError, match="strip the padding"):
        dec.generate(padded, max_new_tokens=3)
    with pytest.raises(InvalidArgumentError, match="strip the padding"):
        dec.stream(padded, max_new_tokens=3)
