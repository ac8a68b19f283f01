"""Hugging Face ``model.generate`` methods (plain, prompt lookup, early exit) and their step accounting.

The step log comes from two public observation points, not from generate's
internals, so it holds across transformers releases:

- a streamer (``generate(streamer=...)``): generate puts the prompt, then the
  tokens each step commits (accepted drafts + the bonus token);
- forward hooks on the model: the input length and the length of the cache it
  is given (found by type, whatever the argument is called: ``past_key_values``
  up to transformers 5.23, ``cache`` from 5.24). A forward over positions
  ``[cache, cache + input)`` of which ``committed`` are settled verifies
  ``cache + input - committed`` drafted tokens.

transformers 5.24 renamed the cache argument; reading it by name gave a cache
length of 0 on every step, hence PLD "acceptance 147 %" (issue 9).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from .base import AccountingError, Method, RunParams, TurnOutput, sync, trim_at_eos


class _StepStreamer:
    """Counts the tokens of each ``put``: the first is the prompt, each later one a decoding step."""

    def __init__(self) -> None:
        self.puts: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(int(value.numel()))  # batch size 1

    def end(self) -> None:
        pass

    @property
    def steps(self) -> list[int]:
        return self.puts[1:]


def _cache_length(args: tuple, kwargs: dict) -> int:
    from transformers import Cache

    for v in (*args, *kwargs.values()):
        if isinstance(v, Cache):
            return int(v.get_seq_length())
    return 0


class _ForwardLog:
    """Counts and times the model's forwards during one ``generate`` call.

    A forward with fewer than the model's decoder layers configured is a draft
    (HF early exit temporarily lowers ``num_hidden_layers``); the rest are full
    forwards, kept as (input length, cache length, seconds). Every forward of a
    model in ``drafts`` (an ``assistant_model``: its own module objects) is a draft too.
    """

    def __init__(self, model: Any, device: torch.device, drafts: Sequence[Any] = ()) -> None:
        self.model, self.device, self.drafts = model, device, tuple(drafts)
        self.base_cfg = model.base_model.config
        self.num_layers = self.base_cfg.num_hidden_layers
        self.full: list[tuple[int, int, float]] = []
        self.draft_calls, self.draft_time = 0, 0.0
        self._t0, self._is_draft, self._len, self._cache, self._draft_t0 = 0.0, False, 0, 0, 0.0
        self._handles: list[Any] = []

    def __enter__(self) -> "_ForwardLog":
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post),
        ]
        for d in self.drafts:
            self._handles += [d.register_forward_pre_hook(self._draft_pre), d.register_forward_hook(self._draft_post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._is_draft = self.base_cfg.num_hidden_layers < self.num_layers
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._len = int(ids.shape[-1]) if ids is not None else 0
        self._cache = _cache_length(args, kwargs)
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module: Any, args: tuple, output: Any) -> None:
        sync(self.device)
        dt = time.perf_counter() - self._t0
        if self._is_draft:
            self.draft_calls += 1
            self.draft_time += dt
        else:
            self.full.append((self._len, self._cache, dt))

    def _draft_pre(self, *_: Any) -> None:
        sync(self.device)
        self._draft_t0 = time.perf_counter()

    def _draft_post(self, *_: Any) -> None:
        sync(self.device)
        self.draft_calls += 1
        self.draft_time += time.perf_counter() - self._draft_t0


def steps_from_log(full: Sequence[tuple[int, int, float]], prompt_len: int, steps: Sequence[int]
                   ) -> tuple[list[int], list[int]]:
    """(drafted, accepted) tokens per step from the full forwards and the tokens each step committed.

    Raises :class:`AccountingError` when the two observations do not describe the same steps.
    """
    if len(full) != len(steps):
        raise AccountingError(f"{len(full)} full-model forwards but {len(steps)} committed steps")
    committed, drafted, accepted = prompt_len, [], []
    for (n, cache, _), k in zip(full, steps):
        drafted.append(cache + n - committed)
        accepted.append(k - 1)
        committed += k
    return drafted, accepted


@contextmanager
def _seeded(device: torch.device, seed: int, sampling: bool) -> Iterator[None]:
    """HF's sampler draws from torch's default generator and takes no generator argument, so a
    sampling run sets that generator's state inside ``fork_rng``, which restores it afterwards:
    nothing outside the call sees the seed. Greedy runs draw nothing and are left alone."""
    if not sampling:
        yield
        return
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


class HFGenerate(Method):
    """``model.generate`` with extra keyword arguments (none: plain decoding)."""

    name = "plain"
    generate_kwargs: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return dict(self.generate_kwargs)

    def _call_kwargs(self) -> dict[str, Any]:
        """What ``generate`` gets besides the run's settings (none: plain decoding)."""
        return dict(self.generate_kwargs)

    def _draft_models(self) -> tuple[Any, ...]:
        """Models other than the target whose forwards are drafts (an ``assistant_model``)."""
        return ()

    def _kwargs(self, ids: torch.Tensor, params: RunParams) -> dict[str, Any]:
        s = params.sampling
        kw: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, attention_mask=torch.ones_like(ids))
        if params.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None and self.eos:
            pad = min(self.eos)
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(self._call_kwargs())
        return kw

    def generate(self, input_ids: list[int], params: RunParams, seed: int) -> TurnOutput:
        ids = torch.tensor([input_ids], device=self.device)
        kw, streamer = self._kwargs(ids, params), _StepStreamer()
        log = _ForwardLog(self.model, self.device, self._draft_models())
        with _seeded(self.device, seed, not params.greedy), log:
            sync(self.device)
            t0 = time.perf_counter()
            out = self.model.generate(ids, streamer=streamer, **kw)
            sync(self.device)
            wall = time.perf_counter() - t0
        raw = out[0, len(input_ids):].tolist()
        new = trim_at_eos(raw, self.eos)
        problems: list[str] = []
        drafted: list[int] = []
        accepted: list[int] = []
        try:
            drafted, accepted = steps_from_log(log.full, len(input_ids), streamer.steps)
        except AccountingError as exc:
            problems.append(str(exc))
        if sum(streamer.steps) != len(raw):
            problems.append(f"steps committed {sum(streamer.steps)} tokens but generate returned {len(raw)}")
        assisted = bool(self._call_kwargs())
        return TurnOutput(
            new_ids=new, wall_time=wall, target_forwards=len(log.full),
            draft_forwards=log.draft_calls,
            draft_lengths=drafted if assisted else [],
            accepted_lengths=accepted if assisted else [],
            time_draft=log.draft_time if log.draft_calls else None,
            time_decode_forwards=sum(t for _, _, t in log.full[1:]),
            time_prefill=log.full[0][2] if log.full else None,
            extra={"trimmed_after_eos": len(raw) - len(new), "committed_per_step": list(streamer.steps),
                   **({"accounting_problems": problems} if problems else {})},
        )


