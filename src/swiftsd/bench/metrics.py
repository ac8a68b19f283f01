"""Table metrics as pure functions of the per-prompt records (the raw JSONL rows).

A record is one method on one turn of one prompt: ``method``, ``prompt_id``,
``turn``, ``category``, ``new_ids``, ``new_tokens``, ``wall_time``,
``target_forwards`` (prefill included), ``draft_forwards``, ``draft_lengths``,
``accepted_lengths`` (per step, bonus excluded), ``time_draft`` (None when not
measurable), ``time_optimize``, ``time_decode_forwards`` (full forwards after the
prefill; measured for HF methods), ``time_prefill`` (the prompt's forward; absent
in runs written before it was kept); with repeats, ``repeat_wall_times`` (every
run of the turn; ``wall_time`` is the fastest) and ``unstable``; ``invalid`` when
the step log was impossible. Every number in a report is recomputed here from
those fields, so anyone can re-derive the tables from the JSONL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any, Iterable, Sequence

from .base import AccountingError

REFERENCE = "plain"
OVERALL = "overall"

Record = dict[str, Any]


def key(r: Record) -> tuple[str, int]:
    return (str(r["prompt_id"]), int(r["turn"]))


def first_difference(ids: Sequence[int], ref: Sequence[int]) -> int | None:
    """Index of the first token where ``ids`` and ``ref`` differ (a length difference counts); None if equal."""
    for i, (a, b) in enumerate(zip(ids, ref)):
        if a != b:
            return i
    return None if len(ids) == len(ref) else min(len(ids), len(ref))


def mismatches(records: Iterable[Record], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Every (method, prompt, turn) whose output differs from the reference's, with where it first differs."""
    records = list(records)
    ref = {key(r): r["new_ids"] for r in records if r["method"] == reference}
    out = []
    for r in records:
        if r["method"] == reference or key(r) not in ref:
            continue
        pos = first_difference(r["new_ids"], ref[key(r)])
        if pos is not None:
            out.append({"method": r["method"], "prompt_id": r["prompt_id"], "turn": r["turn"],
                        "category": r["category"], "first_diff": pos})
    return out


def same_text_records(records: Sequence[Record], reference: str = REFERENCE) -> list[Record]:
    """The records of the turns that every method decoded exactly as the reference did.

    In bf16 every verifying method (PLD too) leaves plain decoding's text at near-ties, so a
    category can compare a copy-friendly continuation with one that is not. On these turns all
    methods wrote the same tokens from the same prompt: their speeds compare like for like.
    """
    ref = {key(r): r for r in records if r["method"] == reference}
    methods = {r["method"] for r in records}
    by_turn: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        by_turn.setdefault(key(r), []).append(r)
    keep = {k for k, rs in by_turn.items() if k in ref and {r["method"] for r in rs} == methods
            and all(r["new_ids"] == ref[k]["new_ids"] and r.get("prompt_tokens") == ref[k].get("prompt_tokens")
                   for r in rs)}
    return [r for r in records if key(r) in keep]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def throughput(records: Sequence[Record]) -> float | None:
    return _ratio(sum(r["new_tokens"] for r in records), sum(r["wall_time"] for r in records))


def plain_step_time(plain: Sequence[Record]) -> float | None:
    """Mean time of one full-model decode forward under plain decoding (prefill excluded)."""
    rows = [r for r in plain if r.get("time_decode_forwards") is not None]
    return _ratio(sum(r["time_decode_forwards"] for r in rows), sum(r["target_forwards"] - 1 for r in rows))


def draft_cost(records: Sequence[Record], plain: Sequence[Record]) -> float | None:
    """c = mean time of one draft forward / mean time of one plain decode forward (same prompts)."""
    rows = [r for r in records if r.get("time_draft") is not None]
    per_draft = _ratio(sum(r["time_draft"] for r in rows), sum(r["draft_forwards"] for r in rows))
    step = plain_step_time(plain)
    return per_draft / step if per_draft is not None and step else None


def is_invalid(r: Record) -> bool:
    """Marked invalid when recorded, or (for a JSONL written before that check) an impossible step log."""
    d, a = r.get("draft_lengths") or [], r.get("accepted_lengths") or []
    return bool(r.get("invalid")) or len(d) != len(a) or any(y < 0 or y > x for x, y in zip(d, a))


