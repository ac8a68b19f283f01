"""The methods a benchmark compares, behind one small interface.

Each method turns one prompt (token ids) into a :class:`TurnOutput`: the new
token ids, the wall time, and a step log (full-model forwards, drafted and
accepted tokens per step, draft time). Hugging Face methods are observed with
forward hooks on the model (read-only: they count and time calls, nothing more).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..decoder import SwiftDecoder
from ..engine.skipset import SkipSet

METHOD_NAMES = ("plain", "swiftsd", "swiftsd-static", "swiftsd-chain", "pld", "early-exit")


@dataclass(frozen=True)
class GenParams:
    """Decoding settings shared by every method of one run."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class TurnOutput:
    """What one method did on one prompt. ``accepted_lengths``/``draft_lengths`` are per decoding step."""

    new_ids: list[int]
    wall_time: float
    target_forwards: int  # full-model forwards, the prefill included
    draft_forwards: int = 0  # draft-model forwards (one per drafted depth)
    draft_lengths: list[int] = field(default_factory=list)  # tokens drafted (chain depth) per step
    accepted_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per step (bonus excluded)
    time_draft: float | None = None  # None: not measurable for this method
    time_optimize: float = 0.0
    time_decode_forwards: float | None = None  # summed time of full-model forwards after the prefill
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trim_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    """Cut after the first EOS (HF assisted decoding may append accepted tokens past it)."""
    out = []
    for t in ids:
        out.append(int(t))
        if t in eos:
            break
    return out


def eos_ids(model: Any) -> set[int]:
    e = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if e is None:
        return set()
    return {int(e)} if isinstance(e, int) else {int(x) for x in e}


class Method:
    """One decoding method. ``unavailable()`` names why it cannot run here (None: it can)."""

    name = "method"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = model.get_input_embeddings().weight.device
        self.eos = eos_ids(model)

    def unavailable(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def generate(self, input_ids: list[int], params: GenParams, seed: int) -> TurnOutput:
        raise NotImplementedError

    def warmup(self, input_ids: list[int], params: GenParams, seed: int) -> None:
        """An untimed run that leaves no state behind."""
        self.generate(input_ids, params, seed)


# -- Hugging Face generate-based methods ---------------------------------------------
class _ForwardLog:
    """Counts and times the model's forwards during one ``generate`` call.

    A forward with fewer than the model's decoder layers configured is a draft
    (HF early exit temporarily lowers ``num_hidden_layers``); the rest are full
    forwards, for which the input length and cache length are kept so the
    committed length before each step (and so each step's accepted tokens) follows.
    """

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model, self.device = model, device
        self.base_cfg = model.base_model.config
        self.num_layers = self.base_cfg.num_hidden_layers
        self.full: list[tuple[int, int, float]] = []  # (input length, cache length, seconds)
        self.draft_calls, self.draft_time = 0, 0.0
        self._t0, self._is_draft = 0.0, False
        self._handles: list[Any] = []

    def __enter__(self) -> "_ForwardLog":
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._is_draft = self.base_cfg.num_hidden_layers < self.num_layers
        ids = kwargs.get("input_ids", args[0] if args else None)
        pkv = kwargs.get("past_key_values")
        self._len = int(ids.shape[-1]) if ids is not None else 0
        self._cache = int(pkv.get_seq_length()) if pkv is not None and hasattr(pkv, "get_seq_length") else 0
        _sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module: Any, args: tuple, output: Any) -> None:
        _sync(self.device)
        dt = time.perf_counter() - self._t0
        if self._is_draft:
            self.draft_calls += 1
            self.draft_time += dt
        else:
            self.full.append((self._len, self._cache, dt))


def steps_from_log(full: Sequence[tuple[int, int, float]], prompt_len: int, total_len: int
                   ) -> tuple[list[int], list[int]]:
    """(drafted, accepted) tokens per step of HF assisted decoding, from its full forwards.

    Before full forward i the sequence holds ``committed_i`` tokens: the prompt for
    the first, ``cache_len + 1`` later (HF crops the cache to all but the last
    committed token). Forward i verifies ``cache_len + input_len - committed_i``
    drafted tokens and commits ``committed_{i+1} - committed_i`` = accepted + 1.
    """
    committed = [prompt_len] + [c + 1 for _, c, _ in full[1:]] + [total_len]
    drafted = [max(0, c + n - committed[i]) for i, (n, c, _) in enumerate(full)]
    accepted = [max(0, committed[i + 1] - committed[i] - 1) for i in range(len(full))]
    return drafted, accepted


class HFGenerate(Method):
    """``model.generate`` with extra keyword arguments (none: plain decoding)."""

    name = "plain"
    generate_kwargs: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return dict(self.generate_kwargs)

    def generate(self, input_ids: list[int], params: GenParams, seed: int) -> TurnOutput:
        ids = torch.tensor([input_ids], device=self.device)
        kw: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, attention_mask=torch.ones_like(ids))
        if params.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                      top_k=params.top_k or None)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None and self.eos:
            pad = min(self.eos)
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(self.generate_kwargs)
        torch.manual_seed(seed)
        with _ForwardLog(self.model, self.device) as log:
            _sync(self.device)
            t0 = time.perf_counter()
            out = self.model.generate(ids, **kw)
            _sync(self.device)
            wall = time.perf_counter() - t0
        raw = out[0, len(input_ids):].tolist()
        new = trim_at_eos(raw, self.eos)
        drafted, accepted = steps_from_log(log.full, len(input_ids), len(input_ids) + len(raw))
        assisted = bool(self.generate_kwargs)
        return TurnOutput(
            new_ids=new, wall_time=wall, target_forwards=len(log.full),
            draft_forwards=log.draft_calls,
            draft_lengths=drafted if assisted else [],
            accepted_lengths=accepted if assisted else [],
            time_draft=log.draft_time if log.draft_calls else None,
            time_decode_forwards=sum(t for _, _, t in log.full[1:]),
            extra={"trimmed_after_eos": len(raw) - len(new)},
        )


