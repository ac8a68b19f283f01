"""Stop strings, stopping criteria, ``min_new_tokens`` and a ``GenerationConfig`` in swiftsd's own API and
CLI end the output where ``model.generate`` ends it; stopping.py's rules on their own."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig, MaxLengthCriteria, StopStringCriteria

from swiftsd import InvalidArgumentError
from swiftsd.cli.main import main
from swiftsd.hf.stopping import StopCheck, find_stop, parse_stop_strings, partial_stop_length
from test_hf_generate import MAX_NEW, PROMPT_LEN, _decoder, _plain, _prompt_and_stop
from tiny import tiny_model
from tiny_cli import byte_tokenizer, save_tiny_model_dir


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(chat_template=False)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("qwen2", seed=1, vocab_size=len(tok))


# ---------------------------------------------------------------------------- stopping.py
def test_stop_check_keeps_up_to_the_token_generate_stops_on(tok) -> None:
    ids = tok("say hello world, and more")["input_ids"]  # byte-level: one token per byte
    crit = StopStringCriteria(tok, ["lo w"])
    check = StopCheck([crit])
    p = 4
    keep = check(ids, len(ids) - p)  # one step holding every token after a 4-token "prompt"
    first = next(j for j in range(1, len(ids) - p + 1) if crit(torch.tensor([ids[: p + j]]), None).any())
    assert keep == first and tok.decode(ids[: p + keep]).endswith("lo w")
    assert check(ids[: p + keep - 1], keep - 1) is None  # one token earlier: not yet
    # a stop string begun in the prompt and completed by a new token ends it too, as in generate
    cut = len(tok("say hell")["input_ids"])  # "l" of "lo w" is the last prompt token
    assert StopCheck([crit])(ids[: cut + 3], 3) == 3
    assert StopCheck([MaxLengthCriteria(10)])(list(range(12)), 5) == 3  # length 10 reached on the 3rd new token
    assert not StopCheck([]) and StopCheck([])(ids, 3) is None


def test_parse_stop_strings() -> None:
    assert parse_stop_strings(None) == () and parse_stop_strings("ab") == ("ab",)
    assert parse_stop_strings(["a", "b", "a"]) == ("a", "b")
    for bad, msg in (("", "non-empty"), ([""], "non-empty"), (5, "got int"), (["a", 3], "holding a int"),
                     (["x"] * 17, "at most 16")):
        with pytest.raises(InvalidArgumentError, match=msg):
            parse_stop_strings(bad)  # type: ignore[arg-type]


def test_text_rules_for_streaming() -> None:
    assert find_stop("one two three", ("three", "two")) == 4
    assert find_stop("one two", ("two",), start=5) is None
    assert partial_stop_length("the end is ne", ("near",)) == 2  # "ne" may become "near": hold it back
    assert partial_stop_length("the end is ne", ("near",), start=12) == 0  # only "e" is unsent: it begins no stop
    assert partial_stop_length("abc", ("xyz",)) == 0


# ---------------------------------------------------------------------------- swiftsd's own API
def test_stop_strings_in_dec_generate_and_stream(model, tok) -> None:
    ids, free, stop = _prompt_and_stop(model, tok, 0)
    dec = _decoder(model, tok)
    want = _plain(model, ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, stop_strings=[stop],
                  tokenizer=tok)
    res = dec.generate(ids, max_new_tokens=MAX_NEW, stop_strings=stop)
    assert torch.equal(res.sequences, want) and want.shape[1] < free.shape[1]
    assert res.stats.new_tokens == want.shape[1] - PROMPT_LEN
    stream = dec.stream(ids, max_new_tokens=MAX_NEW, stop_strings=[stop])
    assert [t for chunk in stream for t in chunk] == res.new_tokens and stream.result is not None


def test_min_new_tokens_and_generation_config(model, tok) -> None:
    ids, free, stop = _prompt_and_stop(model, tok, 40)
    gen = free[0, PROMPT_LEN:].tolist()
    dec = _decoder(model, tok)
    want = _plain(model, ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[gen[1], gen[3]],
                  min_new_tokens=10, pad_token_id=0)
    got = dec.generate(ids, max_new_tokens=MAX_NEW, eos_token_id=[gen[1], gen[3]], min_new_tokens=10)
    assert torch.equal(got.sequences, want) and want.shape[1] - PROMPT_LEN > 10
    gc = GenerationConfig(max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=6,
                          eos_token_id=[gen[0]], pad_token_id=0, stop_strings=[stop])
    want = _plain(model, ids, generation_config=gc, tokenizer=tok)
    assert torch.equal(dec.generate(ids, generation_config=gc).sequences, want)
    # an argument set in the call wins over the config; sampling with top_k=1 is greedy, exactly
    short = dec.generate(ids, generation_config=GenerationConfig(max_new_tokens=30), max_new_tokens=7)
    assert short.stats.new_tokens == 7
    one = dec.generate(ids, generation_config=GenerationConfig(do_sample=True, top_k=1, repetition_penalty=1.2,
                                                               max_new_tokens=20), seed=3)
    assert torch.equal(one.sequences, _plain(model, ids, max_new_tokens=20, do_sample=False, repetition_penalty=1.2,
                                             pad_token_id=0))


@pytest.mark.parametrize("kw,match", [
    (dict(generation_config=GenerationConfig(num_beams=2)), "num_beams"),
    (dict(generation_config=GenerationConfig(guidance_scale=2.0)), "guidance_scale"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(stop_strings=[""]), "non-empty"),
])
def test_dec_generate_refusals(model, kw: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        _decoder(model).generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, **kw)


def test_stop_strings_need_a_tokenizer(model) -> None:
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        _decoder(model).generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, stop_strings=["ab"])


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-stop")))


def test_cli_stop_and_min_new_tokens(capsys, model_dir) -> None:
    args = ["generate", "--model", model_dir, "--prompt", "Once upon a time", "--max-new-tokens", "40",
            "--skip-set", '{"attn": [2]}', "--json"]
    assert main(args) == 0
    free = json.loads(capsys.readouterr().out)
    stop = next(free["text"][i : i + 2] for i in range(12, len(free["text"]) - 2)
                if "\ufffd" not in free["text"][i : i + 2])
    assert main(args + ["--stop", stop, "--stop", "never\x01", "--min-new-tokens", "3", "--compare"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stop"] == [stop, "never\x01"] and out["min_new_tokens"] == 3
    assert out["text"].endswith(stop) and free["text"].startswith(out["text"]) and len(out["tokens"]) < 40
    assert out["compare"]["identical"] is True  # plain generate with the same stop strings ends on the same token
    assert main(["generate", "--model", model_dir, "--prompt", "x", "--min-new-tokens", "-1"]) != 0
    assert "--min-new-tokens must be an integer >= 0" in capsys.readouterr().err
