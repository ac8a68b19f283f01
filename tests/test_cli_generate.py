"""`swiftsd generate` end to end on a tiny model directory, through the real loader."""

from __future__ import annotations

import json

import pytest
import torch

import swiftsd
from swiftsd import SkipSet, SwiftDecoder
from swiftsd.cli.main import main
from swiftsd.cli.compare import plain_generate
from swiftsd.cli.generate import incremental_text
from swiftsd.config import SamplingParams
from tiny_cli import byte_tokenizer, save_tiny_model_dir


PROMPT = "Once upon a time, naïve café 日本"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-cli")))


@pytest.fixture(scope="module")
def loaded(model_dir):
    return swiftsd.load(model_dir)  # the very model and tokenizer the CLI loads


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _plain_new(model, ids: list[int], n: int) -> list[int]:
    return plain_generate(model, ids, n, SamplingParams(), None, None)[0, len(ids):].tolist()


def test_greedy_prints_text_and_stats(capsys, model_dir, loaded) -> None:
    model, tok = loaded
    rc, out, err = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--raw", "--max-new-tokens", "30")
    assert rc == 0
    ids = tok(PROMPT)["input_ids"]
    assert out == tok.decode(_plain_new(model, ids, 30), skip_special_tokens=True) + "\n"
    assert "[swiftsd] 30 tokens in" in err and "tokens/step" in err and "acceptance" in err
    # the optimiser ran (no fixed set given): its state is shown
    assert "[swiftsd] optimizer " in err and "best matchness" in err and "speed-up " in err


def test_json_compare_with_fixed_skip_set(capsys, model_dir, loaded) -> None:
    model, tok = loaded
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--raw", "--max-new-tokens", "40",
                     "--skip-set", '{"attn": [2], "mlp": [3]}', "--compare", "--json")
    assert rc == 0
    d = json.loads(out)
    ids = tok(PROMPT)["input_ids"]
    assert d["prompt_tokens"] == len(ids)
    assert d["tokens"] == _plain_new(model, ids, 40)
    assert d["text"] == tok.decode(d["tokens"], skip_special_tokens=True)
    assert d["stats"]["new_tokens"] == 40
    assert d["stats"]["skip_set"] == {"attn": [2], "mlp": [3]}  # a hand-given set is used as is
    # (whether a draft pays on a step is the planner's call from the measured, timing-dependent cost model)
    c = d["compare"]
    assert c["identical"] is True and c["first_difference"] is None
    assert c["plain_tokens"] == c["swift_tokens"] == 40
    assert c["ratio"] == pytest.approx(c["swift_tok_s"] / c["plain_tok_s"])


def test_compare_prints_both_speeds(capsys, model_dir) -> None:
    rc, _, err = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "20", "--compare",
                     "--skip-set", '{"attn": [1, 3]}')
    assert rc == 0
    line = next(ln for ln in err.splitlines() if ln.startswith("[compare]"))
    assert "plain" in line and "swiftsd" in line and "ratio" in line and "outputs identical: yes" in line