def slowest_wall(r: Record) -> float:
    """The slowest repeat's time (the only time, without repeats)."""
    return max(r.get("repeat_wall_times") or [r["wall_time"]])


def speedup_band(paired: Sequence[tuple[Record, Record]]) -> tuple[float | None, float | None]:
    """The speed-up if every turn had taken the repeat least (low) or most (high) in its favour.

    low = method at its slowest repeats against plain at its fastest; high the
    other way round. Without repeats both equal the speed-up itself.
    """
    if not paired:
        return None, None
    tok_m, tok_p = sum(r["new_tokens"] for r, _ in paired), sum(p["new_tokens"] for _, p in paired)
    fast_m, slow_m = sum(r["wall_time"] for r, _ in paired), sum(slowest_wall(r) for r, _ in paired)
    fast_p, slow_p = sum(p["wall_time"] for _, p in paired), sum(slowest_wall(p) for _, p in paired)
    if min(fast_m, slow_m, fast_p, slow_p) <= 0 or tok_p == 0:
        return None, None
    return (tok_m / slow_m) / (tok_p / fast_p), (tok_m / fast_m) / (tok_p / slow_p)


def decode_speedup(paired: Sequence[tuple[Record, Record]]) -> float | None:
    """The speed-up with every turn's prefill taken out of both times: what the decoding itself gained.

    Every method runs the same prompt forward, so prefill only dilutes the ratio; on a
    CPU where a forward over a long prompt takes most of a turn it dilutes it a lot.
    None unless every turn of both sides recorded its prefill time.
    """
    if not paired or any(r.get("time_prefill") is None for pair in paired for r in pair):
        return None
    tok_m, tok_p = sum(r["new_tokens"] for r, _ in paired), sum(p["new_tokens"] for _, p in paired)
    dec_m = sum(r["wall_time"] - r["time_prefill"] for r, _ in paired)
    dec_p = sum(p["wall_time"] - p["time_prefill"] for _, p in paired)
    if min(dec_m, dec_p) <= 0 or tok_p == 0:
        return None
    return (tok_m / dec_m) / (tok_p / dec_p)


