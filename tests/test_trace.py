"""Per-step optimiser traces: what is recorded, the JSON file, the plot, the CLI."""

from __future__ import annotations

import json

import pytest

from swiftsd import InvalidArgumentError, OptimizerConfig, SwiftDecoder
from swiftsd.cli.main import main
from swiftsd.cli.trace import plot_trace, read_trace, write_trace
from tiny import cheap_tree_costs, tiny_model


@pytest.fixture(scope="module")
def runs():
    model = tiny_model("llama", seed=4)
    dec = SwiftDecoder(model, optimizer=OptimizerConfig.reference(context_window=6))
    dec.costs = cheap_tree_costs()  # a device where a skip set can pay: the default decoder searches
    return [dec.generate([3 + i, 4, 5], max_new_tokens=30).stats for i in range(3)]


def test_trace_records_every_step(runs):
    for i, st in enumerate(runs):
        assert len(st.trace) == st.steps
        assert all(r["request"] == i + 1 for r in st.trace)
        # the optimiser's trace is about the layer-skip draft: its forwards and its accepted nodes
        assert [r["drafted"] for r in st.trace] == st.draft_forwards
        assert [r["accepted"] for r in st.trace] == st.layerskip_accepted
        assert all(a <= t for a, t in zip(st.layerskip_accepted, st.accepted_lengths))
    scored = [r for st in runs for r in st.trace if r["matchness"] is not None]
    assert scored and all(0.0 <= r["matchness"] <= 1.0 and r["eval_source"] for r in scored)
    steps = [r["step"] for st in runs for r in st.trace]
    assert steps == list(range(1, len(steps) + 1))  # global step counter across requests


def test_write_read_and_plot(tmp_path, runs):
    path = tmp_path / "t.json"
    write_trace(path, runs, meta={"model": "tiny"})
    doc = read_trace(path)
    assert doc["meta"] == {"model": "tiny"} and len(doc["requests"]) == 3
    assert len(doc["steps"]) == sum(st.steps for st in runs)
    assert doc["requests"][2]["optimizer"]["iterations"] == runs[2].optimizer["iterations"]
    png = plot_trace(doc, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_trace_cli(tmp_path, runs, capsys):
    path = tmp_path / "t.json"
    write_trace(path, runs)
    assert main(["plot-trace", str(path), "--out", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    assert main(["plot-trace", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    assert main(["plot-trace", str(tmp_path / "bad.json")]) == 2
    assert "not a swiftsd trace" in capsys.readouterr().err


def test_empty_trace_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no steps"):
        plot_trace({"steps": []}, tmp_path / "x.png")
