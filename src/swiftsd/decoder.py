"""The decode loop: draft with a skip set, verify a tree in one pass, commit.

One loop serves greedy and sampling, speculative and plain steps (a step with
no skip set drafts nothing and verifies the root alone, which is plain
decoding). It yields the tokens of every step for streaming.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Iterator, Sequence

import torch

from .engine.cache import SlotKVCache
from .config import SamplingParams, SwiftConfig
from .errors import ContextLengthError, InvalidArgumentError
from .engine.models import DraftHead, get_adapter
from .optimize import SkipOptimizer, make_optimizer
from .engine.skipset import SkipSet
from .stats import GenerationStats
from .engine.tree import build_tree, widths_from_confidence
from .engine.verify import (
    PositionNoise,
    coupled_sample,
    greedy_verify,
    multi_candidate_speculative_sampling,
    target_probs,
    warp_logits,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class GenerationResult:
    """``sequences`` [1, prompt+new] is laid out exactly like ``model.generate``'s output."""

    sequences: torch.Tensor
    stats: GenerationStats

    @property
    def new_tokens(self) -> list[int]:
        return self.sequences[0, self.stats.prompt_tokens :].tolist()


class GenerationStream:
    """Iterate to receive each step's accepted tokens; ``result`` is set when it ends."""

    def __init__(self, gen: Generator[list[int], None, GenerationResult]) -> None:
        self._gen = gen
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[list[int]]:
        self.result = yield from self._gen

    def close(self) -> None:
        """Stop generating early (a client went away)."""
        self._gen.close()


@dataclass
class _Draft:
    """One draft pass: per depth, the candidates (chain token first) and their odds."""

    cands: list[list[int]]  # [D][<=max_width]
    top1: list[float]  # [D] draft top-1 probability (the confidence)
    q: list[torch.Tensor]  # [D] x [V] draft probs (sampling only)


