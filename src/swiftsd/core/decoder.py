"""The decode loop: plan, draft, build the tree, verify, accept, commit.

One loop serves greedy and sampling, speculative and plain steps (a step whose
trie is the root alone is plain decoding). Drafts come from the drafters in
``drafters/`` (the layer-skipped model, prompt lookup, a stream suffix index)
into one trie; the planner picks, per step and by the measured cost model,
which drafters run and how many nodes to verify. It yields the tokens of every
step for streaming. A request's arguments are parsed in ``request.py``, its state
lives in ``run.py``, the learned state's round trip in ``learned.py``, the step
choice in ``planner.py``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generator, Sequence

import torch

from ..config import SamplingParams, SwiftConfig
from ..drafters import DraftTrie, Request, make_drafters
from ..drafters.layerskip import LayerSkipDrafter, ModelStep, draft_head, matchness
from ..engine.cache import SlotKVCache
from ..engine.cost import CostModel, cached_costs
from ..engine.models import DraftHead, get_adapter
from ..engine.skipset import SkipSet
from ..engine.tree import TreeLayout, build_tree
from ..engine.verify import PositionNoise, coupled_sample, greedy_verify, multi_candidate_speculative_sampling, \
    target_probs
from ..optimize import SkipOptimizer
from .learned import decoder_state_dict, load_decoder_state
from .prefill import prefill_chunks
from .planner import (SearchBudget, StepPlan, WallClockBound, choose_node_count, layerskip_ceiling, plan_layerskip,
                      relative_verify)
from .run import GenerationResult, GenerationStream, LogitsProcessor, RunState, TargetScores
from .request import RequestArgs, parse_request, parse_skip
from ..stats import GenerationStats

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

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
        self.skip_set = (parse_skip(skip_set, self.num_layers) if skip_set is not None
                         else SkipSet.uniform(self.num_layers))
        self._costs: CostModel | None = None
        self._ceiling: tuple[CostModel, float] | None = None  # layerskip_ceiling of that cost model
        self.drafters = make_drafters(self.config)
        self.optimizer: SkipOptimizer | None = None
        if self.config.optimizer.enabled and "layerskip" in self.drafters:
            self.optimizer = SkipOptimizer(self.num_layers, self.config.optimizer, start=self.skip_set,
                                           costs=lambda: self.costs, max_draft=self.config.max_draft)
        self._wall, self._budget = WallClockBound(), SearchBudget()
        self.token_counts = torch.zeros(self.adapter.vocab_size, dtype=torch.long)  # the draft vocabulary's order

    # -- public API ------------------------------------------------------------
    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        skip_set: SkipSet | dict | str | None = None,
        logits_processor: LogitsProcessor | None = None,
        stop_strings: str | Sequence[str] | None = None,
        min_new_tokens: int = 0,
        generation_config: "GenerationConfig | None" = None,
        stopping_criteria: "Sequence[StoppingCriteria] | None" = None,
    ) -> GenerationResult:
        """Generate like ``model.generate`` (greedy when temperature is 0), only faster."""
        stream = self.stream(input_ids, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, skip_set,
                             logits_processor, stop_strings, min_new_tokens, generation_config, stopping_criteria)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self,
        input_ids: Any,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        skip_set: SkipSet | dict | str | None = None,
        logits_processor: LogitsProcessor | None = None,
        stop_strings: str | Sequence[str] | None = None,
        min_new_tokens: int = 0,
        generation_config: "GenerationConfig | None" = None,
        stopping_criteria: "Sequence[StoppingCriteria] | None" = None,
    ) -> GenerationStream:
        """Like :meth:`generate`, yielding the token ids each step accepts. Validates eagerly.

        ``logits_processor``: an HF-style ``proc(input_ids [k, L], scores [k, V])`` applied
        to the target's logits of every verified node with that node's own prefix. It
        then does the warping: the decoder samples from softmax(processed scores) when
        temperature > 0 (temperature/top-k/top-p still shape the drafts).
        """
        a = parse_request(self, input_ids, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, skip_set,
                          logits_processor, stop_strings, min_new_tokens, generation_config, stopping_criteria)
        return GenerationStream(self._decode(self._start(a)))

    @property
    def custom_generate(self) -> "CustomGenerate":
        """``model.generate(**inputs, custom_generate=dec.custom_generate)``: HF prepares, this decoder decodes."""
        from ..hf.custom_generate import CustomGenerate

        return CustomGenerate(self)

    @property
    def costs(self) -> CostModel:
        """The device's measured cost model: read from the on-disk cache, else measured (seconds) once."""
        if self._costs is None:
            directory = None
            if self.config.cost_cache:
                from ..loading import cache_dir

                directory = cache_dir() / "costs"
            self._costs = cached_costs(self.adapter, self.config.draft_vocab, directory)
        return self._costs

    def reset(self) -> None:
        """Forget what the stream taught: the optimiser's search, every drafter's state, token counts."""
        if self.optimizer is not None:
            self.optimizer.reset()
        for d in self.drafters.values():
            d.reset()
        self.token_counts.zero_()
        self._wall, self._budget = WallClockBound(), SearchBudget()

    def state_dict(self) -> dict[str, Any]:
        """Everything the decoder learned from its stream, as plain JSON-able data (see learned.py)."""
        return decoder_state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly; anything else is refused and changes nothing."""
        load_decoder_state(self, state)

    # -- the loop ------------------------------------------------------------------
    def _decode(self, run: RunState) -> Generator[list[int], None, GenerationResult]:
        first = yield from self._prefill(run)  # 1. the full model reads the prompt in chunks ([] between
        yield first  # them: a consumer may stop there) and picks the first token
        while not run.done:
            self._optimise(run)  # 2. while searching, score one proposed skip set by matchness
            trie = self._draft_free(run)  # 3. lookup and suffix drafts: no model forward
            plan = self._plan(run, trie)  # 4. run the layer-skip draft? by cost and acceptance counts
            self._draft_model(run, plan, trie)  # 5. the layer-skip draft adds its tree to the same trie
            trie, layout = self._tree(run, trie)  # 6. keep the nodes that pay; memoised layout
            target = self._verify(run, trie, layout)  # 7. one full-model forward over the tree
            accepted, bonus = self._accept(run, trie, layout, target)  # 8. longest agreeing path + bonus
            yield self._commit(run, trie, layout, plan, accepted, bonus)  # 9. keep its KV, emit its tokens
        return self._finish(run)

    def _start(self, a: RequestArgs) -> RunState:
        cfg, ad = self.config, self.adapter
        ids, max_new, params, eos, seed, processor = a.ids, a.max_new_tokens, a.params, set(a.eos), a.seed, a.processor
        window = self.optimizer.config.context_window if self.optimizer is not None else 0
        draft_slots = 1 + cfg.max_draft * max(cfg.frontier, cfg.max_width)
        cache = SlotKVCache(ad.num_layers, len(ids) + max_new + draft_slots + cfg.max_nodes + window + 2)
        gen = torch.Generator(device=ad.device)
        gen.manual_seed(seed)
        noise = None
        if not params.greedy and cfg.sampler == "coupled":
            noise = PositionNoise(seed, ad.vocab_size, ad.device)
        target = SamplingParams(temperature=1.0) if processor is not None and not params.greedy else params
        req = Request(tokens=list(ids), prompt_len=len(ids), eos=frozenset(eos))
        return RunState(req=req, cache=cache, head=self._draft_head(ids, eos), params=target, draft_params=params,
                    generator=gen, noise=noise, eos=eos, max_new=max_new, skip_override=a.skip, processor=processor,
                    stop=a.stop, stats=GenerationStats(prompt_tokens=len(ids)), t_start=time.perf_counter())

    def _prefill(self, run: RunState) -> Generator[list[int], None, list[int]]:
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

    def _optimise(self, run: RunState) -> None:
        t0 = time.perf_counter()
        opt = self.optimizer if run.skip_override is None else None
        n, P = len(run.tokens), run.req.prompt_len
        if opt is not None and opt.wants_proposal(n - P) and self._search_can_pay():
            cand = opt.propose()
            opt.observe(cand, self.matchness(cand, run.tokens, P, run.cache, opt.config.context_window, run.head))
            self._budget.spend((time.perf_counter() - t0) / self.costs.full_step)
        run.clock["t0"], run.clock["t1"] = t0, time.perf_counter()
        run.stats.time_optimize += run.clock["t1"] - t0

    def _search_can_pay(self) -> bool:
        """Could any skip set pay here, by the cost model at a best-case acceptance? (planner and
        ``search_gate`` only: the paper's loop, and ``swiftsd tune``, always search.)"""
        if not (self.config.planner and self.config.search_gate):
            return True
        costs, cfg = self.costs, self.config
        if self._ceiling is None or self._ceiling[0] is not costs:
            ratio = max(cfg.optimizer.ratio_range[1], cfg.optimizer.skip_ratio)
            self._ceiling = (costs, layerskip_ceiling(costs, ratio, cfg.frontier, cfg.max_draft).rate)
        return self._budget.open() and self._wall.bound(self._ceiling[1]) > 1.0

    def _current_skip(self, run: RunState) -> SkipSet | None:
        if run.skip_override is not None:
            return run.skip_override
        if self.optimizer is None:
            return self.skip_set
        if not self.config.planner:
            return self.optimizer.current()  # the paper's loop: the optimiser alone decides
        best = self.optimizer.best()[0]
        return None if best.is_empty() else best

    def _draft_free(self, run: RunState) -> DraftTrie:
        trie = DraftTrie.rooted(run.tokens[-1])
        run.req.max_depth = min(self.config.max_draft, run.remaining - 1)
        if run.req.max_depth > 0:
            for d in self.drafters.values():
                if d.free:
                    d.propose(run.req, trie, 4 * self.config.max_nodes)
        return trie

    def _plan(self, run: RunState, trie: DraftTrie) -> StepPlan:
        """Run the layer-skip draft only when its forecast beats what the free drafts offer (planner.py)."""
        cfg = self.config
        ls: LayerSkipDrafter | None = self.drafters.get("layerskip")  # type: ignore[assignment]
        skip = self._current_skip(run) if ls is not None else None
        depth = max(0, min(cfg.max_draft, run.remaining - 1))
        if ls is None or skip is None or depth == 0:
            return StepPlan(False, None, depth, 0.0)
        ls.use_skip(skip)
        if not cfg.planner:
            return StepPlan(True, skip, depth, 0.0)
        prior = 0.5
        opt = self.optimizer if run.skip_override is None else None
        if opt is not None and opt.best()[1] is not None:
            prior = opt.acceptance(opt.best()[1])
        return plan_layerskip(self.costs.at_context(len(run.tokens)), trie, skip, ls.acceptance(prior), cfg.frontier,
                              depth, cfg.max_nodes, self._wall)

    def _draft_model(self, run: RunState, plan: StepPlan, trie: DraftTrie) -> None:
        cfg = self.config
        t_free = time.perf_counter()
        if plan.run_model:
            rejection = not run.params.greedy and run.noise is None
            run.req.scratch["model_step"] = ModelStep(
                adapter=self.adapter, cache=run.cache, skip=plan.skip, head=run.head, params=run.draft_params,
                generator=run.generator, noise=run.noise, rejection=rejection,
                max_depth=plan.max_depth, frontier=cfg.frontier if cfg.use_tree else 1, min_mass=plan.min_mass,
                widths=(cfg.tree_thresholds, cfg.widths_for(run.params.greedy)), stop_threshold=cfg.stop_threshold)
            # the rejection sampler keeps every sampled node: the budget is the tree's size
            budget = cfg.max_nodes - len(trie) if rejection else 4 * cfg.max_nodes
            self.drafters["layerskip"].propose(run.req, trie, budget)
        run.clock["t2"] = time.perf_counter()
        run.clock["model_draft"] = run.clock["t2"] - t_free if plan.run_model else 0.0
        run.stats.time_draft += run.clock["t2"] - run.clock["t1"]

    def _tree(self, run: RunState, trie: DraftTrie) -> tuple[DraftTrie, TreeLayout]:
        """Keep the node count that maximises expected tokens per time; the layout is memoised by shape."""
        cfg = self.config
        max_nodes = min(cfg.max_nodes, len(trie))
        if cfg.planner and len(trie) > 1:
            costs = self.costs.at_context(len(run.tokens))
            spent = run.clock["model_draft"] / costs.full_step if run.clock["model_draft"] else 0.0
            n, probing = choose_node_count(trie, costs, spent, max_nodes, run.probe if cfg.copy_probe else None)
            if probing:
                run.req.scratch["probe"] = True
            trie = trie.select(max(n, sum(trie.keep)))
        elif len(trie) > max_nodes:
            trie = trie.select(max_nodes)
        return trie, build_tree(tuple(trie.parents))

    def _verify(self, run: RunState, trie: DraftTrie, layout: TreeLayout) -> TargetScores:
        """The body of the full model over every node; the LM head only for nodes the walk visits."""
        ad, dev, n = self.adapter, self.adapter.device, len(run.tokens)
        hidden = ad.forward(torch.tensor(trie.tokens, device=dev), (n - 1) + layout.depth.to(dev), cache=run.cache, slot_start=n - 1, visible_prefix=n - 1, block_mask=layout.mask.to(dev), logits_rows="hidden")
        return TargetScores(self.adapter, run, trie, layout, hidden, self._costs)

    def _accept(self, run: RunState, trie: DraftTrie, layout: TreeLayout, target: TargetScores
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

    def _commit(self, run: RunState, trie: DraftTrie, layout: TreeLayout, plan: StepPlan, accepted: list[int],
                bonus: int) -> list[int]:
        n, stats = len(run.tokens), run.stats
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
        stats.time_verify += t3 - run.clock["t2"]
        for d in self.drafters.values():
            d.observe(run.req, trie, accepted)
        self._record(run, trie, layout, plan, accepted, t3 - run.clock["t1"])
        run.tokens.extend(new)
        return new

    def _record(self, run: RunState, trie: DraftTrie, layout: TreeLayout, plan: StepPlan, accepted: list[int],
                step_time: float) -> None:
        stats, costs = run.stats, self.costs.at_context(len(run.tokens))
        stats.record_tree(trie.sources, layout.size, layout.max_depth, accepted)
        forwards = run.req.scratch.pop("layerskip_forwards", 0) if plan.run_model else 0
        model_accepted = sum(1 for a in accepted if "layerskip" in trie.sources[a])
        if run.req.scratch.pop("probe", False):
            run.probe.result(len(accepted) - model_accepted, relative_verify(costs, layout.size))
        stats.draft_forwards.append(forwards)
        stats.layerskip_accepted.append(model_accepted)
        if plan.run_model and plan.priced:  # the search's account: what this draft step earned
            self._budget.earn(len(accepted) + 1, plan.free_rate, plan.priced * self._wall.correction())
        self._wall.record(plan.run_model, step_time, plan.priced if plan.run_model else
                          relative_verify(costs, layout.size) if self.config.planner else 0.0)
        opt = self.optimizer if run.skip_override is None else None
        if opt is not None:  # the optimiser learns about the layer-skip draft alone
            opt.record_step(stats, accepted=model_accepted, drafted=forwards, step_time=step_time)

    def _finish(self, run: RunState) -> GenerationResult:
        stats, P = run.stats, run.req.prompt_len
        stats.new_tokens = len(run.tokens) - P
        self.token_counts += torch.bincount(torch.tensor(run.tokens[P:]), minlength=self.token_counts.numel())
        for d in self.drafters.values():
            d.end_request(run.req)
        stats.wall_time = time.perf_counter() - run.t_start
        stats.time_other = stats.wall_time - (stats.time_prefill + stats.time_draft + stats.time_verify
                                              + stats.time_optimize)
        last = self._current_skip(run) if "layerskip" in self.drafters else None
        stats.skip_set = last.to_dict() if last is not None else None
        opt = self.optimizer if run.skip_override is None else None
        stats.optimizer = opt.status() if opt is not None else None
        if stats.optimizer is not None and self._ceiling is not None and self._ceiling[1] <= 1.0:
            stats.optimizer["layerskip_ceiling"] = round(self._ceiling[1], 3)  # the search was skipped
        elif stats.optimizer is not None and self._ceiling is not None and not self._budget.open():
            stats.optimizer["search_budget"] = round(self._budget.balance, 2)  # spent: no search
        seq = torch.tensor([run.tokens], dtype=torch.long, device=self.adapter.device)
        return GenerationResult(sequences=seq, stats=stats)

    # -- pieces of the loop ---------------------------------------------------------
    def _pick(self, logits: torch.Tensor, run: RunState, position: int) -> int:
        if run.params.greedy:
            return int(logits.argmax())
        if run.noise is not None:
            return int(coupled_sample(logits, run.params, run.noise.at(position)))
        return int(torch.multinomial(target_probs(logits, run.params), 1, generator=run.generator))

    def matchness(self, skip: SkipSet, tokens: list[int], prompt_len: int, cache: SlotKVCache,
                  window: int, head: DraftHead | None = None) -> float:
        """The paper's matchness of ``skip`` on this request's first ``window`` tokens (layerskip.py)."""
        return matchness(self.adapter, skip, tokens, prompt_len, cache, window, head)

    def _draft_head(self, prompt: list[int], eos: set[int]) -> DraftHead | None:
        if "layerskip" not in self.drafters:
            return None
        return draft_head(self.adapter, self.token_counts, prompt, eos, self.config.draft_vocab)
