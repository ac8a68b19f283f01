"""Would token recycling pay here? Replay a bench run with a fourth, free drafter that proposes the
target's own top-k successors of each token, as the target scored them at the token's last occurrence
(Luo et al. 2024, "Turning Trash into Treasure: Accelerating Inference of Large Language Models with
Token Recycling": an adjacency table of top-k candidates, expanded into a tree).

The target's rows are teacher-forced: one forward over each turn's prompt and committed text gives the
top-k at every committed position, which are the rows the decoder's verification computes (the
accepted path's). At each step the table holds the rows of every position already committed, in this
turn and the stream's earlier turns. The tree grows best-first by estimated acceptance, calibrated
(as the copy drafters are) per successor rank and depth, and ``PAIR=1`` keys the table by the last two
tokens where it has them. Everything else is ``replay.py``'s: our copy drafters and planner, the
run's cost model, idealised prices.

    python docs/benchmarks/token-trees/recycle.py RUN.jsonl MODEL [METHOD]   # env RK (4), RB (24), PAIR (1)
"""

from __future__ import annotations

import heapq
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import replay as R  # noqa: E402

from swiftsd.bench.data import build_input, load_prompts  # noqa: E402
from swiftsd.bench.runner import interleave_categories  # noqa: E402
from swiftsd.drafters.ngram import Calibration, RequestCalibration, learn  # noqa: E402

TOP_K, BUDGET, PAIR = int(os.environ.get("RK", "4")), int(os.environ.get("RB", "24")), os.environ.get("PAIR", "1") == "1"


def teacher_forced_topk(run: str, model: str, method: str) -> dict[str, list[list[int]]]:
    """(prompt id:turn) -> the top-``TOP_K`` next tokens at each position from the prompt's last on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path.home() / ".cache/swiftsd/models" / model
    tok = AutoTokenizer.from_pretrained(str(path))
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    machine = json.load(open(run.replace(".jsonl", ".machine.json")))
    n_per = int(machine["command"].split("--n-per-category ")[1].split()[0])
    prompts = {p.id: p for p in interleave_categories(load_prompts(machine["data"], None, n_per))}
    answers: dict[str, list[str]] = defaultdict(list)
    rows = {}
    for rec in (r for r in map(json.loads, open(run)) if r["method"] == method):
        p = prompts[rec["prompt_id"]]
        ids = build_input(tok, p, rec["turn"], answers[p.id])
        answers[p.id].append(tok.decode(rec["new_ids"], skip_special_tokens=True))
        with torch.no_grad():
            h = lm.model(torch.tensor([ids + rec["new_ids"]])).last_hidden_state[0, len(ids) - 1:]
            rows[f"{rec['prompt_id']}:{rec['turn']}"] = lm.lm_head(h).float().topk(TOP_K, -1).indices.tolist()
    return rows


class RecycleDrafter:
    """The adjacency table, kept over the stream; ``start`` hands it the next turn's rows."""

    name, free = "recycle", True

    def __init__(self) -> None:
        self.next1: dict[int, list[int]] = {}
        self.next2: dict[tuple[int, int], list[int]] = {}
        self.calib = Calibration(prior=0.3)
        self.rows: list[list[int]] = []
        self.base = self.upto = 0

    def start(self, rows: list[list[int]], base: int) -> None:
        self.rows, self.base, self.upto = rows, base, base

    def _sync(self, tokens: list[int]) -> None:
        while self.upto <= len(tokens) - 2:  # the root's own row is not computed yet
            succ = self.rows[self.upto - self.base]
            self.next1[tokens[self.upto]] = succ
            self.next2[(tokens[self.upto - 1], tokens[self.upto])] = succ
            self.upto += 1

    def propose(self, req, trie, budget: int) -> None:
        self._sync(req.tokens)
        calib = req.scratch.setdefault(self.name, RequestCalibration(self.calib))
        tags, heap, n, budget = {}, [(-1.0, 0, 0)], 0, min(budget, BUDGET)
        while heap and n < budget:
            score, node, depth = heapq.heappop(heap)
            if depth >= req.max_depth:
                continue
            prev = trie.tokens[trie.parents[node]] if node else req.tokens[-2]
            succ = self.next2.get((prev, trie.tokens[node])) if PAIR else None
            ctx = "p" if succ is not None else "u"
            for rank, t in enumerate(succ if succ is not None else self.next1.get(trie.tokens[node], ())):
                b = f"r{min(rank, 3)}d{min(depth + 1, 4)}{ctx}"
                p = calib.prob(b, 1.0)
                child = trie.add(node, t, p, self.name)
                tags[child] = (b, 1.0)
                heapq.heappush(heap, (score * p, child, depth + 1))
                n += 1
                if n >= budget:
                    break
        trie.tags[self.name] = tags

    def observe(self, req, trie, accepted: list[int]) -> None:
        learn(req.scratch.setdefault(self.name, RequestCalibration(self.calib)), trie, accepted, self.name)

    def end_request(self, req) -> None:
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__.strip().split("\n\n")[-1])
    run, model = argv[:2]
    method = argv[2] if len(argv) > 2 else "swiftsd"
    rows = teacher_forced_topk(run, model, method)
    recycle, order = RecycleDrafter(), []
    make, turn, replay = R.make_drafters, R._turn, R.replay

    def make_with_recycle(cfg):
        return {**make(cfg), "recycle": recycle} if R.RECYCLE_ON else make(cfg)

    def turn_with_rows(drafters, cfg, costs, ids, out, *a, **k):
        recycle.start(rows[order.pop(0)], len(ids) - 1)
        return turn(drafters, cfg, costs, ids, out, *a, **k)

    def replay_variant(records, costs, tok, variant, *a, **k):
        order[:] = [f"{r['prompt_id']}:{r['turn']}" for r in records]
        R.RECYCLE_ON = variant == "recycle"
        recycle.__init__()
        return replay(records, costs, tok, variant, *a, **k)

    R.make_drafters, R._turn, R.replay = make_with_recycle, turn_with_rows, replay_variant
    R.VARIANTS["recycle"] = lambda drafters: None
    code = R.main([run, "run", model, method, "current,recycle"])
    print("recycle calibration (bucket: hits, trials, estimate):",
          {b: (round(recycle.calib.hits[b], 1), round(recycle.calib.mass[b], 1), round(recycle.calib.factor(b), 2))
           for b in sorted(recycle.calib.hits)})
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
