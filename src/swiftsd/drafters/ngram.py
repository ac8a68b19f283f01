"""What the two copy drafters (prompt lookup, stream suffix index) share.

Both find earlier occurrences of the text's last n tokens and propose what
followed them. All continuations go into one counted trie: a branch followed
by more (and longer, more recent) occurrences gets a larger share, and a node's
acceptance estimate is ``calibration x share``, learned from what verification
accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .base import DraftTrie

if TYPE_CHECKING:
    from .base import DraftRequest

NgramKey = tuple[int, ...]


@dataclass
class Calibration:
    """P(accept | parent accepted) ≈ ``factor(bucket) · share``, fitted from counts.

    ``hits[b]`` counts accepted nodes of bucket b and ``mass[b]`` the shares of every
    node of bucket b whose parent was accepted (a trial). Counts decay so the fit
    follows the stream; the prior is ``prior`` over ``strength`` pseudo-trials.
    """

    prior: float = 0.5
    strength: float = 4.0
    decay: float = 0.995
    hits: dict[str, float] = field(default_factory=dict)
    mass: dict[str, float] = field(default_factory=dict)

    def factor(self, bucket: str, prior: Callable[[str], float] | None = None) -> float:
        """The fit, over ``prior(bucket)`` (default: the constant ``prior``) as ``strength`` trials.

        A "hot" bucket (suffix ``h``: right after accepted copies) starts from its cold
        twin's estimate when that is higher: copying just worked, so it is at least as likely."""
        base = prior(bucket) if prior is not None else self.prior
        if bucket.endswith("h"):
            base = max(base, self.factor(bucket[:-1] + "c", prior))
        h, m = self.hits.get(bucket, 0.0), self.mass.get(bucket, 0.0)
        return (h + base * self.strength) / (m + self.strength)

    def prob(self, bucket: str, share: float) -> float:
        return min(0.98, self.factor(bucket) * share)

    def observe(self, trials: Iterable[tuple[str, float, bool]]) -> None:
        for bucket, share, hit in trials:
            self.hits[bucket] = self.hits.get(bucket, 0.0) * self.decay + float(hit)
            self.mass[bucket] = self.mass.get(bucket, 0.0) * self.decay + share

    def state_dict(self) -> dict[str, Any]:
        return {"hits": dict(self.hits), "mass": dict(self.mass)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.hits, self.mass = dict(d["hits"]), dict(d["mass"])


@dataclass
class RequestCalibration:
    """One request's counts (``own``, undecayed), with the stream's fit as their prior, worth
    ``own.strength`` (8) trials.

    The stream's counts may come from hundreds of trials of other requests: after
    summarisation turns, where copies were accepted ten at a time, the math turn that
    followed verified 253 lookup nodes for 16 accepted (qwen-0.5b fp32), where a fresh
    decoder verified 19 for 8. Weighted like this, a request's own failures outweigh the
    stream's history after a few trials. Both fits learn from every verification.
    """

    stream: Calibration
    own: Calibration = field(default_factory=lambda: Calibration(strength=8.0, decay=1.0))

    def factor(self, bucket: str) -> float:
        return self.own.factor(bucket, self.stream.factor)

    def prob(self, bucket: str, share: float) -> float:
        return min(0.98, self.factor(bucket) * share)

    def observe(self, trials: Iterable[tuple[str, float, bool]]) -> None:
        trials = list(trials)
        self.stream.observe(trials)
        self.own.observe(trials)


def bucket(n: int, depth: int) -> str:
    """Calibration bucket: match length (1, 2, 3+) and depth (1, 2, 3-4, 5-8, 9+)."""
    d = 1 if depth <= 1 else 2 if depth == 2 else 3 if depth <= 4 else 5 if depth <= 8 else 9
    return f"n{min(n, 3)}d{d}"


# Each match counts ``RANK_DECAY ** rank`` in the counted trie, rank 0 being the best
# (longest, then most recent: :meth:`NgramIndex.matches`). Counted alike, 31 one-token
# matches outweighed the one 4-token match, and an old occurrence weighed as much as the
# one just written. Replayed on the committed bf16 runs' texts (replay.py), 0.8 gave
# 1.79 / 1.82 / 1.63x plain on smollm2 / qwen-0.5b / qwen-1.5b against 1.76 / 1.80 / 1.61x
# for equal counts; weighting by match length alone (4**n) gave 1.78 / 1.82 / 1.63x.
RANK_DECAY = 0.8


def add_continuations(
    trie: DraftTrie,
    matches: Sequence[tuple[int, Sequence[int]]],
    budget: int,
    max_depth: int,
    calib: "Calibration | RequestCalibration",
    source: str,
    regime: str = "",
    rank_decay: float = RANK_DECAY,
) -> dict[int, tuple[str, float]]:
    """Insert the continuations of ``matches`` [(match length n, tokens after the match)],
    best first, into ``trie`` under its root, within ``budget`` new nodes.

    A node's share is the weight of the matches through it over its parent's, the i-th
    match weighing ``rank_decay ** i``. ``regime`` is appended to every calibration bucket
    (see :class:`CopyDrafter`). Returns node -> (calibration bucket, share) for the nodes
    this call proposed.
    """
    if not 0.0 < rank_decay <= 1.0:
        raise ValueError(f"rank_decay must be in (0, 1], got {rank_decay}")
    # 1. A local counted trie of every continuation (cheap: ints and dicts).
    kids: dict[tuple[int, int], int] = {}
    count: list[float] = [0.0]
    token: list[int] = [-1]
    parent: list[int] = [-1]
    ngram: list[int] = [0]
    weight = 1.0
    for n, cont in matches:
        node = 0
        count[0] += weight
        for tok in cont[:max_depth]:
            nxt = kids.get((node, tok))
            if nxt is None:
                if len(token) - 1 >= budget:
                    break
                nxt = kids[(node, tok)] = len(token)
                count.append(0.0)
                token.append(tok)
                parent.append(node)
                ngram.append(n)
            count[nxt] += weight
            ngram[nxt] = max(ngram[nxt], n)
            node = nxt
        weight *= rank_decay
    # 2. Into the shared trie, parents first, each with its calibrated share.
    where = {0: 0}
    tags: dict[int, tuple[str, float]] = {}
    for i in range(1, len(token)):
        share = count[i] / count[parent[i]]
        depth = 1
        j = parent[i]
        while j > 0:
            depth, j = depth + 1, parent[j]
        b = bucket(ngram[i], depth) + regime
        node = trie.add(where[parent[i]], token[i], calib.prob(b, share), source)
        where[i] = node
        tags[node] = (b, share)
    return tags


def learn(calib: "Calibration | RequestCalibration", trie: DraftTrie, accepted: list[int], source: str) -> None:
    """Fit ``calib`` from one verification: every ``source`` node whose parent was accepted is a trial."""
    on_path = {0, *accepted}
    trials = []
    for node, tag in trie.tags.get(source, {}).items():
        if trie.parents[node] in on_path:
            trials.append((tag[0], tag[1], node in on_path))
    calib.observe(trials)


class NgramIndex:
    """Positions where each n-gram (n in [min_n, max_n]) ends, in token sequences keyed by id."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.ends: dict[NgramKey, list[tuple[int, int]]] = {}

    def add(self, seq_id: int, tokens: Sequence[int], start: int, stop: int) -> None:
        """Index the n-grams ending at positions [start, stop) of ``tokens``."""
        for p in range(start, stop):
            for n in range(self.min_n, self.max_n + 1):
                if p - n + 1 < 0:
                    break
                self.ends.setdefault(tuple(tokens[p - n + 1 : p + 1]), []).append((seq_id, p))

    def remove(self, seq_id: int, tokens: Sequence[int]) -> None:
        for p in range(len(tokens)):
            for n in range(self.min_n, self.max_n + 1):
                if p - n + 1 < 0:
                    break
                key = tuple(tokens[p - n + 1 : p + 1])
                hits = self.ends.get(key)
                if hits is not None:
                    hits[:] = [h for h in hits if h[0] != seq_id]
                    if not hits:
                        del self.ends[key]

    def matches(self, tail: Sequence[int], tokens_of: Callable[[int], Sequence[int]], limit: int,
                length: int) -> list[tuple[int, list[int]]]:
        """Continuations (up to ``length`` tokens) after earlier occurrences of ``tail``'s suffixes.

        Longest match first, most recent first within a length; one continuation per
        occurrence, at most ``limit`` in all.
        """
        out: list[tuple[int, list[int]]] = []
        seen: set[tuple[int, int]] = set()
        for n in range(min(self.max_n, len(tail)), self.min_n - 1, -1):
            for seq_id, p in reversed(self.ends.get(tuple(tail[len(tail) - n :]), ())):
                if (seq_id, p) in seen:
                    continue
                seen.add((seq_id, p))
                cont = list(tokens_of(seq_id)[p + 1 : p + 1 + length])
                if cont:
                    out.append((n, cont))
                if len(out) >= limit:
                    return out
        return out


class CopyDrafter:
    """What both copy drafters do with their matches: a calibrated counted trie, learned from counts.

    Subclasses set ``name``, ``max_n``, ``max_depth``, ``max_matches``, ``calib`` and say where
    the matches come from (:meth:`_matches`).

    Copying comes in runs: a request that is copying its prompt (a summary, an edit) keeps
    on, one that is not rarely starts. So acceptance is calibrated apart in two regimes of the
    request: "hot" after a verification that accepted 2+ of this drafter's tokens, "cold"
    otherwise. One stream-wide calibration would carry a summarisation request's 90 %
    over to the math question that follows it and verify copies that fail there. Within a
    regime, the request's own counts weigh against the stream's (:class:`RequestCalibration`).
    """

    name = ""
    free = True
    max_n = max_depth = max_matches = 0
    rank_decay = RANK_DECAY  # a match's weight in the counted trie: rank_decay ** its rank
    calib: Calibration

    def _matches(self, req: "DraftRequest", depth: int) -> list[tuple[int, list[int]]]:
        raise NotImplementedError

    def propose(self, req: "DraftRequest", trie: DraftTrie, budget: int) -> None:
        depth = min(self.max_depth, req.max_depth)
        if budget <= 0 or depth <= 0:
            return
        matches = self._matches(req, depth)
        if matches:
            regime = "h" if req.scratch.get(f"{self.name}:hot") else "c"
            calib = self._calibration(req)
            trie.tags[self.name] = add_continuations(trie, matches, budget, depth, calib, self.name, regime,
                                                       self.rank_decay)

    def _calibration(self, req: "DraftRequest") -> RequestCalibration:
        """This request's calibration over the stream's (a new one after ``reset``)."""
        key = f"{self.name}:calib"
        calib = req.scratch.get(key)
        if calib is None or calib.stream is not self.calib:
            calib = req.scratch[key] = RequestCalibration(self.calib)
        return calib

    def observe(self, req: "DraftRequest", trie: DraftTrie, accepted: list[int]) -> None:
        learn(self._calibration(req), trie, accepted, self.name)
        mine = trie.tags.get(self.name, {})
        if any(trie.parents[node] == 0 for node in mine):  # verified this step: the regime follows it
            req.scratch[f"{self.name}:hot"] = sum(1 for a in accepted if a in mine) >= 2
