"""Replay a bench run's copy drafting without the model: what the step logs would be, and what they cost.

Greedy verification accepts the longest trie path that is a prefix of the tokens the
run committed, and the token after it is the bonus. So, given a method's own committed
tokens (a bench record's ``new_ids``) and the cost model it ran with, the copy drafters
(lookup, suffix index), the planner's node count and the copy probe can be rerun step for
step in milliseconds: the model's forward is replaced by the record. This holds for the
copy-only loop (``lookup-only``, and ``swiftsd`` wherever ``planner.layerskip_ceiling``
shut the search so that no layer-skip draft ran); it is checked, not assumed: each turn's
replayed accepted lengths are compared with the recorded ones (and tests/test_replay.py
checks it against the decoder itself).

The cost is idealised: each step costs its verification (``V(n)`` plus the accepted path's
LM-head rows, from the cost model), with no per-step overhead; a plain step costs 1. So
the ratio it prints is the copy drafting's ceiling on this cost model, the overhead not
counted. Its use: to try a change to the drafters' calibration or the planner on a whole
bench stream in seconds (``VARIANTS``), before a bench measures the one worth measuring.
``hf-pld`` is not ours: it replays transformers' prompt lookup (a 10-token chain from the earliest
match of the last 2, else 1, tokens, verified every step, every row through the LM head) on the
same texts and cost model, so the two policies compare without the forward's speed in between.
Two variants are bounds, not policies: ``oracle`` verifies, with hindsight, exactly the path
that will be accepted among the same drafts (when that pays), ``oracle-top`` the same along
the best-scored chain only (hindsight on its length alone).

    python docs/benchmarks/token-trees/replay.py RUN.jsonl COSTS.json MODEL [METHOD [VARIANTS]]

RUN.jsonl: a bench's records; COSTS.json: a cost model as cached in ~/.cache/swiftsd/costs, or
``run`` for the one METHOD planned with, which newer bench runs keep in RUN.machine.json, or
``run:OTHER`` for OTHER's (``pld run:swiftsd`` replays our drafting on PLD's own texts);
MODEL: a directory with the model's tokenizer, or the short name of a model that swiftsd has
dequantised into ~/.cache/swiftsd/models (its tokenizer rebuilds the prompts as the bench did).
It ends with a markdown table: per category, the run's measured speed-up and each variant's.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any, Callable

from swiftsd.bench.data import build_input, load_prompts
from swiftsd.bench.runner import interleave_categories
from swiftsd.config import SwiftConfig
from swiftsd.drafters import make_drafters
from swiftsd.drafters.base import DraftTrie, DraftRequest
from swiftsd.drafters.ngram import RequestCalibration, learn
from swiftsd.engine.cost import CostModel
from swiftsd.engine.tree import build_tree
from swiftsd.engine.verify import greedy_verify
from swiftsd.core.bounds import CopyProbe
from swiftsd.core.forecast import choose_node_count, relative_verify

# For analyses: called with (trie, committed tokens, position, accepted per step so far) before each
# step's node selection.
ON_CANDIDATES: Callable[[DraftTrie, list[int], int, list[int]], None] | None = None


def _step_cost(costs: CostModel, nodes: int, accepted: int) -> float:
    """One verification in plain steps: V(nodes) and the accepted path's further LM-head rows."""
    return relative_verify(costs, nodes) + (costs.head(accepted + 1) - costs.head(1)) / costs.full_step


def _oracle_select(trie: DraftTrie, out: list[int], g: int, costs: CostModel, max_depth: int,
                   top: bool = False) -> DraftTrie:
    """The bound no estimate can beat: verify exactly the path that will be accepted, when it pays.
    ``top``: only along the best-scored child at each depth (hindsight on the length alone)."""
    path, node = [], 0
    kids: dict[int, list[int]] = {}
    for i, par in enumerate(trie.parents[1:], start=1):
        kids.setdefault(par, []).append(i)
    while g + len(path) < len(out) - 1 and len(path) < max_depth:  # the last token comes as the bonus
        nxt = trie.child(node, out[g + len(path)])
        if top and kids.get(node):
            best = max(kids[node], key=trie.score.__getitem__)
            nxt = nxt if nxt == best else None
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    k = len(path)
    pays = k and (1 + k) / _step_cost(costs, k + 1, k) > 1
    return trie.subset([0] + path) if pays else trie.subset([0])


def _marginal_count(trie: DraftTrie, costs: CostModel, max_nodes: int, lam: float) -> int:
    """Variant: the node count maximising gain - lam * cost (lam: the stream's rate so far), which
    maximises the stream's tokens per time if the estimates are right, where the planner maximises
    each step's own gain / cost."""
    ordered = sorted(trie.score[1:], reverse=True)[: max(0, max_nodes - 1)]
    best_n, best, gain = 1, 1.0 - lam, 1.0
    for i, s in enumerate(ordered, start=2):
        gain += s
        obj = gain - lam * (relative_verify(costs, i) + (costs.head(gain) - costs.head(1)) / costs.full_step)
        if obj > best:
            best_n, best = i, obj
    return best_n