class Plain(HFGenerate):
    name = "plain"


class PLD(HFGenerate):
    """Prompt lookup decoding: drafts are n-gram matches from the context (no draft model)."""

    name = "pld"

    def __init__(self, model: Any, tokenizer: Any, num_tokens: int = 10) -> None:
        super().__init__(model, tokenizer)
        self.generate_kwargs = {"prompt_lookup_num_tokens": num_tokens}


class EarlyExit(HFGenerate):
    """HF self-speculation by early exit (LayerSkip): the first ``layer`` layers + LM head draft."""

    name = "early-exit"

    def __init__(self, model: Any, tokenizer: Any, layer: int | None = None) -> None:
        super().__init__(model, tokenizer)
        n = model.base_model.config.num_hidden_layers
        self.layer = layer if layer is not None else max(1, n // 2)
        self.num_layers = n
        self.generate_kwargs = {"assistant_early_exit": self.layer}

    def unavailable(self) -> str | None:
        if not 1 <= self.layer < self.num_layers:
            return f"exit layer {self.layer} must be in [1, {self.num_layers})"
        import inspect

        src = inspect.getsource(type(self.model.base_model).forward)
        if "num_hidden_layers]" not in src:
            return (f"{type(self.model.base_model).__name__}.forward does not truncate its layers by "
                    "config.num_hidden_layers, which HF early exit relies on")
        return None


# -- swiftsd ------------------------------------------------------------------------------
class Swift(Method):
    """SwiftDecoder; one decoder per method for the whole stream, so optimiser state carries over."""

    name = "swiftsd"

    def __init__(self, model: Any, tokenizer: Any, skip_set: SkipSet | None = None, **config: Any) -> None:
        super().__init__(model, tokenizer)
        self.config, self.skip_set = config, skip_set
        self.decoder = SwiftDecoder(model, tokenizer, skip_set=skip_set, **config)

    def warmup(self, input_ids: list[int], params: GenParams, seed: int) -> None:
        """Warm up on a throwaway decoder: the measured one starts the stream with a fresh optimiser."""
        SwiftDecoder(self.model, self.tokenizer, skip_set=self.skip_set, **self.config).generate(
            input_ids, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k, seed=seed)

    def describe(self) -> dict[str, Any]:
        d = self.decoder
        return {
            "skip_set": d.skip_set.to_dict() if d.skip_set is not None else None,
            "use_tree": d.config.use_tree,
            "optimizer": type(d.optimizer).__name__ if d.optimizer is not None else None,
        }

    def generate(self, input_ids: list[int], params: GenParams, seed: int) -> TurnOutput:
        _sync(self.device)
        t0 = time.perf_counter()
        res = self.decoder.generate(input_ids, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                    top_p=params.top_p, top_k=params.top_k, seed=seed)
        _sync(self.device)
        wall = time.perf_counter() - t0
        st = res.stats
        return TurnOutput(
            new_ids=res.new_tokens, wall_time=wall, target_forwards=st.steps + 1,
            draft_forwards=st.draft_tokens, draft_lengths=list(st.draft_lengths),
            accepted_lengths=list(st.accepted_lengths), time_draft=st.time_draft, time_optimize=st.time_optimize,
            extra={"mean_accepted_tokens": st.mean_accepted_tokens, "plain_steps": st.plain_steps,
                   "skip_set": st.skip_set, "tree_nodes": sum(st.tree_sizes),
                   "optimizer": _brief_state(st.optimizer)},
        )


def _brief_state(state: Any) -> Any:
    """The optimiser's state without long lists (kept small in the per-prompt JSONL)."""
    if not isinstance(state, dict):
        return state
    return {k: v for k, v in state.items() if not (isinstance(v, (list, dict)) and len(v) > 64)}


def build_methods(names: Sequence[str], model: Any, tokenizer: Any, static_skip: SkipSet | None,
                  pld_tokens: int = 10, early_exit_layer: int | None = None) -> list[Method]:
    """Instantiate the named methods (``plain`` always first: it is the reference)."""
    out: list[Method] = []
    for name in dict.fromkeys(["plain", *names]):
        if name == "plain":
            out.append(Plain(model, tokenizer))
        elif name == "swiftsd":
            out.append(Swift(model, tokenizer))
        elif name == "swiftsd-static":
            m = Swift(model, tokenizer, skip_set=static_skip, optimizer=False)
            m.name = "swiftsd-static"
            out.append(m)
        elif name == "swiftsd-chain":
            m = Swift(model, tokenizer, use_tree=False)
            m.name = "swiftsd-chain"
            out.append(m)
        elif name == "pld":
            out.append(PLD(model, tokenizer, pld_tokens))
        elif name == "early-exit":
            out.append(EarlyExit(model, tokenizer, early_exit_layer))
        else:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}")
    return out
