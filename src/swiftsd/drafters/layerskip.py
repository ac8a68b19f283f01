"""SWIFT's draft: the same model with a skip set, drafting a tree.

Two shapes:
- ``dynamic`` (default): EAGLE-2-style. At each depth one draft forward runs
  over the ``frontier`` best nodes (by cumulative draft probability), each
  attending its own ancestors; every child it proposes becomes a candidate,
  and the planner later keeps the best nodes overall. Drafting stops when the
  frontier's probability mass no longer pays for another draft forward.
- ``paper``: the reference tree, a top-1 chain drafted while the top-1
  probability stays above ``stop_threshold``, with siblings per depth chosen
  from that depth's confidence. Used by ``method="swift-paper"`` and by the
  rejection sampler, whose exactness needs a tree shape fixed before the
  draws (children are sampled from q without replacement, flagged ``keep``).

A quantized draft (``DraftContext.weights``: int8 / int4 copies of the same
weights) runs its forwards on the packed copies. Weight-only kernels pay at one
or two rows and lose their edge at eight (MODELS.md), so it drafts narrow: the
paper's tree at frontier 1, or ``narrow`` frontier 2 (the two best nodes expanded
per depth, each with siblings from its top-k by confidence); either stops by
confidence, as the paper does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import SamplingParams
from ..engine.cache import SlotKVCache
from ..engine.models import DecoderAdapter, DraftHead
from ..engine.quant import QuantizedWeights
from ..engine.skipset import SkipSet
from ..engine.tree import widths_from_confidence
from ..engine.verify import PositionNoise, target_probs, warp_logits
from .base import DraftContext, DraftRequest, DraftTrie
from .ngram import Calibration, bucket, learn


class LayerSkipDrafter:
    """Drafts with the target's own weights, some sublayers skipped (the skip set)."""

    name = "layerskip"
    free = False

    def __init__(self, shape: str = "dynamic") -> None:
        self.shape = shape
        self.reset()

    def reset(self) -> None:
        self.calib = Calibration(prior=0.7)
        # per draft precision ("full", "int8", "int4"): per-depth acceptance (decayed counts) and its skip set
        self.hits: dict[str, float] = {}
        self.trials: dict[str, float] = {}
        self.skips: dict[str, SkipSet | None] = {}
        self.drafted_at = "full"  # the precision of the last draft (what ``observe`` learns about)
        self.depths_drafted = 0.0  # mean draft forwards per drafted step (decayed)
        self.steps_drafted = 0.0

    @property
    def skip(self) -> SkipSet | None:
        return self.skips.get("full")

    # -- what the planner reads ---------------------------------------------------------
    def acceptance(self, prior: float, precision: str = "full") -> float:
        """P(a depth's candidate drafted at ``precision`` is accepted | the parent was), from counts, with a prior."""
        return (self.hits.get(precision, 0.0) + 4.0 * prior) / (self.trials.get(precision, 0.0) + 4.0)

    def mean_depth(self, default: float) -> float:
        return self.depths_drafted / self.steps_drafted if self.steps_drafted > 0.5 else default

    def use_skip(self, skip: SkipSet | None, precision: str = "full") -> None:
        """A new skip set at ``precision``: its acceptance is not this one's."""
        if precision not in self.skips or skip != self.skips[precision]:
            self.skips[precision], self.hits[precision], self.trials[precision] = skip, 0.0, 0.0

    # -- the drafter interface ----------------------------------------------------------
    def propose(self, req: DraftRequest, trie: DraftTrie, budget: int, ctx: DraftContext) -> int:
        """Draft a tree of at most ``budget`` new nodes with ``ctx``'s skip set; returns the draft forwards run."""
        if ctx.skip is None or budget <= 0 or ctx.max_depth <= 0:
            return 0
        quantized = ctx.weights is not None
        self.drafted_at = ctx.weights.precision if quantized else "full"
        if self.shape == "paper" or ctx.rejection or (quantized and ctx.frontier == 1):
            depths = self._paper(req, trie, budget, ctx)
        else:
            depths = self._dynamic(req, trie, budget, ctx, narrow=quantized)
        self.depths_drafted = 0.98 * self.depths_drafted + depths
        self.steps_drafted = 0.98 * self.steps_drafted + 1.0
        return depths

    def observe(self, req: DraftRequest, trie: DraftTrie, accepted: list[int]) -> None:
        tags = trie.tags.get(self.name)
        if not tags:
            return
        learn(self.calib, trie, accepted, self.name)
        on_path, p = [0, *accepted], self.drafted_at
        for parent, child in zip(on_path, on_path[1:] + [None]):
            if not any(trie.parents[n] == parent for n in tags):
                break  # the draft proposed nothing under this node
            self.trials[p] = 0.995 * self.trials.get(p, 0.0) + 1.0
            hit = child is not None and child in tags
            self.hits[p] = 0.995 * self.hits.get(p, 0.0) + float(hit)
            if not hit:
                break

    def end_request(self, req: DraftRequest) -> None:
        """Nothing per request: what the draft learns is stream-level (calibration, acceptance counts)."""

    def state_dict(self) -> dict[str, Any]:
        return {"calibration": self.calib.state_dict(), "hits": dict(self.hits), "trials": dict(self.trials),
                "skips": {p: s.to_dict() if s is not None else None for p, s in self.skips.items()},
                "drafted_at": self.drafted_at,
                "depths_drafted": self.depths_drafted, "steps_drafted": self.steps_drafted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state from before per-precision counts (floats, one skip set) is "full"."""
        self.calib.load_state_dict(state["calibration"])
        hits, trials = state["hits"], state["trials"]
        self.hits = {p: float(v) for p, v in hits.items()} if isinstance(hits, dict) else {"full": float(hits)}
        self.trials = {p: float(v) for p, v in trials.items()} if isinstance(trials, dict) else {"full": float(trials)}
        skips = state["skips"] if "skips" in state else {"full": state["skip"]}
        self.skips = {p: SkipSet.from_dict(s) if s is not None else None for p, s in skips.items()}
        self.drafted_at = str(state.get("drafted_at", "full"))
        self.depths_drafted, self.steps_drafted = float(state["depths_drafted"]), float(state["steps_drafted"])

    # -- draft forwards -------------------------------------------------------------------
    def _children(self, logits: torch.Tensor, k: int, ctx: DraftContext, position: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Top candidates per row: (token ids [r, k], their draft probs [r, k], q [r, V] or None).

        Greedy: the draft's top-k. Coupled sampling: top-k of warped logits plus the noise the
        target will use at ``position`` (so the draft proposes the target's likely sample), each
        with its probability under that noise, softmax(warped + noise): the target, whose
        distribution is near the draft's, picks the draft's noisy top-1 unless its lead is thin,
        however flat q itself is (q's own top-1 would stop a chain the target goes on to accept).
        With no noise it is the greedy case's softmax. Rejection sampling: k draws without
        replacement from q (q returned on the full vocabulary).
        """
        head, params = ctx.head, ctx.params
        k = max(1, min(k, logits.shape[-1]))
        if params.greedy:
            probs = logits.softmax(-1)
            top = torch.topk(probs, k, dim=-1)
            idx, p, q = top.indices, top.values, None
        elif not ctx.rejection:
            w = warp_logits(logits, params)
            g = ctx.noise.at(position) if ctx.noise is not None else torch.zeros(())
            g = g if head is None or g.dim() == 0 else g[head.token_ids]
            k = max(1, min(k, int(torch.isfinite(w).sum(-1).min())))
            top = torch.topk((w + g).softmax(-1), k, dim=-1)
            idx, p, q = top.indices, top.values, None
        else:
            q_sub = target_probs(logits, params)
            k = max(1, min(k, int((q_sub > 0).sum(-1).min())))
            idx = torch.multinomial(q_sub, k, replacement=False, generator=ctx.generator)
            p = q_sub.gather(-1, idx)
            q = q_sub
            if head is not None:
                q = q_sub.new_zeros(q_sub.shape[0], ctx.adapter.vocab_size).index_copy_(1, head.token_ids, q_sub)
        tokens = head.token_ids[idx] if head is not None else idx
        return tokens, p, q

    def _paper(self, req: DraftRequest, trie: DraftTrie, budget: int, ctx: DraftContext) -> int:
        """Chain drafted while confident, siblings per depth from that depth's confidence."""
        ad, dev = ctx.adapter, ctx.adapter.device
        pos = len(req.tokens) - 1
        one = torch.ones(1, 1, dtype=torch.bool, device=dev)
        thresholds, widths = ctx.widths
        max_w = max(widths)
        tags = trie.tags.setdefault(self.name, {})
        node, tok, used, d = 0, req.tokens[-1], 0, 0
        while d < ctx.max_depth and used < budget:
            logits = ad.forward(torch.tensor([tok], device=dev), torch.tensor([pos + d], device=dev), cache=ctx.cache,
                                slot_start=pos + d, visible_prefix=pos + d, block_mask=one, skip=ctx.skip, head=ctx.head,
                                weights=ctx.weights)
            toks, p, q = self._children(logits, max_w, ctx, pos + d + 1)
            conf = _confidence(p, q)[0]
            w = widths_from_confidence([conf], thresholds, widths, max_w)[0]
            w = min(w, toks.shape[-1], budget - used)
            if q is not None:
                trie.q[node] = q[0]
            chain = None
            for j, (t, pj) in enumerate(zip(toks[0, :w].tolist(), p[0, :w].tolist())):
                b = bucket(0, d + 1)
                child = trie.add(node, t, self.calib.prob(b, pj), self.name, sampled=j if q is not None else -1,
                                 keep=q is not None)
                tags[child] = (b, pj)
                chain = child if j == 0 else chain
            used += w
            d += 1
            if chain is None or conf < ctx.stop_threshold:
                break
            node, tok = chain, trie.tokens[chain]
        return d

    def _dynamic(self, req: DraftRequest, trie: DraftTrie, budget: int, ctx: DraftContext,
                 narrow: bool = False) -> int:
        """EAGLE-2-style: expand the best ``frontier`` nodes per depth, one forward per depth.

        ``narrow`` (a quantized draft): each expanded node gets siblings by its confidence (the
        paper's widths) instead of ``frontier`` children, and drafting stops by confidence."""
        ad, dev = ctx.adapter, ctx.adapter.device
        root_slot = len(req.tokens) - 1  # = the root's position
        tags = trie.tags.setdefault(self.name, {})
        slot_of = {0: root_slot}
        thresholds, widths = ctx.widths
        frontier, next_slot, used, d = [0], root_slot, 0, 0
        while d < ctx.max_depth and used < budget and frontier:
            k = len(frontier)
            toks = torch.tensor([trie.tokens[f] for f in frontier], device=dev)
            positions = torch.full((k,), root_slot + d, dtype=torch.long, device=dev)
            past_vis, past_pos = _past_masks(trie, frontier, slot_of, root_slot, next_slot, dev) if d else (None, None)
            block = torch.eye(k, dtype=torch.bool, device=dev)
            logits = ad.forward(toks, positions, cache=ctx.cache, slot_start=next_slot, visible_prefix=root_slot,
                                block_mask=block, skip=ctx.skip, head=ctx.head, past_visible=past_vis,
                                past_positions=past_pos, weights=ctx.weights)
            for j, f in enumerate(frontier):
                slot_of[f] = next_slot + j
            next_slot += k
            cand_toks, cand_p, _ = self._children(logits, max(widths) if narrow else ctx.frontier, ctx,
                                                  root_slot + d + 1)
            confs = _confidence(cand_p, None)
            n_kids = widths_from_confidence(confs, thresholds, widths, max(widths)) if narrow else [ctx.frontier] * k
            new: list[int] = []
            b = bucket(0, d + 1)
            for j, f in enumerate(frontier):
                for t, pj in zip(cand_toks[j, : n_kids[j]].tolist(), cand_p[j, : n_kids[j]].tolist()):
                    if used >= budget:
                        break
                    existed = trie.child(f, t) is not None
                    child = trie.add(f, t, self.calib.prob(b, pj), self.name)
                    tags[child] = (b, pj)
                    used += int(not existed)
                    new.append(child)
            d += 1
            new.sort(key=lambda i: -trie.score[i])
            frontier = new[: ctx.frontier]
            if (max(confs) < ctx.stop_threshold) if narrow else sum(trie.score[i] for i in frontier) < ctx.min_mass:
                break
        return d


def _past_masks(trie: DraftTrie, frontier: list[int], slot_of: dict[int, int], root_slot: int, next_slot: int,
                dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which drafted slots each frontier node attends (its ancestors), and every drafted slot's position."""
    n_past = next_slot - root_slot
    past_vis = torch.zeros(len(frontier), n_past, dtype=torch.bool)
    for j, f in enumerate(frontier):
        a = trie.parents[f]
        while a >= 0:
            past_vis[j, slot_of[a] - root_slot] = True
            a = trie.parents[a]
    past_pos = torch.empty(n_past, dtype=torch.long)
    for node, slot in slot_of.items():
        past_pos[slot - root_slot] = root_slot + trie.depth(node)
    return past_vis.to(dev), past_pos.to(dev)


def _confidence(p: torch.Tensor, q: torch.Tensor | None) -> list[float]:
    """Each row's top-1 draft probability (the paper's confidence): of q when sampled, else the
    top candidate's (greedy: the softmax; coupled: the softmax under the target's noise)."""
    return (q.max(-1).values if q is not None else p[:, 0]).tolist()


def matchness(adapter: DecoderAdapter, skip: SkipSet, tokens: list[int], prompt_len: int, cache: SlotKVCache,
              window: int, head: DraftHead | None = None, weights: QuantizedWeights | None = None,
              params: SamplingParams | None = None, noise: PositionNoise | None = None) -> float:
    """Share of the first ``window`` generated tokens the draft predicts from the prompt cache
    (``weights``: a quantized draft's, made for ``head``).

    Under the coupled sampler (``noise``, with the request's ``params``) the draft's prediction
    is its warped argmax plus the noise each token was sampled with, as it drafts: matchness
    then estimates the acceptance the loop will see. A plain argmax against sampled tokens
    scores every set low, and the optimiser's calibration (acceptance = 1 - s(1 - matchness))
    then rated a set that predicts nothing as acceptable, adopted it, and the draft stopped paying.

    One parallel draft forward over generated tokens g_1..g_w at their own
    positions, attending the prompt's cached KV; written in scratch slots past
    the committed length, so the committed cache is untouched.
    """
    dev = adapter.device
    gen_toks = tokens[prompt_len : prompt_len + window + 1]
    w = len(gen_toks) - 1
    if w < 1:
        return 0.0
    logits = adapter.forward(torch.tensor(gen_toks[:-1], device=dev), torch.arange(prompt_len, prompt_len + w, device=dev),
                             cache=cache, slot_start=cache.length, visible_prefix=prompt_len, skip=skip, head=head,
                             weights=weights)
    if noise is None or params is None or params.greedy:
        pred = logits.argmax(-1)
    else:
        g = noise.rows(list(range(prompt_len + 1, prompt_len + w + 1)))
        pred = (warp_logits(logits, params) + (g if head is None else g[:, head.token_ids])).argmax(-1)
    if head is not None:
        pred = head.token_ids[pred]
    target = torch.tensor(gen_toks[1:], device=dev)
    return float((pred == target).float().mean())


def draft_head(adapter: DecoderAdapter, token_counts: torch.Tensor, prompt: list[int], eos: set[int],
               size: int) -> DraftHead | None:
    """The draft's vocabulary for one request: prompt and EOS tokens, then tokens the
    stream has generated (most frequent first), then the lowest ids; None for the full one."""
    V = adapter.vocab_size
    if size == 0 or size >= V:
        return None
    score = token_counts.double() + 1.0 - torch.arange(V, dtype=torch.double) / V
    score[torch.tensor(prompt + sorted(eos), dtype=torch.long)] = float("inf")
    ids = torch.topk(score, size).indices.sort().values
    return adapter.draft_head(ids)
