"""Verification: pure tensor functions, no model inside.

Glossary (as in the SWIFT paper and vLLM's rejection sampler):
- *draft tokens*: candidates proposed by the layer-skipped draft, arranged in a tree;
- *accepted tokens*: the draft tokens on the path the target agrees with;
- *bonus token*: the one token the target adds after the accepted path (its own
  argmax, a sample from p, or a sample from the residual after rejections).

``p`` is the target distribution, ``q`` the draft distribution, both after the
same temperature / top-k / top-p warp, so sampling preserves ``p`` exactly.

Two exact samplers are offered for temperature > 0:
- ``coupled`` (default): every position t has its own Gumbel noise g_t, drawn
  from (seed, t). The target's token is argmax(warped logits + g_t), an exact
  sample from p (the Gumbel-max trick); the draft proposes with the same g_t, so
  it tends to agree when q is close to p. Verification is then the greedy
  verifier over these noisy argmaxes, and the output depends only on the seed:
  not on the skip set, the tree or the optimiser's state.
- ``rejection``: the paper's multi-candidate speculative sampling (below).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import SamplingParams
from .tree import TreeLayout


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the order and tie rules of HF's warpers.

    logits: [..., V] any float dtype -> [..., V] float32 with -inf on removed tokens. Defined up
    to a constant per row: each row's top logit is subtracted before the division, so
    (x - max) / t <= 0 never overflows to +inf at a tiny t (1e-40 made logits / t all +-inf, and
    a softmax of those NaN), and a huge logit is no tie with a smaller one. Computed in float32
    whatever the model's dtype (1e-5 is subnormal in fp16). A greedy ``params`` (temperature under
    GREEDY_BELOW) is not divided by. Softmax, top-k, top-p and argmax are unchanged by the shift.
    """
    big = torch.finfo(torch.float32).max
    x = logits.float().clamp(max=big)  # a copy; +inf (a broken model) would make inf - inf
    if not params.greedy:
        x = (x - x.amax(-1, keepdim=True).clamp(min=-big)) / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, x.shape[-1])
        kth = torch.topk(x, k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(x, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - params.top_p)
        remove_sorted[..., -1:] = False  # keep at least one token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        x = x.masked_fill(remove, float("-inf"))
    return x


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[..., V] logits -> [..., V] probabilities of the warped distribution."""
    return warp_logits(logits.float(), params).softmax(dim=-1)


class PositionNoise:
    """Gumbel noise per absolute position, a pure function of (seed, position).

    Keeps the few positions a step looks at; ``forget_before`` drops the rest.
    """

    def __init__(self, seed: int, vocab: int, device: torch.device) -> None:
        self.seed, self.vocab, self.device = seed, vocab, device
        self._cache: dict[int, torch.Tensor] = {}

    def at(self, position: int) -> torch.Tensor:
        """[V] Gumbel(0, 1) noise for the token at ``position``."""
        g = self._cache.get(position)
        if g is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed((self.seed * 1_000_003 + position) % (2**63 - 1))
            u = torch.rand(self.vocab, generator=gen, device=self.device).clamp_(min=1e-20)
            g = self._cache[position] = -torch.log(-torch.log(u))
        return g

    def rows(self, positions: list[int]) -> torch.Tensor:
        """[len(positions), V]"""
        return torch.stack([self.at(p) for p in positions])

    def forget_before(self, position: int) -> None:
        for p in [p for p in self._cache if p < position]:
            del self._cache[p]


def coupled_sample(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor) -> torch.Tensor:
    """Gumbel-max sampling: argmax(warped logits + noise), an exact sample of p per row.

    logits, noise: [..., V] -> [...] token ids.
    """
    return (warp_logits(logits.float(), params) + noise).argmax(dim=-1)


def greedy_verify(
    tree_tokens: list[int], target_tokens: Sequence[int] | Callable[[int], int], layout: TreeLayout
) -> tuple[list[int], int]:
    """Longest root path whose tokens equal the target's choice, over any trie.

    tree_tokens: [N] token of each node (node 0 = root, already committed).
    target_tokens: [N] the target's token *after* each node (its argmax, or its
    seeded Gumbel-max sample for the coupled sampler), or a function node -> token,
    so only the nodes the walk visits are scored.
    Returns (accepted node indices excluding the root, bonus token).
    """
    target = target_tokens if callable(target_tokens) else target_tokens.__getitem__
    node = 0
    accepted: list[int] = []
    while True:
        want = target(node)
        hit = next((c for c in layout.children[node] if tree_tokens[c] == want), None)
        if hit is None:
            return accepted, want
        accepted.append(hit)
        node = hit


def _normalize(x: torch.Tensor) -> torch.Tensor | None:
    s = x.sum()
    return x / s if s > 0 else None


def multi_candidate_speculative_sampling(
    tree_tokens: list[int],
    p_nodes: torch.Tensor | Callable[[int], torch.Tensor],
    q_nodes: dict[int, torch.Tensor],
    sampled: list[int],
    layout: TreeLayout,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int]:
    """Recursive rejection sampling over any trie whose children are drafts with or without probabilities.

    tree_tokens: [N]; p_nodes: [N, V] target probs after each node (or node -> [V]);
    q_nodes: node -> [V] the draft distribution that node's *sampled* children were
    drawn from, without replacement; sampled: [N] a node's rank among those draws, or
    -1 for a point mass (e.g. a lookup or suffix draft).

    At a node, try its sampled children in draw order, then its point-mass children:
    accept x with prob min(1, p(x) / q(x)), q = δ_x for a point mass; on rejection
    p <- norm(max(p - q, 0)) and a sampled x is masked out of q (q renormalised).
    If every child is rejected, the bonus token is drawn from the residual p.
    Each candidate's q is its true proposal given what came before (point masses are
    fixed by the context), so this returns tokens distributed exactly as p.
    Returns (accepted node indices excluding the root, bonus token).
    """
    p_of = p_nodes if callable(p_nodes) else p_nodes.__getitem__
    node = 0
    accepted: list[int] = []
    while True:
        kids = layout.children[node]
        order = sorted((c for c in kids if sampled[c] >= 0), key=lambda c: sampled[c])
        order += [c for c in kids if sampled[c] < 0]
        if not order:
            break
        p = p_of(node).clone()
        dev = p.device
        q = q_nodes[node].clone() if node in q_nodes else None
        hit = None
        for c in order:
            x = tree_tokens[c]
            px = float(p[x])
            qx = float(q[x]) if sampled[c] >= 0 and q is not None else 1.0
            r = float(torch.rand((), generator=generator, device=dev))
            if qx > 0 and r < min(1.0, px / qx):
                hit = c
                break
            if sampled[c] >= 0 and q is not None:
                residual = _normalize(torch.clamp(p - q, min=0))
                q[x] = 0
                q = _normalize(q)
            else:
                p[x] = 0
                residual = _normalize(p)
            if residual is not None:
                p = residual
        if hit is None:
            return accepted, int(torch.multinomial(p, 1, generator=generator))
        accepted.append(hit)
        node = hit
    return accepted, int(torch.multinomial(p_of(node), 1, generator=generator))
