"""`hf-assisted-int4` / `hf-assisted-int8`: Hugging Face assisted generation whose assistant is the same
model over weight-only int4 / int8 copies of its matrices, built without touching the target."""

from __future__ import annotations

import gc
import json
import warnings
import weakref

import pytest
import torch
from torch import nn

from swiftsd.bench.assisted import SAMPLING_OFF, HFAssisted, QuantLinear, hf_assistant_defaults, shared_copy
from swiftsd.bench.base import RunParams
from swiftsd.bench.choices import DEFAULT_METHODS, METHOD_NAMES
from swiftsd.bench.data import BenchPrompt, build_input
from swiftsd.bench.methods import HF_METHODS, build_methods
from swiftsd.bench.metrics import mismatches
from swiftsd.bench.peers import Plain
from swiftsd.bench.runner import run_stream
from swiftsd.cli.main import main
from swiftsd.config import SamplingParams
from swiftsd.errors import QuantFallbackWarning
from tiny import tiny_model
from tiny_server_model import build_model, build_tokenizer

NAMES = ["hf-assisted-int4", "hf-assisted-int8"]
PROMPTS = [
    BenchPrompt("p1", "mt_bench", ("the cat and the dog", "now the bird")),
    BenchPrompt("p2", "qa", ("one two three four one two three four one two",)),
]


def _tiny():
    tok = build_tokenizer()
    return build_model(len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("halt")), tok


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def built(tiny):
    """The two methods, available, and the QuantFallbackWarnings their builds gave."""
    model, tok = tiny
    methods = build_methods(NAMES, model, tok)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        why = {m.name: m.unavailable() for m in methods}
    assert why == {"plain": None, **{n: None for n in NAMES}}
    return methods, [str(w.message) for w in caught if issubclass(w.category, QuantFallbackWarning)]


@pytest.fixture(scope="module")
def records(built, tiny):
    with torch.inference_mode():
        return run_stream(built[0], tiny[1], PROMPTS, RunParams(max_new_tokens=16), seed=0, progress=False,
                          repeats=1)


def test_registered_but_not_run_by_default():
    assert set(NAMES) <= set(METHOD_NAMES) and set(NAMES) <= set(HF_METHODS)
    assert not set(NAMES) & set(DEFAULT_METHODS)


def test_bench_help_lists_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(n in out for n in NAMES)


def test_tiny_model_fallbacks_warn_once_not_crash(built):
    methods, warned = built
    # the tiny LM head (93 rows) is no multiple of 16: int4's kernel refuses it, it runs in int8
    assert len(warned) == 1 and "(int4)" in warned[0] and "lm_head" in warned[0]
    int4 = next(m for m in methods if m.name == "hf-assisted-int4")
    assert int4.weights.precision_of(int4.weights.head_module) == "int8"


def test_greedy_fp32_output_equals_plain(records):
    assert {r["method"] for r in records} == {"plain", *NAMES}
    assert mismatches(records) == []
    assert all(r["identical"] for r in records if r["method"] != "plain")


def test_step_accounting_is_consistent(records, built):
    """The target verifies ``cache + input - committed`` drafted tokens per forward; the assistant's
    forwards are the drafts (counted and timed on the assistant, not the target)."""
    limit = {m.name: m.describe()["num_assistant_tokens"] for m in built[0][1:]}
    for r in (r for r in records if r["method"] in NAMES):
        assert "invalid" not in r and "accounting_problems" not in r
        d, a = r["draft_lengths"], r["accepted_lengths"]
        assert len(d) == len(a) == r["target_forwards"] == len(r["committed_per_step"])
        committed = sum(x + 1 for x in a)  # each full forward commits accepted + 1, before the cut at EOS
        assert committed == r["new_tokens"] + r["trimmed_after_eos"] == sum(r["committed_per_step"])
        assert all(0 <= x <= y <= limit[r["method"]] for x, y in zip(a, d))
        assert 0 < sum(d) <= r["draft_forwards"]  # every drafted token costs one assistant forward
        assert r["time_draft"] is not None and r["time_draft"] > 0
    mine = [r for r in records if r["method"] in NAMES]
    assert sum(sum(r["accepted_lengths"]) for r in mine) > 0  # a quantized copy of the model agrees with it


