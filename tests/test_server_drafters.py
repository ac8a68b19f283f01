"""`swiftsd serve --drafters / --method`: passed to the server's SwiftDecoder, checked before the model
loads; /metrics counts drafted and accepted tokens per drafter (label ``drafter``)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

import swiftsd.core.decoder as decoder_mod
from swiftsd.cli.main import main
from swiftsd.server.metrics import Exposition, Metrics
from test_cli_drafters import record_decoders
from test_server import _total, parse_metrics
from tiny_server_model import ServerProcess, save_tiny_server_model

pytestmark = pytest.mark.xdist_group("test_server_drafters")  # one server process for the module
DRAFTED, ACCEPTED = "swiftsd_drafter_drafted_tokens_total", "swiftsd_drafter_accepted_tokens_total"
PROMPT = "the cat sat on the mat and the cat sat on the mat and the cat sat on the"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_server_model(tmp_path_factory.mktemp("tiny-server-drafters"), eos=False)


class _Built(Exception):
    """Raised once `serve` has built its decoder: the test stops there, before anything listens."""


@pytest.fixture
def served(monkeypatch) -> list:
    """The decoder `swiftsd serve` builds; building it ends the command (``_Built``)."""
    return record_decoders(monkeypatch, decoder_mod, stop=_Built)


@pytest.mark.parametrize("flags, drafters, tree", [
    ((), {"layerskip", "lookup", "suffix"}, "dynamic"),
    (("--drafters", "suffix,lookup"), {"lookup", "suffix"}, "dynamic"),
    (("--method", "swift-paper"), {"layerskip"}, "paper"),
    (("--method", "swift-paper", "--drafters", "layerskip,lookup"), {"layerskip", "lookup"}, "paper"),
], ids=["default", "lookup-suffix", "paper", "paper-plus-lookup"])
def test_serve_flags_reach_the_decoder(flags, drafters, tree, served, tiny_dir, capsys) -> None:
    with pytest.raises(_Built):
        main(["serve", "--model", str(tiny_dir), *flags])
    dec = served[0]
    assert set(dec.drafters) == drafters and dec.config.tree == tree
    assert dec.config.planner == (tree == "dynamic")
    assert (dec.optimizer is not None) == ("layerskip" in drafters)
    capsys.readouterr()


@pytest.mark.parametrize("argv, words", [
    (["--drafters", "eagle"], "unknown 'eagle'"),
    (["--drafters", "lookup,,lookup"], "a name given twice"),
    (["--method", "paper"], "--method must be one of swiftsd, swift-paper; got 'paper'"),
    (["--drafters", "suffix", "--skip-set-store", "s.json"], "add layerskip to --drafters"),
], ids=["unknown", "twice", "bad-method", "store-without-layerskip"])
def test_bad_values_fail_in_one_line_before_the_model_loads(argv, words: str, capsys) -> None:
    rc = main(["serve", "--model", "/no/such/model", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("swiftsd: error: ") and words in err


def test_exposition_sums_per_drafter_counts() -> None:
    m = Metrics()
    m.add_drafters({"lookup": {}, "suffix": {}})  # what the server registers at start: zeros
    m.add_drafters({"lookup": {"proposed": 7, "accepted": 3}, "layerskip": {"proposed": 4, "accepted": 1}})
    m.add_drafters({"lookup": {"proposed": 2, "accepted": 2}})
    engine = SimpleNamespace(waiting=0, running=False, max_queue=4)
    got = parse_metrics(Exposition(m, engine).render().decode())
    assert got[(DRAFTED, (("drafter", "lookup"),))] == 9 and got[(ACCEPTED, (("drafter", "lookup"),))] == 5
    assert got[(DRAFTED, (("drafter", "layerskip"),))] == 4 and got[(ACCEPTED, (("drafter", "layerskip"),))] == 1
    assert got[(DRAFTED, (("drafter", "suffix"),))] == 0


def test_exposition_counts_the_model_drafts_weights() -> None:
    m = Metrics()
    m.add_precisions({"int4": {"steps": 5, "forwards": 9, "accepted": 7}, "full": {"steps": 1, "accepted": 0}})
    m.add_precisions({"int4": {"steps": 2, "forwards": 3, "accepted": 1}})
    got = parse_metrics(Exposition(m, SimpleNamespace(waiting=0, running=False, max_queue=4)).render().decode())
    assert got[("swiftsd_model_draft_steps_total", (("precision", "int4"),))] == 7
    assert got[("swiftsd_model_draft_accepted_tokens_total", (("precision", "int4"),))] == 8
    assert got[("swiftsd_model_draft_steps_total", (("precision", "full"),))] == 1


def test_metrics_count_each_drafter_of_a_real_server(tiny_dir, tmp_path) -> None:
    server = ServerProcess(tiny_dir, "--drafters", "lookup,suffix", log_dir=tmp_path)
    try:
        before = parse_metrics(httpx.get(server.base + "/metrics", timeout=10).text)
        assert _total(before, DRAFTED, drafter="lookup") == 0 == _total(before, DRAFTED, drafter="suffix")
        seen = []
        for _ in range(3):  # the same prompt again: the suffix index has its earlier output
            r = httpx.post(server.base + "/v1/completions", timeout=120,
                           json={"model": server.model, "prompt": PROMPT, "max_tokens": 40, "temperature": 0})
            assert r.status_code == 200
            seen.append(parse_metrics(httpx.get(server.base + "/metrics", timeout=10).text))
    finally:
        server.stop()
    last = seen[-1]
    drafters = {dict(lab).get("drafter") for (name, lab) in last if name == DRAFTED}
    assert drafters == {"lookup", "suffix"}  # layer-skip is off: no series for it
    for name in ("lookup", "suffix"):
        assert 0 < _total(last, ACCEPTED, drafter=name) <= _total(last, DRAFTED, drafter=name)
    assert _total(seen[0], DRAFTED, drafter="lookup") < _total(last, DRAFTED, drafter="lookup")  # it counts up
