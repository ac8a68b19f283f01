"""One request's state while it decodes, one step's clock, and the target's scores of a verified tree.

The decode loop (``decoder.py``) reads and writes these; they hold no policy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator, Iterator

import torch

from ..config import SamplingParams
from ..drafters import DraftRequest, DraftTrie
from ..engine.cache import SlotKVCache
from ..engine.models import DraftHead
from ..engine.skipset import SkipSet
from ..engine.tree import TreeLayout
from ..engine.verify import PositionNoise, coupled_sample, target_probs
from .bounds import CopyProbe
from .request import LogitsProcessor, StopHook
from ..stats import GenerationStats

if TYPE_CHECKING:
    from ..engine.cost import CostModel
    from ..engine.models import DecoderAdapter
    from ..engine.quant import QuantizedWeights


@dataclass
class GenerationResult:
    """``sequences`` [1, prompt+new] is laid out exactly like ``model.generate``'s output."""

    sequences: torch.Tensor
    stats: GenerationStats

    @property
    def new_tokens(self) -> list[int]:
        return self.sequences[0, self.stats.prompt_tokens :].tolist()


class GenerationStream:
    """Iterate to receive each step's accepted tokens; ``result`` is set when it ends.

    A long prompt is prefilled in chunks (``SwiftConfig.prefill_chunk``) and the stream yields
    ``[]`` between two of them: no tokens yet, but a point where the consumer may ``close()``
    it (a deadline passed, a client left) instead of waiting for the whole prefill.
    """

    def __init__(self, gen: Generator[list[int], None, GenerationResult]) -> None:
        self._gen = gen
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[list[int]]:
        self.result = yield from self._gen

    def close(self) -> None:
        """Stop generating early (a client went away)."""
        self._gen.close()


@dataclass
class Run:
    """One request's state while it decodes."""

    draft_req: DraftRequest  # what drafters read: the committed tokens, the prompt length, their scratch
    cache: SlotKVCache
    head: DraftHead | None  # the draft vocabulary of a full-precision draft (None: the whole head)
    quant_head: DraftHead | None  # a quantized draft's (``quant_draft_vocab``)
    params: SamplingParams  # the target's warp (temperature 1 and no warp when a processor does it)
    draft_params: SamplingParams  # what drafts propose with
    generator: torch.Generator
    noise: PositionNoise | None
    eos: set[int]
    max_new: int
    skip_override: SkipSet | None
    processor: LogitsProcessor | None
    stop: StopHook | None
    stats: GenerationStats
    t_start: float
    probe: CopyProbe | None  # retries copy drafts the planner stopped trusting (one per request)
    done: bool = False
    # the quantized draft weights by precision, made for this request's draft head (``with_head``, once)
    weights: dict[str, "QuantizedWeights"] = field(default_factory=dict)

    def head_for(self, precision: str) -> DraftHead | None:
        """The draft vocabulary of a draft at ``precision``."""
        return self.head if precision == "full" else self.quant_head

    @property
    def tokens(self) -> list[int]:
        return self.draft_req.tokens

    @property
    def remaining(self) -> int:
        return self.max_new - (len(self.draft_req.tokens) - self.draft_req.prompt_len)


@dataclass
class StepClock:
    """One step's timestamps (perf_counter seconds) and what its model draft did, handed from step to step."""

    start: float  # before the optimiser's proposal
    drafting: float  # after it: the step proper begins
    verifying: float = 0.0  # the drafts are done
    model_draft: float = 0.0  # seconds the model draft took (0: it did not run)
    forwards: int = 0  # model draft forwards
    probing: bool = False  # the planner verifies a copy probe this step


class TargetScores:
    """The target's choice after each tree node, scored on demand (LM head, processor, sampler).

    Verification walks one path, so it needs the LM head on the nodes of that path
    only: (accepted + 1) rows instead of the whole tree. One LM-head product per
    visited node would read the head's weights once per accepted token (on qwen-0.5b
    fp32 a quarter of a plain step each), so a node is scored together with the
    likeliest chain below it, as far as the cost model expects that to save time.
    """

    def __init__(self, adapter: "DecoderAdapter", run: Run, trie: DraftTrie, layout: TreeLayout,
                 hidden: torch.Tensor, costs: "CostModel | None" = None) -> None:
        self.adapter, self.run, self.trie, self.layout, self.hidden = adapter, run, trie, layout, hidden
        self.costs = costs
        self._logits: dict[int, torch.Tensor] = {}

    def rows_from(self, node: int) -> list[int]:
        """``node`` and the descendants worth scoring in the same product, likeliest first.

        Scoring k rows together costs head(k) - head(1) more than ``node`` alone, and
        saves one separate product, head(1), for each row the walk then reaches. A row
        is reached with the product of the drafts' estimated P(accepted | parent) on
        its path, so rows are taken best-first over the whole subtree, siblings
        included: the walk may leave the likeliest chain, and on a CPU where a few
        rows cost what one does, a second product for the branch it takes costs a
        quarter of a small model's step. The k with the largest expected saving wins
        (1: ``node`` alone).
        """
        costs, children, prob = self.costs, self.layout.children, self.trie.prob
        if costs is None or not costs.head_times:
            return [node]
        one, cap = costs.head(1), costs.head_rows[-1]
        rows, heap, saved, best_k, best_gain = [node], [], 0.0, 1, 0.0
        for c in children[node]:
            if c not in self._logits:
                heapq.heappush(heap, (-prob[c], c))
        while heap and len(rows) < cap:
            neg_reach, cur = heapq.heappop(heap)
            rows.append(cur)
            saved -= neg_reach * one
            gain = saved - (costs.head(len(rows)) - one)
            if gain > best_gain:
                best_k, best_gain = len(rows), gain
            for c in children[cur]:
                if c not in self._logits:
                    heapq.heappush(heap, (neg_reach * prob[c], c))
        return rows[:best_k]

    def logits(self, node: int) -> torch.Tensor:
        """[V] the target's (processed) logits after ``node``."""
        out = self._logits.get(node)
        if out is None:
            rows = self.rows_from(node)
            h = self.hidden[node : node + 1] if len(rows) == 1 else self.hidden[rows]
            raw = self.adapter.logits(h, transposed=self.costs is not None and self.costs.head_transposed)
            for i, r in enumerate(rows):
                self._logits[r] = self._processed(r, raw[i : i + 1])
            out = self._logits[node]
        return out

    def _processed(self, node: int, logits: torch.Tensor) -> torch.Tensor:
        run = self.run
        if run.processor is not None:  # this node's own prefix: committed tokens + its path
            path = [self.trie.tokens[i] for i in self.layout.path(node)]
            logits = run.processor(torch.tensor([run.tokens + path], device=logits.device), logits)
        return logits[0]

    def token(self, node: int) -> int:
        """Greedy: the argmax. Coupled: the seeded Gumbel-max sample at the next position."""
        run = self.run
        if run.params.greedy:
            return int(self.logits(node).argmax())
        position = len(run.tokens) + self.layout.depths[node]
        return int(coupled_sample(self.logits(node), run.params, run.noise.at(position)))

    def probs(self, node: int) -> torch.Tensor:
        return target_probs(self.logits(node), self.run.params)
