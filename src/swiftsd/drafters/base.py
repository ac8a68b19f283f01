"""The drafter interface and the token trie drafters fill.

A drafter proposes continuations of the committed text as branches of one
shared :class:`DraftTrie` (node 0 is the last committed token), within a node
budget, with an estimate of each node's chance of being accepted given its
parent was. After verification it learns from what was accepted. A prefix
proposed by several drafters is one branch: ``add`` merges on (parent, token).

Like Hugging Face's ``get_candidates`` / ``update_candidate_strategy``, but a
trie instead of one chain, and state split by lifetime: per-request state
lives in a :class:`DraftRequest` the decoder passes in; stream-level state (a
suffix index) lives in the drafter object the decoder owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import SamplingParams
from ..engine.cache import SlotKVCache
from ..engine.models import DecoderAdapter, DraftHead
from ..engine.quant import QuantizedWeights
from ..engine.skipset import SkipSet
from ..engine.verify import PositionNoise


@dataclass
class DraftRequest:
    """What every drafter may read about the request being decoded."""

    tokens: list[int]  # committed: prompt + generated so far (the last one is the trie's root)
    prompt_len: int
    eos: frozenset[int] = frozenset()
    max_depth: int = 1 << 30  # drafts deeper than this cannot be committed (the token budget)
    scratch: dict[str, Any] = field(default_factory=dict)  # per-request state, keyed by drafter name


@dataclass
class DraftTrie:
    """Candidate tokens as a trie; node 0 is the root (the last committed token).

    ``prob[i]``: estimated P(node i accepted | its parent accepted);
    ``score[i]``: the product along the path, P(node i accepted).
    ``sampled[i]``: node i's rank among the draws from ``q[parent]`` (the draft
    distribution at its parent, sampled without replacement), or -1 for a point mass
    (lookup and suffix drafts, greedy drafts). The verifier tries draws in rank order.
    """

    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    prob: list[float] = field(default_factory=lambda: [1.0])
    score: list[float] = field(default_factory=lambda: [1.0])
    sources: list[set[str]] = field(default_factory=lambda: [set()])
    sampled: list[int] = field(default_factory=lambda: [-1])
    keep: list[bool] = field(default_factory=lambda: [True])  # exempt from pruning (exact rejection sampling)
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    tags: dict[str, dict[int, Any]] = field(default_factory=dict)  # source -> node -> what it learns from
    _index: dict[tuple[int, int], int] = field(default_factory=dict)

    @classmethod
    def rooted(cls, root_token: int) -> "DraftTrie":
        return cls(tokens=[root_token])

    def __len__(self) -> int:
        return len(self.tokens)

    def child(self, parent: int, token: int) -> int | None:
        return self._index.get((parent, token))

    def add(self, parent: int, token: int, prob: float, source: str, sampled: int = -1,
            keep: bool = False) -> int:
        """Node for ``token`` under ``parent``, created or merged (merging keeps the larger estimate)."""
        node = self._index.get((parent, token))
        prob = min(max(float(prob), 0.0), 1.0)
        if node is None:
            node = len(self.tokens)
            self._index[(parent, token)] = node
            self.tokens.append(token)
            self.parents.append(parent)
            self.prob.append(prob)
            self.score.append(self.score[parent] * prob)
            self.sources.append({source})
            self.sampled.append(sampled)
            self.keep.append(keep)
            return node
        self.sources[node].add(source)
        if sampled >= 0:
            self.sampled[node] = sampled
        self.keep[node] = self.keep[node] or keep
        if prob > self.prob[node]:
            self.prob[node] = prob
            self._rescore(node)
        return node

    def add_path(self, tokens: list[int], probs: list[float], source: str, parent: int = 0) -> None:
        for tok, p in zip(tokens, probs):
            parent = self.add(parent, tok, p, source)

    def _rescore(self, node: int) -> None:
        stack = [node]
        while stack:
            i = stack.pop()
            self.score[i] = self.score[self.parents[i]] * self.prob[i]
            stack.extend(j for j in range(i + 1, len(self.tokens)) if self.parents[j] == i)

    def depth(self, node: int) -> int:
        d = 0
        while node > 0:
            node, d = self.parents[node], d + 1
        return d

    def select(self, max_nodes: int) -> "DraftTrie":
        """The best ``max_nodes`` nodes (root included) by score, still a trie, in creation order.

        A node's score never exceeds its parent's, so taking the top scores (ties broken
        towards shallower, earlier nodes) keeps every chosen node's ancestors. Nodes marked
        ``keep`` are always chosen (with their ancestors).
        """
        n = len(self.tokens)
        if n <= max_nodes:
            return self
        chosen = {0}
        for i in range(1, n):
            if self.keep[i]:
                j = i
                while j not in chosen:
                    chosen.add(j)
                    j = self.parents[j]
        order = sorted(range(1, n), key=lambda i: (-self.score[i], i))
        for i in order:
            if len(chosen) >= max_nodes:
                break
            if self.parents[i] in chosen:
                chosen.add(i)
        return self.subset(sorted(chosen))

    def subset(self, nodes: list[int]) -> "DraftTrie":
        """A new trie of ``nodes`` (sorted, root first, closed under parents), renumbered."""
        new = {old: k for k, old in enumerate(nodes)}
        out = DraftTrie.rooted(self.tokens[0])
        for old in nodes[1:]:
            out.add(new[self.parents[old]], self.tokens[old], self.prob[old], "", self.sampled[old], self.keep[old])
            out.sources[-1] = set(self.sources[old])
        out.q = {new[k]: v for k, v in self.q.items() if k in new}
        out.tags = {src: {new[k]: v for k, v in t.items() if k in new} for src, t in self.tags.items()}
        return out

    def has_long_match(self, sources: tuple[str, ...] = ("lookup", "suffix")) -> bool:
        """A copy drafter proposed a continuation of a match of 3+ tokens (its tags' bucket ``n3``)."""
        return any(tag[0].startswith("n3") for src in sources for tag in self.tags.get(src, {}).values())

    def expected_tokens(self) -> float:
        """E[tokens committed] if verified now: the bonus plus each node's P(accepted)."""
        return 1.0 + sum(self.score[1:])


@dataclass(frozen=True)
class DraftContext:
    """What a model drafter needs for one step: passed by the loop to ``ModelDrafter.propose``."""

    adapter: DecoderAdapter
    cache: SlotKVCache
    skip: SkipSet | None
    head: DraftHead | None
    params: SamplingParams
    generator: torch.Generator
    noise: PositionNoise | None
    rejection: bool  # the rejection sampler verifies: fixed shape, sampled children
    max_depth: int
    frontier: int  # dynamic tree: nodes expanded per depth
    min_mass: float  # dynamic tree: stop when the frontier's total score falls under this
    widths: tuple[tuple[float, ...], tuple[int, ...]]  # paper tree: (thresholds, widths)
    stop_threshold: float
    # a quantized draft's packed weights (already ``with_head(head)`` for the request's draft head);
    # None: the model's own weights. A quantized draft drafts narrow (``frontier`` 1 or 2, siblings
    # from each depth's top-k by confidence) and stops by confidence, as the paper does.
    weights: QuantizedWeights | None = None


class Learner(Protocol):
    """What every drafter does besides proposing: learn from verification, keep stream-level state."""

    name: str

    def observe(self, req: DraftRequest, trie: DraftTrie, accepted: list[int]) -> None:
        """Learn from verification: ``accepted`` are the trie's accepted nodes, root excluded."""
        ...

    def end_request(self, req: DraftRequest) -> None:
        """The request is over (its tokens are final): update stream-level state."""
        ...

    def reset(self) -> None:
        """Forget stream-level state."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class Drafter(Learner, Protocol):
    """A free drafter: proposing costs no model forward (lookup, suffix)."""

    free: bool  # True

    def propose(self, req: DraftRequest, trie: DraftTrie, budget: int) -> None:
        """Add at most ``budget`` nodes of continuations of ``req.tokens`` to ``trie``."""
        ...


class ModelDrafter(Learner, Protocol):
    """A drafter that runs the model (the layer-skip draft): the loop passes it the step's
    :class:`DraftContext`, and the planner reads its acceptance counts."""

    free: bool  # False

    def propose(self, req: DraftRequest, trie: DraftTrie, budget: int, ctx: DraftContext) -> int:
        """Add at most ``budget`` nodes to ``trie``; return the number of draft forwards run."""
        ...

    def acceptance(self, prior: float, precision: str = "full") -> float:
        """P(a depth's candidate drafted at ``precision`` is accepted | its parent was), from counts,
        ``prior`` before any."""
        ...

    def use_skip(self, skip: SkipSet | None, precision: str = "full") -> None:
        """The skip set a draft at ``precision`` uses (a new one resets that precision's acceptance counts)."""
        ...