def test_assistant_shares_every_tensor_and_no_module(built, tiny):
    model, _ = tiny
    target = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    ptrs = {t.data_ptr() for t in target.values()}
    for m in built[0][1:]:
        a = m.assistant
        tensors = [*a.named_parameters(), *a.named_buffers()]
        assert tensors and all(t is target[n] for n, t in tensors)  # the target's own tensor objects
        assert all(t.data_ptr() in ptrs for _, t in tensors)  # so no new parameter memory
        assert {id(x) for x in a.modules()}.isdisjoint({id(x) for x in model.modules()})
        quant = [n for n, x in a.named_modules() if isinstance(x, QuantLinear)]
        assert sorted(quant) == sorted(m.weights.names[x] for x in m.weights.packed) and len(quant) == 43
        assert not any(isinstance(x, nn.Linear) for x in a.modules())  # every projection and the head packed
        assert a.config is not model.config and a.generation_config is not model.generation_config
        assert all(getattr(a.generation_config, k) == v for k, v in SAMPLING_OFF.items())


def test_tied_weights_stay_tied_and_shared():
    model = tiny_model("qwen2", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    copy = shared_copy(model)
    assert copy.lm_head is not model.lm_head
    assert copy.lm_head.weight is copy.model.embed_tokens.weight is model.lm_head.weight
    with pytest.warns(QuantFallbackWarning):  # vocab 97: int4 falls back for the head
        m = HFAssisted(model, None, "int4")
        assert m.unavailable() is None
    assert isinstance(m.assistant.lm_head, QuantLinear)
    assert m.assistant.model.embed_tokens.weight is model.model.embed_tokens.weight
    ids = list(range(3, 15))
    params = RunParams(max_new_tokens=12)
    assert m.generate(ids, params, 0).new_ids == Plain(model, None).generate(ids, params, 0).new_ids


def _snapshot(model):
    return ({n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]},
            {n: sorted(vars(x)) for n, x in model.named_modules()},
            model.config.to_dict(), model.generation_config.to_dict())


def test_target_untouched_and_the_assistant_goes_with_the_method():
    model, tok = _tiny()
    tensors, attrs, cfg, gen = _snapshot(model)
    m = HFAssisted(model, tok, "int4")
    with pytest.warns(QuantFallbackWarning):
        assert m.unavailable() is None
    ids = build_input(tok, PROMPTS[1], 0, [])
    with torch.inference_mode():
        m.generate(ids, RunParams(max_new_tokens=12), 0)
        m.generate(ids, RunParams(SamplingParams(temperature=0.8, top_k=5), max_new_tokens=12), 1)
    after, attrs2, cfg2, gen2 = _snapshot(model)
    assert after.keys() == tensors.keys()
    assert all(after[n].dtype == t.dtype and torch.equal(after[n].view(-1).view(torch.uint8),
                                                         t.view(-1).view(torch.uint8)) for n, t in tensors.items())
    assert attrs2 == attrs and cfg2 == cfg and gen2 == gen
    assert not any(x._forward_hooks or x._forward_pre_hooks for x in model.modules())
    gone = weakref.ref(m.assistant)
    del m
    gc.collect()
    assert gone() is None  # nothing but the method held the assistant


def _processors(assistant, monkeypatch):
    """The logits processors each of the assistant's ``generate`` calls builds."""
    seen = []
    real = assistant._get_logits_processor

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append([type(p).__name__ for p in out])
        return out

    monkeypatch.setattr(assistant, "_get_logits_processor", spy)
    return seen