def test_stream_prints_the_same_text(capsys, model_dir) -> None:
    args = ("--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "60", "--skip-set", '{"mlp": [2]}')
    rc1, whole, _ = cli(capsys, *args)
    rc2, streamed, _ = cli(capsys, *args, "--stream")
    assert rc1 == rc2 == 0
    assert streamed == whole


@pytest.mark.parametrize("flag", [(), ("--chat",)])
def test_a_chat_model_gets_its_template_by_default(capsys, model_dir, loaded, flag) -> None:
    """As `transformers chat`, mlx-lm and llama.cpp's CLI do: a bare prompt gives a chat model junk."""
    model, tok = loaded
    rc, out, err = cli(capsys, "--model", model_dir, "--prompt", "hello", *flag, "--max-new-tokens", "12", "--json")
    assert rc == 0
    d = json.loads(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert text.endswith("<|assistant|>")
    assert d["chat"] is True and d["prompt_tokens"] == len(ids)
    assert d["tokens"] == _plain_new(model, ids, 12)
    assert "prompt in the chat template (--raw: as is)" in err


def test_raw_sends_the_prompt_as_is_and_a_model_without_a_template_gets_it_raw(capsys, model_dir, tmp_path) -> None:
    rc, out, err = cli(capsys, "--model", model_dir, "--prompt", "hello", "--raw", "--max-new-tokens", "4", "--json")
    d = json.loads(out)
    assert rc == 0 and d["chat"] is False and d["prompt_tokens"] == len("hello") and "chat template" not in err
    with pytest.raises(SystemExit) as info:
        cli(capsys, "--model", model_dir, "--prompt", "hello", "--raw", "--chat")
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    base = str(save_tiny_model_dir(tmp_path / "base", chat_template=False))
    rc, out, _ = cli(capsys, "--model", base, "--prompt", "hello", "--max-new-tokens", "4", "--json")
    assert rc == 0 and json.loads(out)["chat"] is False and json.loads(out)["prompt_tokens"] == len("hello")


def test_sampling_is_seeded_and_compare_says_not_comparable(capsys, model_dir) -> None:
    args = ("--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "25", "--temperature", "0.8",
            "--top-p", "0.9", "--top-k", "40", "--json")
    runs = [json.loads(cli(capsys, *args, "--seed", s)[1])["tokens"] for s in ("3", "3", "4")]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    rc, out, _ = cli(capsys, *args, "--seed", "3", "--compare")
    d = json.loads(out)
    assert rc == 0 and d["tokens"] == runs[0]  # the warm-up does not shift the seeded draw
    assert d["compare"]["identical"] is None and d["compare"]["plain_tokens"] == 25


def test_skip_set_store_starts_from_the_stored_set(capsys, model_dir, loaded, tmp_path) -> None:
    from swiftsd.persist import store

    model, tok = loaded
    path = tmp_path / "store.json"
    store.save_skip_set(path, store.model_key(model), "poems", SkipSet(attn=[2], mlp=[4]), matchness=0.5)
    rc, out, _ = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--raw", "--max-new-tokens", "20", "--json",
                     "--skip-set-store", str(path), "--task", "poems")
    assert rc == 0
    assert json.loads(out)["tokens"] == _plain_new(model, tok(PROMPT)["input_ids"], 20)
    rc, _, err = cli(capsys, "--model", model_dir, "--prompt", "hi", "--skip-set-store", str(path), "--task", "code")
    assert rc == 2 and "no skip set" in err and "'code'" in err


def test_plain_generate_ignores_the_models_generation_defaults() -> None:
    """--compare must time plain greedy decoding, not a repetition-penalised variant of it."""
    from tiny import tiny_model

    model = tiny_model("llama", seed=4)
    ids = list(range(5, 25))
    x = torch.tensor([ids])
    with torch.no_grad():
        greedy = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=40)
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 2
    with torch.no_grad():
        penalised = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=40)
    assert not torch.equal(greedy, penalised)  # the defaults do change plain output
    plain = plain_generate(model, ids, 40, SamplingParams(), None, None)
    assert torch.equal(plain, greedy)
    swift = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2])).generate(ids, max_new_tokens=40)
    assert torch.equal(swift.sequences, greedy)


@pytest.mark.parametrize("chunking", [1, 2, 3, 5])
def test_incremental_text_never_breaks_a_character(chunking: int) -> None:
    tok = byte_tokenizer()
    text = "héllo 日本 😀 ok ünïcödé"
    ids = tok(text)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    chunks = [ids[i : i + chunking] for i in range(0, len(ids), chunking)]
    pieces = list(incremental_text(tok, chunks))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_incremental_text_flushes_an_incomplete_tail() -> None:
    tok = byte_tokenizer()
    ids = tok("ab日")["input_ids"][:-1]  # the last character's final byte never arrives
    pieces = list(incremental_text(tok, [[i] for i in ids]))
    assert "".join(pieces) == tok.decode(ids)
    assert pieces[0] == "a"


