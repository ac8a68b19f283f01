"""The README's Python example runs as written, on the packaged SmolLM2 (so it cannot rot).

Only the token budgets are cut (every ``max_new_tokens=N`` becomes 8) to keep the test short; the
test checks that every generate/stream call in the block has one, so nothing runs with its default.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import swiftsd
import swiftsd.loading as loading
from swiftsd import GenerationResult

README = Path(__file__).resolve().parent.parent / "README.md"
TOKENS = 8


def python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) == 1, f"README.md should hold exactly one ```python block, found {len(blocks)}"
    return blocks[0]


def test_readme_block_calls_are_all_budgeted() -> None:
    code = python_block()
    calls = len(re.findall(r"\b(?:dec|model)\.(?:generate|stream)\(", code))  # model.generate: the drop-in
    budgets = len(re.findall(r"\bmax_new_tokens=\d+", code))
    assert calls >= 3 and budgets == calls, "give every generate/stream call in the README a max_new_tokens"


@pytest.mark.real_model
def test_readme_python_block_runs(capsys, monkeypatch, smollm2) -> None:
    model, tok = smollm2

    def load(name_or_path="smollm2-135m", dtype=None, device=None):
        """The session's SmolLM2 (loaded once; loading itself is tested in test_loading), if the call asks for it."""
        assert loading.resolve(name_or_path).identity == "smollm2-135m"
        assert loading.parse_device(device) == model.device and loading.parse_dtype(dtype, device) == model.dtype
        return model, tok

    monkeypatch.setattr(swiftsd, "load", load)
    code = re.sub(r"\bmax_new_tokens=\d+", f"max_new_tokens={TOKENS}", python_block())
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the README's own example
    out = capsys.readouterr().out
    assert isinstance(ns["dec"], swiftsd.SwiftDecoder)
    assert isinstance(ns["out"], GenerationResult) and ns["out"].stats.new_tokens == TOKENS
    assert ns["out"].stats.skip_set == {"attn": [10, 12], "mlp": [11]}
    lines = out.splitlines()
    assert len(lines) >= 3 and lines[0].strip(), out  # the greedy answer, the stats, the streamed text
    assert any("tokens in" in ln and "tok/s" in ln for ln in lines), out