def _causal(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril_()


class SwiftDecoder:
    """SWIFT self-speculative decoding for a stock Hugging Face causal LM.

    ``SwiftDecoder(model, tokenizer, skip_set=..., **config)``; config keys are the
    fields of :class:`SwiftConfig` (``optimizer`` takes a dict of
    :class:`OptimizerConfig` fields, or ``False``).
    """

    def __init__(
        self,
        model: "PreTrainedModel",
        tokenizer: "PreTrainedTokenizerBase | None" = None,
        skip_set: SkipSet | dict | str | None = None,
        **config: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = get_adapter(model)
        self.config = SwiftConfig.from_kwargs(config)
        self.num_layers = self.adapter.num_layers
        self.skip_set = self._parse_skip(skip_set) if skip_set is not None else SkipSet.uniform(self.num_layers)
        # The on-the-fly optimiser (optimize.py): starts from the given set, learns across requests.
        self.optimizer: SkipOptimizer | None = None
        # Tokens generated over the stream: the draft vocabulary favours them.
        self.token_counts = torch.zeros(self.adapter.vocab_size, dtype=torch.long)
        if self.config.optimizer.enabled:
            self.optimizer = make_optimizer(self.adapter, self.config.optimizer, self.skip_set, self.config.max_draft,
                                            self.config.draft_vocab)

    # -- public API ------------------------------------------------------------
    def generate(
        self,
        input_ids: torch.Tensor | Sequence[int] | str,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        skip_set: SkipSet | dict | str | None = None,
    ) -> GenerationResult:
        """Generate like ``model.generate`` (greedy when temperature is 0), only faster."""
        stream = self.stream(input_ids, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, skip_set)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self,
        input_ids: torch.Tensor | Sequence[int] | str,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        skip_set: SkipSet | dict | str | None = None,
    ) -> GenerationStream:
        """Like :meth:`generate`, yielding the token ids each step accepts. Validates eagerly."""
        ids = self._parse_prompt(input_ids)
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        limit = self.adapter.max_positions
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise ContextLengthError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = {len(ids) + max_new_tokens} "
                f"exceeds the model's context of {limit} tokens; shorten the prompt or lower max_new_tokens"
            )
        eos = self._parse_eos(eos_token_id)
        skip = self._parse_skip(skip_set) if skip_set is not None else None
        seed = seed if seed is not None else random.getrandbits(63)
        gen = torch.Generator(device=self.adapter.device)
        gen.manual_seed(seed)
        noise = None
        if not params.greedy and self.config.sampler == "coupled":
            noise = PositionNoise(seed, self.adapter.vocab_size, self.adapter.device)
        return GenerationStream(self._decode(ids, max_new_tokens, params, eos, gen, noise, skip))

    # -- the loop ------------------------------------------------------------------
    def _decode(
        self,
        ids: list[int],
        max_new: int,
        params: SamplingParams,
        eos: set[int],
        gen: torch.Generator,
        noise: PositionNoise | None,
        skip_override: SkipSet | None,
    ) -> Generator[list[int], None, GenerationResult]:
        cfg, ad, dev = self.config, self.adapter, self.adapter.device
        opt = self.optimizer if skip_override is None else None
        stats = GenerationStats(prompt_tokens=len(ids))
        t_start = time.perf_counter()
        P = len(ids)
        window = opt.config.context_window if opt is not None else 0
        cache = SlotKVCache(ad.num_layers, P + max_new + cfg.max_draft * cfg.max_width + window + 2)
        head = self._draft_head(ids, eos)

        # 1. Prefill: the full model reads the prompt and picks the first new token.
        logits = ad.forward(torch.tensor(ids, device=dev), torch.arange(P, device=dev), cache, 0, 0,
                            _causal(P, dev), None, logits_rows=slice(P - 1, P))
        cache.rollback(P)
        first = self._pick(logits[0], params, gen, noise, P)
        tokens = ids + [first]  # committed; the cache holds all but the last
        stats.time_prefill = time.perf_counter() - t_start
        yield [first]
        done = first in eos or max_new == 1

        while not done:
            n, remaining = len(tokens), max_new - (len(tokens) - P)

            # 2. Optimise: while searching, score one proposed skip set by matchness.
            t0 = time.perf_counter()
            if opt is not None and opt.wants_proposal(n - P):
                cand = opt.propose()
                opt.observe(cand, self.matchness(cand, tokens, P, cache, window, head))
            skip = skip_override if skip_override is not None else (opt.current() if opt else self.skip_set)
            t1 = time.perf_counter()

            # 3. Draft: the layer-skipped model extends the last token while confident.
            budget = min(cfg.max_draft, remaining - 1) if skip is not None else 0
            draft = self._draft(tokens[-1], n - 1, cache, skip, head, budget, params, gen, noise)
            t2 = time.perf_counter()

            # 4. Tree: siblings per depth from the draft's confidence (memoised shape).
            widths = tuple(min(w, len(c)) for w, c in zip(self._widths(draft.top1), draft.cands))
            layout = build_tree(widths)
            tree_tokens = [tokens[-1]] + [c[j] for c, w in zip(draft.cands, widths) for j in range(w)]

            # 5. Verify: one full-model forward over every node of the tree.
            logits = ad.forward(torch.tensor(tree_tokens, device=dev), (n - 1) + layout.depth.to(dev), cache,
                                n - 1, n - 1, layout.mask.to(dev), None)

            # 6. Accept: the longest path agreeing with the target's argmax (greedy) or its
            #    seeded Gumbel-max sample (coupled); or multi-candidate speculative sampling.
            if params.greedy:
                accepted, bonus = greedy_verify(tree_tokens, logits.argmax(-1).tolist(), layout)
            elif noise is not None:
                g = noise.rows(list(range(n, n + len(widths) + 1)))[layout.depth.to(dev)]
                accepted, bonus = greedy_verify(tree_tokens, coupled_sample(logits, params, g).tolist(), layout)
                noise.forget_before(n)
            else:
                p_nodes = target_probs(logits, params)
                q = torch.stack(draft.q) if draft.q else p_nodes[:0]
                accepted, bonus = multi_candidate_speculative_sampling(tree_tokens, p_nodes, q, layout, gen)
            t3 = time.perf_counter()

            # 7. Commit: keep the accepted path's KV entries, emit its tokens and the bonus.
            cache.keep(n - 1, [0] + accepted)
            new = [tree_tokens[i] for i in accepted] + [bonus]
            for i, t in enumerate(new):
                if t in eos:
                    new, done = new[: i + 1], True
                    break
            new = new[:remaining]
            done = done or len(new) == remaining
            tokens += new
            stats.steps += 1
            stats.plain_steps += int(budget == 0)
            stats.draft_lengths.append(len(draft.cands))
            stats.accepted_lengths.append(len(accepted))
            stats.tree_sizes.append(layout.size)
            stats.time_optimize += t1 - t0
            stats.time_draft += t2 - t1
            stats.time_verify += t3 - t2
            if opt is not None:
                opt.record_step(stats, accepted=len(accepted), drafted=len(draft.cands),
                                step_time=time.perf_counter() - t1)
            yield new

        stats.new_tokens = len(tokens) - P
        self.token_counts += torch.bincount(torch.tensor(tokens[P:]), minlength=self.token_counts.numel())
        stats.wall_time = time.perf_counter() - t_start
        stats.time_other = stats.wall_time - (stats.time_prefill + stats.time_draft + stats.time_verify
                                              + stats.time_optimize)
        last = skip_override if skip_override is not None else (opt.current() if opt else self.skip_set)
        stats.skip_set = last.to_dict() if last is not None else None
        stats.optimizer = opt.state_dict() if opt is not None else None
        seq = torch.tensor([tokens], dtype=torch.long, device=dev)
        return GenerationResult(sequences=seq, stats=stats)

    # -- pieces of the loop ---------------------------------------------------------
    def _draft(self, root: int, pos: int, cache: SlotKVCache, skip: SkipSet | None, head: DraftHead | None,
               budget: int, params: SamplingParams, gen: torch.Generator, noise: PositionNoise | None) -> _Draft:
        """Autoregressive draft from ``root`` at position ``pos``, in slots from ``pos`` on."""
        cfg, ad, dev = self.config, self.adapter, self.adapter.device
        out = _Draft([], [], [])
        tok, one = root, torch.ones(1, 1, dtype=torch.bool, device=dev)
        for d in range(budget):
            logits = ad.forward(torch.tensor([tok], device=dev), torch.tensor([pos + d], device=dev), cache,
                                pos + d, pos + d, one, skip, head=head)[0]
            if params.greedy:
                top = torch.topk(logits.softmax(-1), min(cfg.max_width, logits.shape[-1]))
                conf, idx = float(top.values[0]), top.indices
            elif noise is not None:  # propose with the noise the target will use at this position
                w = warp_logits(logits, params)
                g = noise.at(pos + d + 1)
                scores = w + (g if head is None else g[head.token_ids])
                k = min(cfg.max_width, int(torch.isfinite(w).sum()))
                idx = torch.topk(scores, k).indices
                conf = float(w.softmax(-1).max())
            else:
                q = target_probs(logits, params)  # over the draft vocabulary
                k = min(cfg.max_width, int((q > 0).sum()))
                idx = torch.multinomial(q, k, replacement=False, generator=gen)
                conf = float(q.max())
                if head is not None:  # back to the full vocabulary for verification
                    q = q.new_zeros(self.adapter.vocab_size).index_copy_(0, head.token_ids, q)
                out.q.append(q)
            cands = (head.token_ids[idx] if head is not None else idx).tolist()
            out.cands.append(cands)
            out.top1.append(conf)
            tok = cands[0]
            if conf < cfg.stop_threshold:
                break
        return out

    def _widths(self, top1: list[float]) -> tuple[int, ...]:
        cfg = self.config
        if not cfg.use_tree:
            return (1,) * len(top1)
        return widths_from_confidence(top1, cfg.tree_thresholds, cfg.tree_widths, cfg.max_width)

    def _pick(self, logits: torch.Tensor, params: SamplingParams, gen: torch.Generator,
              noise: PositionNoise | None, position: int) -> int:
        if params.greedy:
            return int(logits.argmax())
        if noise is not None:
            return int(coupled_sample(logits, params, noise.at(position)))
        return int(torch.multinomial(target_probs(logits, params), 1, generator=gen))

    def matchness(self, skip: SkipSet, tokens: list[int], prompt_len: int, cache: SlotKVCache,
                  window: int, head: DraftHead | None = None) -> float:
        """Share of the first ``window`` generated tokens the draft predicts from the prompt cache.

        One parallel draft forward over generated tokens g_1..g_w at their own
        positions, attending the prompt's cached KV; written in scratch slots past
        the committed length, so the committed cache is untouched.
        """
        dev = self.adapter.device
        gen_toks = tokens[prompt_len : prompt_len + window + 1]
        w = len(gen_toks) - 1
        if w < 1:
            return 0.0
        logits = self.adapter.forward(
            torch.tensor(gen_toks[:-1], device=dev), torch.arange(prompt_len, prompt_len + w, device=dev), cache,
            cache.length, prompt_len, _causal(w, dev), skip, head=head)
        pred = logits.argmax(-1)
        if head is not None:
            pred = head.token_ids[pred]
        target = torch.tensor(gen_toks[1:], device=dev)
        return float((pred == target).float().mean())

    def _draft_head(self, prompt: list[int], eos: set[int]) -> DraftHead | None:
        """The draft's vocabulary for one request: prompt and EOS tokens, then tokens the
        stream has generated (most frequent first), then the lowest ids."""
        V, K = self.adapter.vocab_size, self.config.draft_vocab
        if K == 0 or K >= V:
            return None
        score = self.token_counts.double() + 1.0 - torch.arange(V, dtype=torch.double) / V
        score[torch.tensor(prompt + sorted(eos), dtype=torch.long)] = float("inf")
        ids = torch.topk(score, K).indices.sort().values
        return self.adapter.draft_head(ids)

    # -- input parsing ------------------------------------------------------------------
    def _parse_prompt(self, input_ids: torch.Tensor | Sequence[int] | str) -> list[int]:
        if isinstance(input_ids, str):
            if self.tokenizer is None:
                raise InvalidArgumentError("a text prompt needs a tokenizer: SwiftDecoder(model, tokenizer)")
            ids = self.tokenizer(input_ids, return_tensors=None)["input_ids"]
        elif isinstance(input_ids, torch.Tensor):
            if input_ids.dim() == 2:
                if input_ids.shape[0] != 1:
                    raise InvalidArgumentError(
                        f"swiftsd decodes one sequence at a time; got a batch of {input_ids.shape[0]}. "
                        "Call generate once per prompt.")
                input_ids = input_ids[0]
            if input_ids.dim() != 1 or input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
                raise InvalidArgumentError(f"input_ids must be a LongTensor [1, n] or [n], got {tuple(input_ids.shape)} "
                                           f"{input_ids.dtype}")
            ids = input_ids.tolist()
        else:
            try:
                ids = [int(i) for i in input_ids]
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(f"input_ids must be token ids, got {input_ids!r}") from exc
        if not ids:
            raise InvalidArgumentError("the prompt is empty: give at least one token")
        vocab = self.model.get_input_embeddings().weight.shape[0]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InvalidArgumentError(f"token ids {bad[:5]} are outside the model's vocabulary [0, {vocab})")
        return ids

    def _parse_eos(self, eos_token_id: int | Sequence[int] | None) -> set[int]:
        from .eos import resolve_eos

        return resolve_eos(self.model, eos_token_id)

    def _parse_skip(self, skip: SkipSet | dict | str) -> SkipSet:
        if isinstance(skip, str):
            skip = SkipSet.from_json(skip)
        return SkipSet.from_dict(skip).validate(self.num_layers)
