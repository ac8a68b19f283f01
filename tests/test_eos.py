"""The one EOS resolver: an override wins, else the model's generation config; bad values are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from swiftsd import InvalidArgumentError
from swiftsd.hf.eos import resolve_eos


class _Model:
    def __init__(self, eos):
        self.generation_config = GenerationConfig(eos_token_id=eos)


@pytest.mark.parametrize("eos, want", [(None, set()), (7, {7}), ([7, 9, 7], {7, 9}), ([], set())])
def test_from_the_generation_config(eos, want):
    assert resolve_eos(_Model(eos)) == want


def test_override_wins_and_accepts_numpy_and_tensors():
    m = _Model(7)
    assert resolve_eos(m, 3) == {3}
    assert resolve_eos(m, [np.int64(4), 5]) == {4, 5}
    assert resolve_eos(m, torch.tensor([1, 2])) == {1, 2} and resolve_eos(m, torch.tensor(6)) == {6}
    assert resolve_eos(object()) == set()  # no generation config at all


@pytest.mark.parametrize("bad", ["5", True, [True], [-1], [1.5], 2.0, {"id": 1}])
def test_bad_values_are_one_clear_error(bad):
    with pytest.raises(InvalidArgumentError, match="eos_token_id must be a token id"):
        resolve_eos(_Model(None), bad)
