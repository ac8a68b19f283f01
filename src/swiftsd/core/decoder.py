"""The decode loop: plan, draft, build the tree, verify, accept, commit.

One loop serves greedy and sampling, speculative and plain steps (a step whose
trie is the root alone is plain decoding). Drafts come from the drafters in
``drafters/`` (the layer-skipped model, prompt lookup, a stream suffix index)
into one trie; the :class:`~swiftsd.core.planner.Planner` picks, per step and by
the measured cost model, whether the model draft runs and how many nodes to
verify. It yields the tokens of every step for streaming. A request is parsed
once into a :class:`~swiftsd.core.request.Request`, its state lives in a
:class:`~swiftsd.core.run.Run`, and the learned state's round trip is composed
from each component's own ``state_dict`` (``learned.py``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generator

import torch

from ..config import SamplingParams, SwiftConfig
from ..drafters import DraftContext, DraftRequest, DraftTrie, ModelDrafter, make_drafters
from ..drafters.layerskip import draft_head, matchness
from ..engine.cache import SlotKVCache
from ..engine.cost import CostModel
from ..engine.cost_cache import CostSource, QuantDrafts
from ..engine.models import DraftHead, get_adapter
from ..engine.quant import QuantizedWeights
from ..engine.skipset import SkipSet
from ..engine.tree import TreeLayout, build_tree
from ..engine.verify import PositionNoise, coupled_sample, greedy_verify, multi_candidate_speculative_sampling, \
    target_probs
from ..hf.options import GenerateArgs
from ..optimize import SkipOptimizer
from ..stats import GenerationStats
from .draft_space import DraftSpace
from .draft_weights import FULL, DraftWeights
from .forecast import StepPlan
from .learned import TokenCounts, compose, restore
from .planner import Planner, StepOutcome
from .prefill import prefill_chunks
from .request import ModelFacts, Request, parse_skip
from .run import GenerationResult, GenerationStream, Run, StepClock, TargetScores

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..hf.custom_generate import CustomGenerate


class SwiftDecoder:
    """SWIFT self-speculative decoding for a stock Hugging Face causal LM.

    ``SwiftDecoder(model, tokenizer, skip_set=..., **config)``; config keys are the
    fields of :class:`SwiftConfig` plus ``method`` ("swiftsd", or "swift-paper" for
    the paper's algorithm); ``optimizer`` takes a dict of :class:`OptimizerConfig`
    fields, or ``False``; ``drafters`` a subset of ("layerskip", "lookup", "suffix").
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
        self.facts = ModelFacts.of(model, tokenizer, self.adapter)
        quantized_only = self.config.draft_precision in ("int8", "int4")  # a quantized draft may skip nothing
        self.skip_set = (parse_skip(skip_set, self.num_layers) if skip_set is not None
                         else SkipSet() if quantized_only else SkipSet.uniform(self.num_layers))
        # the quantized draft's packed weights, built on first use of a precision (never on the model)
        self.draft_weights = DraftWeights(model, self.config.quant_group, self.config.cost_cache)
        quant = QuantDrafts(tuple(p for p in self.config.precisions if p != FULL), self.config.quant_group,
                            self.draft_weights.get, self.config.quant_draft_vocab)
        self.cost_source = CostSource(self.adapter, self.config.draft_vocab, self._cost_dir, quant)
        self.drafters = make_drafters(self.config)
        self.model_drafter: ModelDrafter | None = self.drafters.get("layerskip")  # type: ignore[assignment]
        self.optimizer: SkipOptimizer | None = None
        if self.config.optimizer.enabled and self.model_drafter is not None:
            self.optimizer = SkipOptimizer(self.num_layers, self.config.optimizer, start=self.skip_set,
                                           costs=self.cost_source, max_draft=self.config.max_draft,
                                           precision=self.config.draft_precision.replace("auto", FULL))
        self.space = DraftSpace(self.config, self.optimizer, self.model_drafter, self.skip_set)
        self.planner = Planner(self.config, self.cost_source)
        self.token_counts = TokenCounts(self.adapter.vocab_size)  # orders the draft vocabulary

    # -- public API ------------------------------------------------------------
    def generate(self, input_ids: Any, **kwargs: Any) -> GenerationResult:
        """Generate like ``model.generate`` (greedy when temperature is 0), only faster: :meth:`stream`, drained."""
        stream = self.stream(input_ids, **kwargs)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, input_ids: Any, **kwargs: Any) -> GenerationStream:
        """Yield the token ids each step accepts; ``.result`` is set at the end. Validates eagerly.

        ``input_ids``: text, ids, a tensor or a tokenizer's output. The keyword arguments are
        :class:`~swiftsd.hf.options.GenerateArgs` (max_new_tokens, temperature, top_p, top_k,
        eos_token_id, seed, skip_set, logits_processor, stop_strings, min_new_tokens,
        generation_config, stopping_criteria), as ``model.generate`` takes them.
        """
        return self.decode(Request.build(self.facts, input_ids, GenerateArgs.from_kwargs(kwargs)))

    def decode(self, request: Request) -> GenerationStream:
        """Decode a request already built with :meth:`Request.build` (``self.facts``).

        The request's state (cache, clock) is built at the first iteration, not here: a server
        creates the stream before queueing it, and the wait in the queue is neither prefill time
        nor memory held."""
        return GenerationStream(self._decode(request))

    @property
    def custom_generate(self) -> "CustomGenerate":
        """``model.generate(**inputs, custom_generate=dec.custom_generate)``: HF prepares, this decoder decodes."""
        from ..hf.custom_generate import CustomGenerate

        return CustomGenerate(self)

    @property
    def costs(self) -> CostModel:
        """The device's measured cost model: read from the on-disk cache, else measured (seconds) once."""
        return self.cost_source.get()

    @costs.setter
    def costs(self, costs: CostModel) -> None:
        """Plan with ``costs`` instead (one measured elsewhere, or a synthetic one in a study)."""
        self.cost_source.set(costs)

    @property
    def measured_costs(self) -> CostModel | None:
        """The cost model if already measured or loaded; reading it measures nothing."""
        return self.cost_source.peek()

    def plan(self, trie: DraftTrie, context: int, remaining: int, skip_override: SkipSet | None = None) -> StepPlan:
        """What the planner decides for a step over ``trie`` after ``context`` committed tokens with
        ``remaining`` to generate: the skip set the draft would use, and whether it runs."""
        depth = max(0, min(self.config.max_draft, remaining - 1))
        if self.model_drafter is None or depth == 0:
            return self.planner.plan(trie, None, 0.0, depth, context)
        return self.planner.plan(trie, None, 0.0, depth, context, self.space.candidates(skip_override))

    @property
    def precision(self) -> str:
        """The precision the optimiser scores skip sets at: the forced one, else (``auto``) the one the
        cost model prefers (``core/draft_space.py``); the planner also weighs the others' defaults."""
        return self.space.precision

    def draft_head(self, prompt: list[int], eos: set[int], quantized: bool = False) -> DraftHead | None:
        """The draft's vocabulary for a request (None: the full head; see ``drafters.layerskip.draft_head``);
        ``quantized``: a quantized draft's (``quant_draft_vocab``)."""
        if self.model_drafter is None:
            return None
        size = self.config.quant_draft_vocab if quantized else self.config.draft_vocab
        return draft_head(self.adapter, self.token_counts.counts, prompt, eos, size)

    def matchness(self, skip: SkipSet, tokens: list[int], prompt_len: int, cache: SlotKVCache,
                  window: int, head: DraftHead | None = None, weights: QuantizedWeights | None = None,
                  run: Run | None = None) -> float:
        """The paper's matchness of ``skip`` on this request's first ``window`` tokens (layerskip.py),
        with ``weights`` (made for ``head``) for a quantized draft; ``run``: under its sampler's noise."""
        params, noise = (run.draft_params, run.noise) if run is not None else (None, None)
        return matchness(self.adapter, skip, tokens, prompt_len, cache, window, head, weights, params, noise)

    def reset(self) -> None:
        """Forget what the stream taught: the optimiser's search, every drafter's state, the planner's, token counts."""
        if self.optimizer is not None:
            self.optimizer.reset()
        for d in self.drafters.values():
            d.reset()
        self.token_counts.reset()
        self.planner.reset()

    def state_dict(self) -> dict[str, Any]:
        """Everything the decoder learned from its stream, as plain JSON-able data (see learned.py)."""
        return compose(self.num_layers, self.adapter.vocab_size, self._learners(), self.drafters)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly; anything else is refused and changes nothing."""
        restore(state, self.num_layers, self.adapter.vocab_size, self._learners(), self.drafters)
        self.space.restored()

    # -- the loop ------------------------------------------------------------------
    def _decode(self, request: Request) -> Generator[list[int], None, GenerationResult]:
        run = self._start(request)  # the request's clock starts here, when decoding does
        first = yield from self._prefill(run)  # 1. the full model reads the prompt in chunks ([] between
        yield first  # them: a consumer may stop there) and picks the first token
        while not run.done:
            clock = self._optimise(run)  # 2. while searching, score one proposed skip set by matchness
            trie = self._draft_free(run)  # 3. lookup and suffix drafts: no model forward
            plan = self.plan(trie, len(run.tokens), run.remaining, run.skip_override)  # 4. draft? by cost
            self._draft_model(run, plan, trie, clock)  # 5. the layer-skip draft adds its tree to the same trie
            trie, layout = self._tree(run, trie, clock)  # 6. keep the nodes that pay; memoised layout
            target = self._verify(run, trie, layout)  # 7. one full-model forward over the tree
            accepted, bonus = self._accept(run, trie, layout, target)  # 8. longest agreeing path + bonus
            yield self._commit(run, trie, layout, plan, clock, accepted, bonus)  # 9. keep its KV, emit its tokens
        return self._finish(run)

    def _start(self, r: Request) -> Run:
        cfg, ad, ids = self.config, self.adapter, list(r.ids)
        window = self.optimizer.config.context_window if self.optimizer is not None else 0
        draft_slots = 1 + cfg.max_draft * max(cfg.frontier, cfg.max_width)
        cache = SlotKVCache(ad.num_layers, len(ids) + r.max_new_tokens + draft_slots + cfg.max_nodes + window + 2)
        gen = torch.Generator(device=ad.device)
        gen.manual_seed(r.seed)
        noise = None
        if not r.params.greedy and cfg.sampler == "coupled":
            noise = PositionNoise(r.seed, ad.vocab_size, ad.device)
        target = SamplingParams(temperature=1.0) if r.processor is not None and not r.params.greedy else r.params
        draft_req = DraftRequest(tokens=ids, prompt_len=len(ids), eos=r.eos)
        quant_head = self.draft_head(ids, set(r.eos), True) if self.config.precisions != (FULL,) else None
        return Run(draft_req=draft_req, cache=cache, head=self.draft_head(ids, set(r.eos)), quant_head=quant_head,
                   params=target,
                   draft_params=r.params, generator=gen, noise=noise, eos=set(r.eos), max_new=r.max_new_tokens,
                   skip_override=r.skip, processor=r.processor, stop=r.stop,
                   stats=GenerationStats(prompt_tokens=len(ids)), t_start=time.perf_counter(),
                   probe=self.planner.new_probe())

    def _prefill(self, run: Run) -> Generator[list[int], None, list[int]]:
        dev, P = self.adapter.device, len(run.tokens)
        logits = yield from prefill_chunks(self.adapter, run.cache, run.tokens, self.config.prefill_chunk)
        if run.processor is not None:
            logits = run.processor(torch.tensor([run.tokens], device=dev), logits)
        first = self._pick(logits[0], run, P)
        run.tokens.append(first)  # committed; the cache holds all but the last
        run.stats.time_prefill = time.perf_counter() - run.t_start
        run.done = first in run.eos or run.max_new == 1
        run.done = run.done or (run.stop is not None and run.stop(run.tokens, 1) is not None)
        return [first]

    def _optimise(self, run: Run) -> StepClock:
        t0 = time.perf_counter()
        opt = self.optimizer if run.skip_override is None else None
        n, P = len(run.tokens), run.draft_req.prompt_len
        if opt is not None and not self.space.settled and n - P > 1:
            self.space.settle(self.costs)  # auto: the precision to search at, once the costs are known
        if opt is not None and opt.wants_proposal(n - P) and self.planner.search_pays(self.precision):
            cand = opt.propose()  # scored at the precision the draft runs at
            head = run.head_for(self.precision)
            weights = self.draft_weights.for_request(run.weights, self.precision, head)
            opt.observe(cand, self.matchness(cand, run.tokens, P, run.cache, opt.config.context_window, head,
                                             weights, run))
            self.planner.searched(time.perf_counter() - t0)
        clock = StepClock(start=t0, drafting=time.perf_counter())
        run.stats.time_optimize += clock.drafting - t0
        return clock

    def _draft_free(self, run: Run) -> DraftTrie:
        trie = DraftTrie.rooted(run.tokens[-1])
        run.draft_req.max_depth = min(self.config.max_draft, run.remaining - 1)
        if run.draft_req.max_depth > 0:
            for d in self.drafters.values():
                if d.free:
                    d.propose(run.draft_req, trie, 4 * self.config.max_nodes)  # type: ignore[call-arg]
        return trie

    def _draft_model(self, run: Run, plan: StepPlan, trie: DraftTrie, clock: StepClock) -> None:
        t_free = time.perf_counter()
        if plan.run_model and self.model_drafter is not None:
            ctx = self._draft_context(run, plan)
            # the rejection sampler keeps every sampled node: the budget is the tree's size
            budget = self.config.max_nodes - len(trie) if ctx.rejection else 4 * self.config.max_nodes
            clock.forwards = self.model_drafter.propose(run.draft_req, trie, budget, ctx)
        clock.verifying = time.perf_counter()
        clock.model_draft = clock.verifying - t_free if plan.run_model else 0.0
        run.stats.time_draft += clock.verifying - clock.drafting

    def _draft_context(self, run: Run, plan: StepPlan) -> DraftContext:
        cfg = self.config
        head = run.head_for(plan.precision)
        weights = self.draft_weights.for_request(run.weights, plan.precision, head)
        frontier = (cfg.quant_frontier if weights is not None else cfg.frontier) if cfg.use_tree else 1
        return DraftContext(
            adapter=self.adapter, cache=run.cache, skip=plan.skip, head=head, params=run.draft_params,
            generator=run.generator, noise=run.noise, rejection=not run.params.greedy and run.noise is None,
            max_depth=plan.max_depth, frontier=frontier, min_mass=plan.min_mass,
            widths=(cfg.tree_thresholds, cfg.widths_for(run.params.greedy)),
            stop_threshold=cfg.stop_threshold if weights is None else cfg.quant_stop_threshold,
            weights=weights)

    def _tree(self, run: Run, trie: DraftTrie, clock: StepClock) -> tuple[DraftTrie, TreeLayout]:
        """Keep the node count that maximises expected tokens per time; the layout is memoised by shape."""
        n, clock.probing = self.planner.keep_nodes(trie, len(run.tokens), clock.model_draft, run.probe)
        trie = trie.select(n)
        return trie, build_tree(tuple(trie.parents))

    def _verify(self, run: Run, trie: DraftTrie, layout: TreeLayout) -> TargetScores:
        """The body of the full model over every node; the LM head only for nodes the walk visits."""
        ad, dev, n = self.adapter, self.adapter.device, len(run.tokens)
        hidden = ad.forward(torch.tensor(trie.tokens, device=dev), (n - 1) + layout.depth.to(dev), cache=run.cache,
                            slot_start=n - 1, visible_prefix=n - 1, block_mask=layout.mask.to(dev),
                            logits_rows="hidden")
        return TargetScores(self.adapter, run, trie, layout, hidden, self.measured_costs)

    def _accept(self, run: Run, trie: DraftTrie, layout: TreeLayout, target: TargetScores
                ) -> tuple[list[int], int]:
        """Greedy: longest path equal to the target's argmax. Coupled: to its seeded Gumbel-max
        sample. Rejection: multi-candidate speculative sampling over the mixed tree."""
        if run.params.greedy or run.noise is not None:
            accepted, bonus = greedy_verify(trie.tokens, target.token, layout)
            if run.noise is not None:
                run.noise.forget_before(len(run.tokens))
            return accepted, bonus
        return multi_candidate_speculative_sampling(trie.tokens, target.probs, trie.q, trie.sampled, layout,
                                                    run.generator)

    def _commit(self, run: Run, trie: DraftTrie, layout: TreeLayout, plan: StepPlan, clock: StepClock,
                accepted: list[int], bonus: int) -> list[int]:
        n = len(run.tokens)
        run.cache.keep(n - 1, [0] + accepted)
        new = [trie.tokens[i] for i in accepted] + [bonus]
        for i, t in enumerate(new):
            if t in run.eos:
                new, run.done = new[: i + 1], True
                break
        new = new[: run.remaining]
        if run.stop is not None and (keep := run.stop(run.tokens + new, len(new))) is not None:
            new, run.done = new[:keep], True
        run.done = run.done or len(new) == run.remaining
        t3 = time.perf_counter()
        run.stats.time_verify += t3 - clock.verifying
        for d in self.drafters.values():
            d.observe(run.draft_req, trie, accepted)
        self._record(run, trie, layout, plan, clock, accepted, t3 - clock.drafting)
        run.tokens.extend(new)
        return new

    def _record(self, run: Run, trie: DraftTrie, layout: TreeLayout, plan: StepPlan, clock: StepClock,
                accepted: list[int], step_time: float) -> None:
        stats = run.stats
        stats.record_tree(trie.sources, layout.size, layout.max_depth, accepted)
        model_accepted = sum(1 for a in accepted if "layerskip" in trie.sources[a])
        stats.record_model_draft(plan.precision if plan.run_model else None, clock.forwards, model_accepted)
        outcome = StepOutcome(len(accepted), model_accepted, layout.size, len(run.tokens), step_time)
        self.planner.record(plan, outcome, run.probe, clock.probing)
        opt = self.optimizer if run.skip_override is None else None
        if opt is not None:  # the optimiser learns about the layer-skip draft at its precision alone
            other = plan.run_model and plan.precision != self.precision
            opt.record_step(stats, accepted=model_accepted, drafted=0 if other else clock.forwards,
                            step_time=None if other else step_time)

    def _finish(self, run: Run) -> GenerationResult:
        stats, P = run.stats, run.draft_req.prompt_len
        stats.new_tokens = len(run.tokens) - P
        self.token_counts.add(run.tokens[P:])
        for d in self.drafters.values():
            d.end_request(run.draft_req)
        stats.wall_time = time.perf_counter() - run.t_start
        stats.time_other = stats.wall_time - (stats.time_prefill + stats.time_draft + stats.time_verify
                                              + stats.time_optimize)
        last = self.space.skip_for(run.skip_override, self.precision) if self.model_drafter is not None else None
        stats.skip_set = last.to_dict() if last is not None else None
        opt = self.optimizer if run.skip_override is None else None
        stats.optimizer = opt.status() if opt is not None else None
        if stats.optimizer is not None:
            stats.optimizer.update(self.planner.search_note())  # why the search did not run, if it did not
        seq = torch.tensor([run.tokens], dtype=torch.long, device=self.adapter.device)
        return GenerationResult(sequences=seq, stats=stats)

    # -- pieces of the loop ---------------------------------------------------------
    def _pick(self, logits: torch.Tensor, run: Run, position: int) -> int:
        if run.params.greedy:
            return int(logits.argmax())
        if run.noise is not None:
            return int(coupled_sample(logits, run.params, run.noise.at(position)))
        return int(torch.multinomial(target_probs(logits, run.params), 1, generator=run.generator))

    def _cost_dir(self) -> "Path | None":
        if not self.config.cost_cache:
            return None
        from ..loading import cache_dir

        return cache_dir() / "costs"

    def _learners(self) -> dict[str, Any]:
        """The components whose state the decoder composes, by their key in :meth:`state_dict`."""
        return {"optimizer": self.optimizer, "costs": self.cost_source, "token_counts": self.token_counts,
                "planner": self.planner}


# ``generate`` and ``stream`` show GenerateArgs' fields, the one copy of their signature.
GenerateArgs.bind(SwiftDecoder, {"generate": GenerationResult, "stream": GenerationStream})