class Plain(HFGenerate):
    name = "plain"


class PLD(HFGenerate):
    """Prompt lookup decoding: drafts are n-gram matches from the context (no draft model)."""

    name = "pld"

    def __init__(self, model: Any, tokenizer: Any, num_tokens: int = 10) -> None:
        super().__init__(model, tokenizer)
        self.generate_kwargs = {"prompt_lookup_num_tokens": num_tokens}


def runs_truncated(model: Any, layers: int) -> bool:
    """Whether the model runs only ``layers`` decoder layers while ``config.num_hidden_layers`` says so.

    HF early exit lowers that setting during a draft and relies on the model's
    forward honouring it. Checked by doing it once on one token and counting the
    decoder layers that ran (forward hooks), not by reading the model's source.
    """
    base = model.base_model
    blocks = getattr(base, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return False
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda *_: ran.append(1)) for b in blocks]
    cfg, full = base.config, base.config.num_hidden_layers
    device = model.get_input_embeddings().weight.device
    try:
        cfg.num_hidden_layers = layers
        with torch.inference_mode():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    finally:
        cfg.num_hidden_layers = full
        for h in handles:
            h.remove()
    return len(ran) == layers


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
        if not runs_truncated(self.model, self.layer):
            return (f"{type(self.model.base_model).__name__} does not stop after config.num_hidden_layers "
                    "layers, which HF early exit relies on")
        return None