def test_bf16_on_a_cpu_without_native_bf16_matmul_warns_once_in_one_line(capsys, monkeypatch, model_dir) -> None:
    """Such a CPU runs bf16 prefill and tree verification at about one forward per token: the user hears it."""
    from swiftsd.loading import hardware

    monkeypatch.setattr(hardware, "native_half_matmul", lambda dtype: False)
    rc, out, err = cli(capsys, "--model", model_dir, "--prompt", "hi", "--max-new-tokens", "3", "--dtype", "bfloat16")
    assert rc == 0 and out
    lines = [line for line in err.splitlines() if "native bfloat16" in line]
    assert lines == [lines[0]] and lines[0].startswith("swiftsd: warning: this CPU has no native bfloat16 matrix")
    assert "SlowDtypeWarning" not in err  # our one line, not Python's file:line dump
    monkeypatch.setattr(hardware, "native_half_matmul", lambda dtype: True)
    rc, out, err = cli(capsys, "--model", model_dir, "--prompt", "hi", "--max-new-tokens", "3", "--dtype", "bfloat16")
    assert rc == 0 and "warning" not in err


def test_slow_dtype_note_only_for_half_precision_on_a_cpu_that_lacks_it(monkeypatch) -> None:
    from swiftsd.loading import hardware

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native, want in ((False, True), (True, False), (None, False)):
        monkeypatch.setattr(hardware, "native_half_matmul", lambda dtype, native=native: native)
        assert (hardware.slow_dtype_note(torch.bfloat16, cpu) is not None) is want
        assert (hardware.slow_dtype_note(torch.float16, cpu) is not None) is want
        assert hardware.slow_dtype_note(torch.float32, cpu) is None
        assert hardware.slow_dtype_note(torch.bfloat16, cuda) is None
    assert hardware.native_half_matmul(torch.float32) is None
    with pytest.warns(swiftsd.SlowDtypeWarning, match="no native float16 matrix multiply"):
        monkeypatch.setattr(hardware, "native_half_matmul", lambda dtype: False)
        from swiftsd.loading import _finish
        from tiny import tiny_model
        _finish(tiny_model("llama", seed=0).to(torch.float16), None, cpu)


def test_a_first_cost_measurement_is_not_drawn_inside_the_token_bar(capsys, model_dir, monkeypatch, tmp_path) -> None:
    """On a fresh machine the cost model is measured before the token bar opens: two lines one after the
    other, never the status line nested under the bar (tqdm's cursor-up codes and blank lines)."""
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SWIFTSD_PROGRESS", "1")
    rc, _, err = cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "12")
    assert rc == 0 and list((tmp_path / "cache" / "costs").glob("*.json"))  # measured in this run
    measuring = err.index("measuring this model's step costs")
    token_bar = err.index("tok/s") if "tok/s" in err else err.index("tok]")
    assert measuring < token_bar
    assert "\x1b[A" not in err[measuring:]  # no bar was drawn one row below another


def test_compare_warm_up_teaches_the_timed_run_nothing(capsys, model_dir, monkeypatch, tmp_path) -> None:
    """The timed swiftsd run of --compare drafts exactly as the same run without --compare: the warm-up on
    the same prompt leaves the suffix index (and every other learned part) as it found it."""
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path))  # one cost model, measured once, for both runs
    args = ("--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "24", "--drafters", "lookup,suffix",
            "--json")
    alone = json.loads(cli(capsys, *args)[1])["stats"]
    compared = json.loads(cli(capsys, *args, "--compare")[1])["stats"]
    for key in ("steps", "mean_accepted_tokens", "accepted_tokens", "draft_tokens", "per_drafter"):
        assert compared[key] == alone[key], key
    assert alone["per_drafter"].get("suffix", {}).get("accepted", 0) == 0  # a fresh index knows nothing yet
