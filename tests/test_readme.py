"""The README's Python example runs as written, on the packaged SmolLM2 (so it cannot rot).

Only the token budgets are cut (every ``max_new_tokens=N`` becomes 8) to keep the test short; the
test checks that every generate/stream call in the block has one, so nothing runs with its default.
"""

from __future__ import annotations

import ast
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


def _generate_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
        "generate", "stream")


def _printed(stmt: ast.stmt) -> set[str]:
    """Names a statement passes (anywhere inside) to print()."""
    return {n.id for call in ast.walk(stmt) if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "print"
            for n in ast.walk(call) if isinstance(n, ast.Name)}


def test_readme_block_prints_every_result() -> None:
    """Each generate call's result is printed before its name is reused, and the stream's loop prints."""
    body = ast.parse(python_block()).body
    pending: dict[str, int] = {}  # result name -> line of the call that made it
    unprinted: list[str] = []
    for stmt in body:
        for name in _printed(stmt):
            pending.pop(name, None)
        if isinstance(stmt, ast.Assign) and _generate_call(stmt.value):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    if target.id in pending:
                        unprinted.append(f"{target.id} (line {pending[target.id]})")
                    pending[target.id] = stmt.lineno
        if isinstance(stmt, ast.For) and _generate_call(stmt.iter):
            assert any(_printed(s) for s in stmt.body), "the streaming loop prints nothing"
    unprinted += [f"{n} (line {line})" for n, line in pending.items()]
    assert unprinted == [], f"results the README computes but never prints: {unprinted}"


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
    summaries = [ln for ln in lines if " tokens in " in ln and "tok/s" in ln and "acceptance" in ln]
    assert len(summaries) == python_block().count(".stats.summary()") == 3, out
    assert all(f"{TOKENS} tokens in" in ln for ln in summaries), out
    gen_text = tok.decode(ns["gen"][0, ns["n_prompt"]:], skip_special_tokens=True)
    last_text = tok.decode(ns["out"].new_tokens, skip_special_tokens=True)
    assert gen_text.strip() and gen_text in out and last_text in out  # the drop-in's answer and the last one
