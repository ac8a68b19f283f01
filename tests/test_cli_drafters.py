"""`swiftsd generate --drafters / --method`: passed to SwiftDecoder, checked before the model loads,
and the stats line reports each drafter's accepted / proposed tokens."""

from __future__ import annotations

import json

import pytest

import swiftsd
from swiftsd.cli.main import main
from swiftsd.cli.compare import plain_generate
from swiftsd.config import SamplingParams
from swiftsd.stats import GenerationStats
from tiny_cli import save_tiny_model_dir

PROMPT = "the cat sat on the mat, the cat sat on the mat, the cat sat on the"  # repeats: lookup fires


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-cli-drafters")))


@pytest.fixture(scope="module")
def plain(model_dir) -> list[int]:
    model, tok = swiftsd.load(model_dir)
    ids = tok(PROMPT)["input_ids"]
    return plain_generate(model, ids, 30, SamplingParams(), None, None)[0, len(ids):].tolist()


def record_decoders(monkeypatch, module, stop: type[Exception] | None = None) -> list:
    """Swap ``module.SwiftDecoder`` for a subclass that keeps each decoder built (and then raises
    ``stop``, if given), so a test can read the configuration a command gave it."""
    made: list = []

    class Spy(module.SwiftDecoder):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            made.append(self)
            if stop is not None:
                raise stop

    monkeypatch.setattr(module, "SwiftDecoder", Spy)
    return made


@pytest.fixture
def built(monkeypatch) -> list:
    """The decoders `generate` builds (``cli/common.py: build_decoder`` takes the class from core.decoder)."""
    import swiftsd.core.decoder as decoder_mod

    return record_decoders(monkeypatch, decoder_mod)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["generate", "--raw", *argv])  # the prompt as is: `plain` decodes it untemplated
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("drafters", ["lookup", "layerskip", "suffix,lookup", "layerskip,lookup,suffix"])
def test_drafters_reach_the_decoder_and_stay_lossless(drafters: str, capsys, model_dir, plain, built) -> None:
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "30", "--json",
                     "--drafters", drafters)
    assert rc == 0
    d = json.loads(out)
    want = drafters.split(",")
    assert set(built[0].drafters) == set(want) and sorted(d["drafters"]) == sorted(want)
    assert d["tokens"] == plain
    assert set(d["stats"]["per_drafter"]) <= set(want)  # nothing else drafted
    if drafters == "lookup":
        assert d["stats"]["per_drafter"]["lookup"]["proposed"] > 0


def test_swift_paper_method_builds_the_papers_decoder(capsys, model_dir, plain, built) -> None:
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "30", "--json",
                     "--method", "swift-paper")
    assert rc == 0
    d = json.loads(out)
    cfg = built[0].config
    assert d["method"] == "swift-paper" and d["drafters"] == ["layerskip"]
    assert cfg.tree == "paper" and not cfg.planner and cfg.optimizer.objective == "matchness"
    assert cfg.tree_widths_greedy == (3, 5, 8, 10)
    assert d["tokens"] == plain
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "30", "--json",
                     "--method", "swiftsd", "--drafters", "lookup")
    assert rc == 0 and built[1].config.tree == "dynamic" and built[1].config.planner


def test_stats_line_shows_each_drafters_counts(capsys, model_dir) -> None:
    rc, _, err = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "30",
                     "--drafters", "lookup")
    assert rc == 0
    line = next(ln for ln in err.splitlines() if ln.startswith("[swiftsd]") and "tok/s" in ln)
    assert "accepted/proposed by drafter: lookup " in line
    assert "layer-skip drafting is off (not in --drafters)" in err
    one = GenerationStats(new_tokens=5, steps=2, wall_time=1.0, draft_lengths=[3, 1], accepted_lengths=[2, 0])
    one.per_drafter = {"suffix": {"proposed": 4, "accepted": 2}}
    assert "(tree nodes accepted/proposed by drafter: suffix 2/4)" in one.summary()  # one drafter is shown too


@pytest.mark.parametrize("argv, words", [
    (["--drafters", "lookup,medusa"], "unknown 'medusa'"),
    (["--drafters", ","], "nothing given"),
    (["--drafters", "lookup,lookup"], "a name given twice"),
    (["--method", "fast"], "--method must be one of swiftsd, swift-paper; got 'fast'"),
    (["--drafters", "lookup", "--skip-set", '{"attn": [1]}'], "add layerskip to --drafters"),
], ids=["unknown", "empty", "twice", "bad-method", "skip-set-without-layerskip"])
def test_bad_values_fail_in_one_line_before_the_model_loads(argv: list[str], words: str, capsys) -> None:
    rc, out, err = cli(capsys, "--model", "/no/such/model", "--prompt", "hi", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("swiftsd: error: ") and words in err
    assert "/no/such/model" not in err  # refused before any load was tried


@pytest.mark.parametrize("precision", ["int8", "int4", "full"])
def test_draft_precision_reaches_the_decoder_and_stays_lossless(precision: str, capsys, model_dir, plain,
                                                                built) -> None:
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "30", "--json",
                     "--draft-precision", precision, "--drafters", "layerskip")
    assert rc == 0
    assert built[0].config.draft_precision == precision
    assert json.loads(out)["tokens"] == plain


def test_draft_precision_is_checked_before_the_model_loads(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", "/no/such/model", "--prompt", "hi", "--draft-precision", "int3"])
    assert info.value.code == 2 and "invalid choice: 'int3'" in capsys.readouterr().err


def test_bench_and_tune_take_the_draft_precision() -> None:
    from swiftsd.cli.bench_run import _swift_options
    from swiftsd.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--methods", "swiftsd", "--draft-precision", "int4"])
    assert _swift_options(args) == {"draft_precision": "int4"}
    args = build_parser().parse_args(["tune", "--out", "s.json", "--draft-precision", "int8"])
    assert args.draft_precision == "int8"


def test_quant_group_reaches_every_quantized_method_and_is_checked() -> None:
    from swiftsd.bench.methods import build_methods
    from swiftsd.cli.common import decoder_options
    from swiftsd.cli.main import build_parser
    from tiny import tiny_model

    args = build_parser().parse_args(["generate", "--prompt", "hi", "--quant-group", "128"])
    assert decoder_options(args)["quant_group"] == 128
    args = build_parser().parse_args(["tune", "--out", "s.json", "--quant-group", "64"])
    assert args.quant_group == 64
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--quant-group", "48"])
    model = tiny_model("llama", seed=0)
    methods = build_methods(["swiftsd", "quant-draft", "swift-paper", "hf-assisted-int4"], model, None,
                            quant_group=128)
    by = {m.name: m for m in methods}
    assert by["swiftsd"].options["quant_group"] == by["quant-draft"].options["quant_group"] == 128
    assert "quant_group" not in by["swift-paper"].options  # the paper's draft reads the model's own weights
    assert by["hf-assisted-int4"].group == 128