def prefill_share(records: Sequence[Record]) -> float | None:
    """The share of ``records``' wall time spent on prefill (None unless every record kept it)."""
    if not records or any(r.get("time_prefill") is None for r in records):
        return None
    return _ratio(sum(r["time_prefill"] for r in records), sum(r["wall_time"] for r in records))


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    method: str
    category: str
    turns: int
    new_tokens: int
    wall_time: float
    tokens_per_s: float | None
    speedup_total: float | None  # throughput ratio over the group (= time ratio when outputs match)
    speedup_mean: float | None  # mean of per-turn throughput ratios
    tau: float | None  # new tokens per full-model forward (Spec-Bench's mean accepted tokens)
    acceptance: float | None  # accepted draft tokens / drafted tokens
    draft_cost: float | None  # c
    opt_share: float | None  # share of wall time spent optimising the skip set
    identical: int | None  # turns whose output equals plain's (greedy only)
    compared: int | None
    repeats: int = 1  # fewest runs per turn among these turns and plain's
    speedup_low: float | None = None  # speedup_band
    speedup_high: float | None = None
    unstable: int = 0  # turns (these and plain's paired ones) whose repeats differ by more than the margin
    invalid: int = 0  # turns whose step log was impossible: acceptance is not reported
    load_max: float | None = None  # highest 1-minute load average seen around these turns
    speedup_decode: float | None = None  # decode_speedup: prefill taken out of both sides
    prefill_share: float | None = None  # share of these turns' wall time that was prefill

    @property
    def verdict(self) -> str:
        """'reference', 'unchecked' (one run per turn), 'faster', 'slower', 'within noise' or 'n/a'."""
        if self.method == REFERENCE:
            return "reference"
        if self.speedup_total is None or self.speedup_low is None or self.speedup_high is None:
            return "n/a"
        if self.repeats < 2:
            return "unchecked"
        if self.speedup_low > 1.0:
            return "faster"
        if self.speedup_high < 1.0:
            return "slower"
        return "within noise"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_group(method: str, category: str, records: Sequence[Record], plain: Sequence[Record],
                    greedy: bool) -> Row:
    """Metrics of ``records`` (one method, one group) against the ``plain`` records of the same group."""
    ref = {key(r): r for r in plain}
    paired = [(r, ref[key(r)]) for r in records if key(r) in ref]
    tp, tp_ref = throughput(records), throughput([p for _, p in paired])
    per_turn = [
        (r["new_tokens"] / r["wall_time"]) / (p["new_tokens"] / p["wall_time"])
        for r, p in paired
        if r["wall_time"] > 0 and p["wall_time"] > 0 and r["new_tokens"] > 0 and p["new_tokens"] > 0
    ]
    valid = [r for r in records if not is_invalid(r)]
    drafted = sum(sum(r.get("draft_lengths") or []) for r in valid)
    accepted = sum(sum(r.get("accepted_lengths") or []) for r in valid)
    acceptance = _ratio(accepted, drafted) if drafted and len(valid) == len(records) else None
    if acceptance is not None and not 0.0 <= acceptance <= 1.0:
        raise AccountingError(f"{method}/{category}: acceptance {acceptance:.0%} from step logs that passed "
                              "the per-step check; this is a bug in swiftsd's bench, please report it")
    wall = sum(r["wall_time"] for r in records)
    identical = compared = None
    if greedy:
        compared = len(paired)
        identical = sum(first_difference(r["new_ids"], p["new_ids"]) is None for r, p in paired)
    both = list(records) + ([] if method == REFERENCE else [p for _, p in paired])
    loads = [x for r in both for x in (r.get("load_average") or []) if x is not None]
    low, high = speedup_band(paired)
    return Row(
        method=method, category=category, turns=len(records),
        new_tokens=sum(r["new_tokens"] for r in records), wall_time=wall, tokens_per_s=tp,
        speedup_total=tp / tp_ref if tp is not None and tp_ref else None,
        speedup_mean=fmean(per_turn) if per_turn else None,
        tau=_ratio(sum(r["new_tokens"] for r in records), sum(r["target_forwards"] for r in records)),
        acceptance=acceptance,
        draft_cost=draft_cost(records, plain),
        opt_share=_ratio(sum(r.get("time_optimize") or 0.0 for r in records), wall),
        identical=identical, compared=compared,
        repeats=min((int(r.get("repeats", 1)) for r in both), default=1),
        speedup_low=low, speedup_high=high, unstable=sum(bool(r.get("unstable")) for r in both),
        invalid=len(records) - len(valid), load_max=max(loads, default=None),
        speedup_decode=decode_speedup(paired), prefill_share=prefill_share(records),
    )


def summarize(records: Sequence[Record], greedy: bool, reference: str = REFERENCE) -> list[Row]:
    """Rows for every method × category, then every method overall (methods and groups in first-seen order)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    cats = list(dict.fromkeys(r["category"] for r in records))
    plain = [r for r in records if r["method"] == reference]
    rows = []
    for cat in [*cats, OVERALL]:
        ref = plain if cat == OVERALL else [r for r in plain if r["category"] == cat]
        for m in methods:
            mine = [r for r in records if r["method"] == m and (cat == OVERALL or r["category"] == cat)]
            if mine:
                rows.append(summarize_group(m, cat, mine, ref, greedy))
    return rows


def committed_per_step(records: Iterable[Record], method: str) -> Counter[int]:
    """Histogram of tokens committed per decoding step (accepted draft tokens + 1) for ``method``."""
    hist: Counter[int] = Counter()
    for r in records:
        if r["method"] == method:
            hist.update(a + 1 for a in r.get("accepted_lengths") or [])
    return hist


def per_drafter(records: Iterable[Record]) -> dict[str, dict[str, dict[str, int]]]:
    """{method: {drafter: {"proposed", "accepted"}}} summed over the valid records that report them."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in records:
        if is_invalid(r) or not r.get("per_drafter"):
            continue
        mine = out.setdefault(r["method"], {})
        for name, c in r["per_drafter"].items():
            tot = mine.setdefault(name, {"proposed": 0, "accepted": 0})
            tot["proposed"] += int(c.get("proposed", 0))
            tot["accepted"] += int(c.get("accepted", 0))
    return out