def test_assistant_ignores_the_checkpoints_sampling_defaults(monkeypatch):
    """A checkpoint's generation config may sample (top_k=20, top_p=0.9): the assistant must not draft
    with those when the run turns them off, nor be greedy-different from plain."""
    model, tok = _tiny()
    model.generation_config.update(do_sample=True, temperature=0.6, top_k=20, top_p=0.9)
    m = HFAssisted(model, tok, "int8")
    assert m.unavailable() is None
    assert model.generation_config.top_k == 20 and model.generation_config.do_sample  # the target's: as it was
    seen = _processors(m.assistant, monkeypatch)
    ids = build_input(tok, PROMPTS[1], 0, [])
    sampling = RunParams(SamplingParams(temperature=0.8), max_new_tokens=10)  # top_p 1, top_k 0: both off
    state = torch.get_rng_state()
    with torch.inference_mode():
        first = m.generate(ids, sampling, 3).new_ids
        assert m.generate(ids, sampling, 3).new_ids == first  # seeded, and the global RNG is left alone
        assert torch.equal(torch.get_rng_state(), state)
        assert seen and not any({"TopKLogitsWarper", "TopPLogitsWarper"} & set(s) for s in seen)
        greedy = RunParams(max_new_tokens=10)
        assert m.generate(ids, greedy, 0).new_ids == Plain(model, tok).generate(ids, greedy, 0).new_ids


def test_describe_names_precision_group_and_hf_settings(built):
    for m in built[0][1:]:
        d = m.describe()
        json.dumps(d)
        assert d["precision"] == m.precision and d["group"] == (32 if m.precision == "int4" else 0)
        settings = {k: d[k] for k in hf_assistant_defaults()}
        assert None not in settings.values()
        assert settings == {k: getattr(m.assistant.generation_config, k) for k in settings}
        assert d["packed_matrices"] == 43 and isinstance(d["confidence_threshold_adapts"], bool)


def test_heuristic_schedule_is_the_methods_state_and_warmup_keeps_it(tiny):
    model, tok = tiny
    m = HFAssisted(model, tok, "int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        assert m.unavailable() is None
    m.assistant.generation_config.update(num_assistant_tokens_schedule="heuristic", num_assistant_tokens=3)
    ids = build_input(tok, PROMPTS[1], 0, [])
    params = RunParams(max_new_tokens=10)
    with torch.inference_mode():
        m.warmup(ids, params, 0)
        assert m.learned_state() == 3  # warm-up leaves no state behind
        m.generate(ids, params, 0)
        moved = m.learned_state()
        m.set_state(3)
        assert m.learned_state() == 3
    assert moved != 3  # HF carries num_assistant_tokens over calls under "heuristic"


def test_unavailable_says_why(monkeypatch):
    model, tok = _tiny()
    assert "not one of int4, int8" in HFAssisted(model, tok, "int3").unavailable()
    handle = model.model.layers[0].register_forward_hook(lambda *_: None)
    assert "forward hooks (model.layers.0" in HFAssisted(model, tok, "int8").unavailable()
    handle.remove()
    real = model.generate

    def refusing(*args, **kwargs):
        if "assistant_model" in kwargs:
            raise ValueError("assisted generation is not supported for this model")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", refusing)
    m = HFAssisted(model, tok, "int8")
    why = m.unavailable()
    assert why.startswith("transformers refuses assistant_model here: ValueError: assisted generation is not")
    assert m.assistant is None and m.unavailable() == why
    json.dumps(m.describe())


def test_cli_runs_it_and_reports_its_settings(tmp_path, capsys):
    from tiny_server_model import save_tiny_server_model

    model_dir = save_tiny_server_model(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question_id": 1, "category": "qa", "turns": ["one two three one two three"]}\n')
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(model_dir), "--data", str(data), "--methods", "hf-assisted-int8",
               "--max-new-tokens", "8", "--out", str(out), "--name", "t", "--no-progress", "--device", "cpu",
               "--dtype", "float32", "--warmup", "0"])
    assert rc == 0 and "identical to plain" in capsys.readouterr().out
    recs = [json.loads(line) for line in (out / "t.jsonl").read_text().splitlines()]
    assert {r["method"] for r in recs} == {"plain", "hf-assisted-int8"}
    assert all(r["identical"] for r in recs if r["method"] != "plain")
    described = json.loads((out / "t.machine.json").read_text())["methods"]["hf-assisted-int8"]
    assert described["precision"] == "int8" and described["num_assistant_tokens_schedule"] is not None
