"""``model.generate(..., custom_generate=dec.custom_generate)`` is ``model.generate``, decoded by swiftsd.

Greedy: token-for-token equal to plain ``generate`` in fp32 on every family (tiny
random models with a byte-level tokenizer), with several EOS ids,
``min_new_tokens``, ``stop_strings``, ``max_time``, repetition penalty, no-repeat
n-grams, bad words, suppressed tokens and a prefix constraint; and on the real smollm2-135m with its chat
template and a ``TextIteratorStreamer``. Sampling: the joint law of the first
three tokens matches the exact law of plain ``generate``'s processors
(chi-square, as in test_sampling.py). Streamers, ``output_scores`` /
``output_logits`` and every refusal are checked against what HF does.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from contextlib import redirect_stdout
from typing import Any

import pytest
import torch
from transformers import LogitsProcessorList, TextIteratorStreamer, TextStreamer
from transformers.generation.streamers import BaseStreamer

from swiftsd import InvalidArgumentError, SkipSet, SwiftDecoder
from test_sampling import P_MIN, chi_square_pvalue
from tiny import ARCHS, tiny_model
from tiny_cli import byte_tokenizer

PROMPT_LEN = 12
MAX_NEW = 32


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(chat_template=False)


@pytest.fixture(scope="module")
def models(tok) -> dict[str, Any]:
    return {arch: tiny_model(arch, vocab_size=len(tok)) for arch in ARCHS}


def _decoder(model: Any, tok: Any = None, **cfg: Any) -> SwiftDecoder:
    """Drafting every step (no planner to decide against it), with a light skip set that is often right."""
    return SwiftDecoder(model, tok, optimizer=False, skip_set=SkipSet(attn=[2]), planner=False, **cfg)


def _spy_steps(dec: SwiftDecoder) -> list[int]:
    """Record the size of every step the decoder yields (an instance attribute; the class is untouched)."""
    sizes: list[int] = []
    real = dec.stream

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __iter__(self) -> Any:
            for step in self.inner:
                sizes.append(len(step))
                yield step

        def close(self) -> None:
            self.inner.close()

        @property
        def result(self) -> Any:
            return self.inner.result

    dec.stream = lambda *a, **k: Spy(real(*a, **k))  # type: ignore[method-assign]
    return sizes


def _ids(seed: int, n: int = PROMPT_LEN, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _plain(model: Any, ids: torch.Tensor, **kw: Any) -> Any:
    return model.generate(ids, attention_mask=torch.ones_like(ids), **kw)


def _swift(model: Any, dec: SwiftDecoder, ids: torch.Tensor, **kw: Any) -> Any:
    return model.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=dec.custom_generate, **kw)


def _whole_chars(tok: Any, gen: list[int], start: int) -> str | None:
    """The text of two (else one) consecutive generated tokens from ``start`` on that decode to whole characters."""
    pieces = [tok.decode([t]) for t in gen]
    for n in (2, 1):
        for j in range(start, len(gen) - n):
            if all(p and "\ufffd" not in p for p in pieces[j : j + n]):
                return "".join(pieces[j : j + n])
    return None


def _prompt_and_stop(model: Any, tok: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A prompt whose greedy continuation holds whole characters to stop on (random models may emit none)."""
    for s in range(seed, seed + 20):
        ids = _ids(s)
        free = _plain(model, ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
        stop = _whole_chars(tok, free[0, PROMPT_LEN:].tolist(), MAX_NEW // 3)
        if stop is not None:
            return ids, free, stop
    raise AssertionError("no prompt gives a continuation with a whole character")


# ---------------------------------------------------------------------------- greedy equality
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_generate(arch: str, models: dict, tok: Any) -> None:
    model = models[arch]
    dec = _decoder(model, tok)
    sizes = _spy_steps(dec)
    ids, free, stop = _prompt_and_stop(model, tok, 10 * ARCHS.index(arch))
    base = dict(max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
    gen = free[0, PROMPT_LEN:].tolist()
    cases: dict[str, dict[str, Any]] = {
        "plain": {},
        "several_eos": dict(eos_token_id=[gen[15], gen[25]]),
        "min_new_tokens": dict(eos_token_id=[gen[2], gen[5]], min_new_tokens=15),
        "stop_strings": dict(stop_strings=[stop, "never\x01"], tokenizer=tok),
        "max_time_zero": dict(max_time=1e-9),
        "repetition_penalty": dict(repetition_penalty=1.3),
        "no_repeat_ngram": dict(no_repeat_ngram_size=2),
        "penalty_and_min_new": dict(repetition_penalty=1.2, eos_token_id=[gen[3]], min_new_tokens=9),
        "bad_words_suppress": dict(bad_words_ids=[[gen[4]]], suppress_tokens=[gen[6]]),
    }
    out: dict[str, torch.Tensor] = {}
    for name, kw in cases.items():
        want = _plain(model, ids, **base, **kw)
        got = _swift(model, dec, ids, **base, **kw)
        assert torch.equal(got, want), f"{arch}/{name}: {got[0, PROMPT_LEN:].tolist()} != {want[0, PROMPT_LEN:]}"
        out[name] = want
    # each case really changed where or what plain generate decodes, so equality is not vacuous
    n_new = {k: v.shape[1] - PROMPT_LEN for k, v in out.items()}
    assert n_new["plain"] == MAX_NEW and n_new["several_eos"] <= 26 and n_new["max_time_zero"] == 1
    assert 15 < n_new["min_new_tokens"] and n_new["stop_strings"] < MAX_NEW and n_new["penalty_and_min_new"] >= 10
    for name in ("repetition_penalty", "no_repeat_ngram", "bad_words_suppress"):
        assert not torch.equal(out[name], free), name
    assert max(sizes) >= 2, "no step accepted a draft"


def test_prefix_constraint_and_user_processor_rowwise(models: dict) -> None:
    """Processors outside the known-batched set see one row at a time, like a batch of one."""
    model = models["llama"]
    dec = _decoder(model)
    ids = _ids(7)
    allowed = list(range(0, 256, 3))

    class BatchOfOne:
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            assert input_ids.shape[0] == 1  # written for generate's batch of one
            scores = scores.clone()
            scores[:, int(input_ids[0, -1]) % 256] -= 5.0  # discourage repeating the previous token's id
            return scores

    kw = dict(max_new_tokens=40, do_sample=False, pad_token_id=0,
              prefix_allowed_tokens_fn=lambda batch_id, sent: allowed,
              logits_processor=LogitsProcessorList([BatchOfOne()]))
    want = _plain(model, ids, **kw)
    got = _swift(model, dec, ids, **kw)
    assert torch.equal(got, want)
    assert all(t in allowed for t in got[0, PROMPT_LEN:].tolist())


def test_max_time_is_a_loose_bound(models: dict) -> None:
    model = models["qwen2"]
    dec = _decoder(model)
    ids = _ids(3)
    t0 = time.perf_counter()
    got = _swift(model, dec, ids, max_new_tokens=900, do_sample=False, pad_token_id=0, max_time=0.25)
    elapsed = time.perf_counter() - t0
    n = got.shape[1] - PROMPT_LEN
    assert n < 900 and elapsed < 0.25 + 2.0, (n, elapsed)
    want = _plain(model, ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)  # what it did generate is plain greedy's output


def test_state_is_learned_across_calls_in_the_decoder(models: dict) -> None:
    model = models["mistral"]
    dec = _decoder(model)
    before = int(dec.token_counts.counts.sum())
    _swift(model, dec, _ids(5), max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert int(dec.token_counts.counts.sum()) == before + 20
    assert not [k for k in vars(model) if "swift" in k.lower()]  # nothing was set on the model


# ---------------------------------------------------------------------------- streamers
class Recorder(BaseStreamer):
    def __init__(self) -> None:
        self.puts: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.clone())

    def end(self) -> None:
        self.ended += 1


def test_streamer_put_and_end_like_generate(models: dict, tok: Any) -> None:
    model = models["gemma3_text"]
    dec = _decoder(model, tok)
    ids = _ids(11)
    kw = dict(max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
    plain, ours = Recorder(), Recorder()
    want = _plain(model, ids, streamer=plain, **kw)
    got = _swift(model, dec, ids, streamer=ours, **kw)
    assert torch.equal(got, want)
    for rec in (plain, ours):  # generate puts the prompt first, then the new tokens; end() once
        assert torch.equal(rec.puts[0], ids) and rec.ended == 1
    assert all(p.shape == (1,) for p in plain.puts[1:])
    assert all(p.dim() == 2 and p.shape[0] == 1 for p in ours.puts[1:])  # [1, k]: a step's tokens at once
    assert torch.cat([p.reshape(-1) for p in ours.puts[1:]]).tolist() == got[0, PROMPT_LEN:].tolist()
    assert max(p.shape[1] for p in ours.puts[1:]) >= 2

    printed = {}
    for name, cg in (("plain", None), ("swift", dec.custom_generate)):  # TextStreamer prints the same text
        buf = io.StringIO()
        with redirect_stdout(buf):
            extra = {"custom_generate": cg} if cg else {}
            model.generate(ids, attention_mask=torch.ones_like(ids), streamer=TextStreamer(tok, skip_prompt=True),
                           **kw, **extra)
        printed[name] = buf.getvalue()
    assert printed["swift"] == printed["plain"] and len(printed["plain"]) > 10


def test_streamer_ends_on_a_refusal(models: dict) -> None:
    model = models["llama"]
    rec = Recorder()
    with pytest.raises(InvalidArgumentError):
        _swift(model, _decoder(model), _ids(1), max_new_tokens=5, streamer=rec, output_attentions=True,
               return_dict_in_generate=True)
    assert rec.ended == 1  # a TextIteratorStreamer consumer is not left waiting


@pytest.mark.real_model
def test_smollm2_chat_template_with_text_iterator_streamer() -> None:
    from swiftsd.errors import MissingPackageError
    from swiftsd.loading import load

    try:
        model, tok = load("smollm2-135m", dtype=torch.float32, device="cpu")
    except MissingPackageError as exc:
        pytest.skip(str(exc))
    dec = SwiftDecoder(model, tok, optimizer=False, skip_set=SkipSet(attn=[8, 12, 16, 20], mlp=[10, 14, 18]),
                       planner=False)
    sizes = _spy_steps(dec)
    inputs = tok.apply_chat_template([{"role": "user", "content": "Name three colours of the rainbow."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kw = dict(max_new_tokens=40, do_sample=False)
    want = model.generate(**inputs, **kw)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, torch.Tensor] = {}
    th = threading.Thread(target=lambda: result.update(
        out=model.generate(**inputs, custom_generate=dec.custom_generate, streamer=streamer, **kw)))
    th.start()
    text = "".join(streamer)
    th.join()
    got = result["out"]
    assert torch.equal(got, want)
    n = inputs["input_ids"].shape[1]
    assert text == tok.decode(got[0, n:], skip_special_tokens=True) and text.strip()
    assert max(sizes) >= 2


# ---------------------------------------------------------------------------- scores and logits
def test_output_scores_and_logits_are_the_full_models(models: dict) -> None:
    model = models["phi3"]
    dec = _decoder(model)
    ids = _ids(13)
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=0, repetition_penalty=1.4,
              return_dict_in_generate=True, output_scores=True, output_logits=True)
    want = _plain(model, ids, **kw)
    got = _swift(model, dec, ids, **kw)
    assert type(got).__name__ == "GenerateDecoderOnlyOutput" and torch.equal(got.sequences, want.sequences)
    assert len(got.scores) == len(got.logits) == len(want.scores) == 30
    for ours, theirs in ((got.scores, want.scores), (got.logits, want.logits)):
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape == (1, model.config.vocab_size)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got.scores[5], got.logits[5])  # the penalty shows: processed != raw
    plain_only = _swift(model, dec, ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert isinstance(plain_only, torch.Tensor)


# ---------------------------------------------------------------------------- sampling
def _capture_processors(model: Any, ids: torch.Tensor, **kw: Any) -> LogitsProcessorList:
    """The processor list plain generate builds for these arguments (it is handed to a custom_generate)."""
    seen: dict[str, Any] = {}

    def capture(model: Any, input_ids: torch.Tensor, logits_processor: Any = None, **_: Any) -> torch.Tensor:
        seen["procs"] = logits_processor
        return input_ids

    model.generate(ids, custom_generate=capture, **kw)
    return seen["procs"]


def _exact_joint(model: Any, ids: torch.Tensor, procs: LogitsProcessorList, depth: int) -> dict[tuple, float]:
    """P(first ``depth`` tokens) under plain sampling: softmax of the processed full-model scores."""
    law: dict[tuple, float] = {(): 1.0}
    for _ in range(depth):
        nxt: dict[tuple, float] = {}
        for prefix, p in law.items():
            x = torch.cat([ids, torch.tensor([prefix], dtype=torch.long)], dim=1)
            with torch.no_grad():
                logits = model(x).logits[:, -1].float()
            probs = procs(x, logits).softmax(-1)[0].double()
            for t in torch.nonzero(probs).flatten().tolist():
                nxt[prefix + (t,)] = p * float(probs[t])
        law = nxt
    return law


def _rejects(counts: Counter, law: dict[tuple, float], n: int) -> bool:
    """The harness tells ``counts`` from ``law``: an impossible outcome was drawn, or p < 1e-6."""
    return any(law.get(k, 0.0) == 0.0 for k in counts) or chi_square_pvalue(counts, law, n)[0] < 1e-6


@pytest.mark.parametrize("sampler,extra,drop", [
    ("coupled", dict(temperature=0.8, top_k=4, top_p=0.9), "TopPLogitsWarper"),
    ("rejection", dict(temperature=0.8, top_k=4, top_p=0.9, repetition_penalty=1.6),
     "RepetitionPenaltyLogitsProcessor"),
])
def test_sampling_follows_generates_distribution(sampler: str, extra: dict, drop: str) -> None:
    model = tiny_model("llama", seed=3, vocab_size=8)
    ids = torch.tensor([[1, 2, 3, 1]])
    kw = dict(max_new_tokens=3, do_sample=True, pad_token_id=0, **extra)
    procs = _capture_processors(model, ids, **kw)
    law = _exact_joint(model, ids, procs, depth=3)
    dec = _decoder(model, sampler=sampler)
    sizes = _spy_steps(dec)
    n = 1200
    torch.manual_seed(1234)
    counts = Counter(tuple(_swift(model, dec, ids, **kw)[0, 4:].tolist()) for _ in range(n))
    p, tv = chi_square_pvalue(counts, law, n)
    assert p > P_MIN, f"p={p:.2e} tv={tv:.3f}"
    assert max(sizes) >= 2  # drafts were accepted: the tree path was exercised, not only plain steps
    # power: the same draws are told apart from the law without one of generate's processors
    wrong = _exact_joint(model, ids, LogitsProcessorList([q for q in procs if type(q).__name__ != drop]), depth=3)
    assert _rejects(counts, wrong, n)


def test_sampling_is_seeded_by_torch_manual_seed(models: dict) -> None:
    model = models["qwen3"]
    dec = _decoder(model)
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.0, pad_token_id=0)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(_swift(model, dec, _ids(2), **kw))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ---------------------------------------------------------------------------- refusals
def _one_line_error(fn: Any, match: str) -> str:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and "tensor(" not in msg
    return msg


REFUSALS = [
    ("batch", dict(), "loop over the prompts, or use the server"),
    ("num_return_sequences", dict(num_return_sequences=2, do_sample=True), "num_return_sequences=2"),
    ("num_beams", dict(num_beams=2), "beam search"),
    ("output_attentions", dict(return_dict_in_generate=True, output_attentions=True), "output_attentions"),
    ("prompt_lookup", dict(prompt_lookup_num_tokens=3), "assisted"),
    ("guidance", dict(guidance_scale=1.5), "UnbatchedClassifierFreeGuidanceLogitsProcessor"),
    ("padding", dict(attention_mask=torch.tensor([[0, 1, 1, 1]])), "padding"),
    ("synced_gpus", dict(synced_gpus=True), "synced_gpus"),
]


@pytest.mark.parametrize("name,kw,match", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_clear_error(name: str, kw: dict, match: str, models: dict) -> None:
    model = models["llama"]
    dec = _decoder(model)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]) if name == "batch" else torch.tensor([[5, 6, 7, 8]])
    args = {**dict(max_new_tokens=5, pad_token_id=0), **kw}
    _one_line_error(lambda: model.generate(ids, custom_generate=dec.custom_generate, **args), match)


def test_refusals_outside_generates_arguments(models: dict) -> None:
    model, other = models["llama"], models["qwen2"]
    ids = torch.tensor([[5, 6, 7, 8]])
    _one_line_error(lambda: other.generate(ids, custom_generate=_decoder(model).custom_generate, max_new_tokens=3),
                    "built for another model")
    _one_line_error(lambda: model.generate(ids, custom_generate=_decoder(model).custom_generate, max_new_tokens=3,
                                           stop_strings=["ab"]), "tokenizer")
    emb = model.get_input_embeddings()(ids)
    _one_line_error(lambda: model.generate(inputs_embeds=emb, custom_generate=_decoder(model).custom_generate,
                                           max_new_tokens=3), "inputs_embeds")
    with pytest.raises(InvalidArgumentError, match="model.generate"):
        _decoder(model).custom_generate(model, ids)  # called by hand, not by generate