def _hf_pld_chain(tokens: list[int], max_length: int, eos: frozenset[int] = frozenset(), ngram: int = 2,
                  length: int = 10) -> list[int]:
    """What transformers' ``PromptLookupCandidateGenerator`` proposes (``prompt_lookup_num_tokens=10``,
    its default ``max_matching_ngram_size=2``): the continuation of the *earliest* earlier occurrence
    of the last ``ngram`` tokens, then of the last ``ngram - 1``, up to ``length`` tokens, ending
    before index ``max_length`` (the request's prompt + max_new_tokens) and cut at its first stop token."""
    if max_length == len(tokens) + 1:
        return []
    for n in range(min(ngram, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for i in range(len(tokens) - n + 1):
            start = i + n
            end = min(start + length, len(tokens), max_length)
            if tokens[i:start] == tail and start < end:
                chain = tokens[start:end]
                stop = next((k for k, t in enumerate(chain) if t in eos), len(chain))
                return chain[:stop]  # a match cut to nothing still ends the search, as in transformers
    return []


def _hf_pld_turn(ids: list[int], out: list[int], costs: CostModel, eos: frozenset[int], max_new: int
                 ) -> tuple[list[int], float, int, list[int]]:
    """PLD's own loop on ``out``: a chain verified every step, every row through the LM head.

    As in transformers' assisted decoding, the prefill forward already verifies a chain looked up
    in the prompt (priced as the prefill, by the caller); the lists include that first step."""
    tokens, steps, drafted, cost, nodes, g = list(ids), [], [], 0.0, 0, 0
    while g < len(out) and (g == 0 or out[g - 1] not in eos):
        chain = _hf_pld_chain(tokens, len(ids) + max_new, eos)
        k = 0
        while k < len(chain) and g + k < len(out) - 1 and chain[k] == out[g + k]:
            k += 1
        if g:  # after the prefill
            here, n = costs.at_context(len(tokens)), 1 + len(chain)
            cost += relative_verify(here, n) + (here.head(n) - here.head(1)) / here.full_step
            nodes += n
        steps.append(k)
        drafted.append(len(chain))
        tokens.extend(out[g: g + k + 1])
        g += k + 1
    return steps, cost, nodes, drafted


def _turn(drafters: dict, cfg: SwiftConfig, costs: CostModel, ids: list[int], out: list[int],
          eos: frozenset[int], max_new: int, oracle: str = "", rate: list[float] | None = None
          ) -> tuple[list[int], float, int]:
    """One request, replayed: (accepted draft tokens per step, cost in plain steps, nodes verified
    with their roots, as ``GenerationStats.tree_sizes`` sums them). ``max_new``: the request's
    token budget, which caps the draft depth as in the decoder. ``rate``: [tokens, cost] of the
    stream so far, updated here, for the ``marginal-rate`` variant (None: the planner's count)."""
    req = DraftRequest(tokens=list(ids) + out[:1], prompt_len=len(ids), eos=eos)
    probe, steps, cost, nodes = CopyProbe(), [], 0.0, 0
    g = 1  # out[:g] committed (the prefill picked the first)
    while g < len(out) and out[g - 1] not in eos:
        trie = DraftTrie.rooted(req.tokens[-1])
        req.max_depth = min(cfg.max_draft, max_new - g - 1)
        if req.max_depth > 0:
            for d in drafters.values():
                d.propose(req, trie, 4 * cfg.max_nodes)
        if ON_CANDIDATES is not None:
            ON_CANDIDATES(trie, out, g, steps)
        probing = False
        here = costs.at_context(len(req.tokens))  # as the decoder prices each step, at its own context
        if oracle:
            trie = _oracle_select(trie, out, g, here, req.max_depth, top=oracle == "top")
        elif len(trie) > 1 and rate is not None:  # as choose_node_count, with the marginal count
            n = _marginal_count(trie, here, min(cfg.max_nodes, len(trie)), (rate[0] + 2) / (rate[1] + 2))
            if n == 1 and cfg.copy_probe and trie.has_long_match() and probe.due():
                n, probing = min(cfg.max_nodes, len(trie), probe.nodes), True
            trie = trie.select(max(n, sum(trie.keep)))
        elif len(trie) > 1:
            n, probing = choose_node_count(trie, here, 0.0, min(cfg.max_nodes, len(trie)),
                                           probe if cfg.copy_probe else None)
            trie = trie.select(max(n, sum(trie.keep)))
        layout = build_tree(tuple(trie.parents))

        def target(node: int) -> int:
            depth = trie.depth(node)
            return out[g + depth] if g + depth < len(out) else -1

        accepted, _ = greedy_verify(trie.tokens, target, layout)
        new = out[g: g + len(accepted) + 1]
        for d in drafters.values():
            d.observe(req, trie, accepted)
        if probing:
            probe.result(len(accepted), relative_verify(here, layout.size))
        step = _step_cost(here, layout.size, len(accepted))
        cost += step
        if rate is not None:  # tokens, cost: the stream's rate so far
            rate[0], rate[1] = rate[0] + len(new), rate[1] + step
        nodes += layout.size
        steps.append(len(accepted))
        req.tokens.extend(new)
        g += len(new)
    for d in drafters.values():
        d.end_request(req)
    return steps, cost, nodes


class _EffectCalibration(RequestCalibration):
    """Variant: the stream's fit scaled by this request's copy effect (its hits over what the
    stream's fit expected of its trials, over 4 pseudo-trials), before its own bucket counts."""

    def effect(self) -> float:
        hits = sum(self.own.hits.values())
        expected = sum(self.stream.factor(b) * m for b, m in self.own.mass.items())
        return (hits + 4.0) / (expected + 4.0)

    def factor(self, bucket: str) -> float:
        e = self.effect()
        return self.own.factor(bucket, lambda b: min(0.98, self.stream.factor(b) * e))


def _calibration_class(cls: type) -> Callable[[dict], None]:
    def patch(drafters: dict) -> None:
        for d in drafters.values():
            def calib(req: DraftRequest, d: Any = d) -> RequestCalibration:
                key = f"{d.name}:calib"
                if not isinstance(req.scratch.get(key), cls):
                    req.scratch[key] = cls(d.calib)
                return req.scratch[key]
            d._calibration = calib
    return patch


def _no_hot(drafters: dict) -> None:
    for d in drafters.values():
        d.observe = (lambda req, trie, accepted, d=d: learn(d._calibration(req), trie, accepted, d.name))


def _stream_only(drafters: dict) -> None:
    for d in drafters.values():
        d._calibration = lambda req, d=d: d.calib


def _equal_weights(drafters: dict) -> None:
    for d in drafters.values():
        d.rank_decay = 1.0


VARIANTS: dict[str, Callable[[dict], None]] = {
    "current": lambda drafters: None,
    "equal-weights": _equal_weights,  # every match weighs 1 in the counted trie (before 5e709a3)
    "stream-only": _stream_only,  # no per-request counts (before RequestCalibration)
    "no-hot": _no_hot,  # one regime: never "hot"
    "request-effect": _calibration_class(_EffectCalibration),
    "marginal-rate": lambda drafters: None,  # _turn's node count maximising gain - (stream's rate) x cost
    "oracle": lambda drafters: None,  # the same drafts, verified with hindsight (_oracle_select)
    "oracle-top": lambda drafters: None,  # hindsight on the length of the best-scored chain alone
    "hf-pld": lambda drafters: None,  # HF prompt lookup's own policy, priced by the same cost model
}


def replay(records: list[dict[str, Any]], costs: CostModel, tok: Any, variant: str, data: str | None,
           n_per_category: int, max_new: int = 128, eos: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    cfg = SwiftConfig(drafters=("lookup", "suffix"))
    drafters = make_drafters(cfg)
    VARIANTS[variant](drafters)
    prompts = {p.id: p for p in interleave_categories(load_prompts(data, None, n_per_category))}
    answers: dict[str, list[str]] = defaultdict(list)
    rows = []
    rate = [0.0, 0.0] if variant == "marginal-rate" else None
    for rec in records:
        p = prompts[rec["prompt_id"]]
        ids = build_input(tok, p, rec["turn"], answers[p.id])
        assert len(ids) == rec["prompt_tokens"], (p.id, rec["turn"], len(ids), rec["prompt_tokens"])
        out = rec["new_ids"]
        oracle = {"oracle": "all", "oracle-top": "top"}.get(variant, "")
        if variant == "hf-pld":  # its steps include the prefill's; exact means the drafted lengths too
            steps, cost, nodes, drafted = _hf_pld_turn(ids, out, costs, eos, max_new)
            n_steps, same = len(steps), drafted == rec["draft_lengths"]
        else:
            steps, cost, nodes = _turn(drafters, cfg, costs, ids, out, eos, max_new, oracle=oracle, rate=rate)
            n_steps, same = len(steps) + 1, True
        same = same and steps == rec["accepted_lengths"]
        answers[p.id].append(tok.decode(out, skip_special_tokens=True))
        rows.append({"prompt_id": p.id, "turn": rec["turn"], "category": rec["category"], "tokens": len(out),
                     "steps": n_steps, "cost": 1.0 + cost, "nodes": nodes,
                     "same_steps": same, "recorded_steps": rec["target_forwards"],
                     "recorded_nodes": rec.get("tree_nodes"), "wall_time": rec["wall_time"]})
    return rows


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    from pathlib import Path

    if len(argv) < 3 or (len(argv) > 4 and any(v not in VARIANTS for v in argv[4].split(","))):
        raise SystemExit(__doc__.split("\n\n")[-2] + f"\nVARIANTS: comma-separated, among {', '.join(VARIANTS)}")
    run, cost_file, model = argv[:3]
    method = argv[3] if len(argv) > 3 else "lookup-only"
    variants = argv[4].split(",") if len(argv) > 4 else ["current"]
    try:  # the run file of a run still going (--resume), or a finished run's metadata
        args = json.load(open(run.replace(".jsonl", ".run.json")))["args"]
        n_per, max_new, data = args["n_per_category"], args["max_new_tokens"], args["data"]
    except FileNotFoundError:
        machine = json.load(open(run.replace(".jsonl", ".machine.json")))
        n_per = int(machine["command"].split("--n-per-category ")[1].split()[0])
        max_new = int(machine["command"].split("--max-new-tokens ")[1].split()[0])
        data = None if machine["data"] == "built-in" else machine["data"]
    records = [r for r in map(json.loads, open(run)) if r["method"] == method]
    if cost_file == "run" or cost_file.startswith("run:"):
        planner = cost_file[4:] or method  # run:swiftsd prices another method's texts (pld's) with swiftsd's model
        kept = json.load(open(run.replace(".jsonl", ".machine.json")))["methods"].get(planner, {}).get("cost_model")
        if kept is None:
            raise SystemExit(f"{run}: its machine.json keeps no cost model for {planner} (an older run, or a "
                             "method that plans nothing): give the cost model's file")
        costs = CostModel.from_dict(kept)
    else:
        costs = CostModel.from_dict(json.load(open(cost_file)))
    path = Path(model) if Path(model).is_dir() else Path.home() / ".cache/swiftsd/models" / model
    tok = AutoTokenizer.from_pretrained(str(path))
    gen = path / "generation_config.json"  # the bench's stop tokens (swiftsd.hf.eos.resolve_eos reads these too)
    ids = json.load(open(gen)).get("eos_token_id") if gen.is_file() else tok.eos_token_id
    eos = frozenset(int(t) for t in (ids if isinstance(ids, list) else [ids]) if t is not None)
    plain = {(r["prompt_id"], r["turn"]): r for r in map(json.loads, open(run)) if r["method"] == "plain"}
    table: dict[str, dict[str, float]] = {}
    cats: list[str] = []
    for v in variants:
        rows = replay(records, costs, tok, v, data, n_per, max_new, eos)
        by_cat: dict[str, list] = defaultdict(list)
        for r in rows:
            by_cat[r["category"]].append(r)
        cats = list(by_cat) + ["overall"]
        same = sum(r["same_steps"] for r in rows)
        print(f"{v}: {same}/{len(rows)} turns replay the recorded steps exactly")
        table[v] = {"exact": same}
        for cat, rs in list(by_cat.items()) + [("overall", rows)]:
            toks, cost = sum(r["tokens"] for r in rs), sum(r["cost"] for r in rs)
            table[v][cat] = toks / cost
            print(f"  {cat:14s} ideal {toks / cost:5.2f}x  steps {sum(r['steps'] for r in rs):5d} "
                  f"(recorded {sum(r['recorded_steps'] for r in rs):5d})  nodes {sum(r['nodes'] for r in rs):6d} "
                  f"(recorded {sum(r['recorded_nodes'] or 0 for r in rs):6d})  tokens {toks}")
    measured = {}
    for cat in cats:  # the run's own speed ratio on the same turns (tokens per second, totals)
        mine = [r for r in records if cat in ("overall", r["category"]) and (r["prompt_id"], r["turn"]) in plain]
        if mine:
            base = [plain[(r["prompt_id"], r["turn"])] for r in mine]
            measured[cat] = ((sum(r["new_tokens"] for r in mine) / sum(r["wall_time"] for r in mine))
                             / (sum(r["new_tokens"] for r in base) / sum(r["wall_time"] for r in base)))
    print(f"\n| {method}, replayed | " + " | ".join(cats) + " | turns replayed exactly |")
    print("|---" * (len(cats) + 2) + "|")
    if measured:
        print("| measured in that run (tokens/s against plain) | " + " | ".join(f"{measured.get(c, 0):.2f}x" for c in cats)
              + " | - |")
    for v, row in table.items():
        print(f"| {v} | " + " | ".join(f"{row[c]:.2f}x" for c in cats) + f" | {row['exact']}/{len(records)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
