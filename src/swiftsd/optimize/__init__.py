"""On-the-fly skip-set optimisation: SWIFT's optimisation phase, cost-aware and never slower.

The decode loop consults one :class:`SkipOptimizer` before every step
(``wants_proposal`` / ``propose`` / ``observe`` / ``current``) and reports every
step back (``record_step``). The optimiser never touches the model: it proposes
:class:`SkipSet` values, the decoder scores them by *matchness* (one parallel
draft forward over the request's first generated tokens) and the optimiser
keeps the best.

What the paper does (``OptimizerConfig.reference()``): uniform random proposals
of ``int(2·(L−2)·skip_ratio)`` sublayers, every ``bayes_interval``-th from a
Gaussian process with UCB, keep-if-better on matchness, three stop rules, state
shared across requests.

The package: ``search`` (the strategies), ``optimizer`` (the phase machine),
``predict`` (what a set is expected to gain), ``state`` (everything it learned, as
JSON), ``views`` (status, summary, trace), ``store`` (tuned sets on disk).

What we add (defaults; see docs/optimizer.md):

* **cost-aware objective** — the score of a set is its *predicted speed-up*
  from its matchness and costs measured on the running device
  (:class:`CostModel`), so the skip ratio is chosen too;
* **local moves** — part of the proposals mutate the best set (swap / add /
  drop one sublayer), which finds good sets far faster than uniform draws;
* **like-for-like scores** — the best set is re-scored on each new request's
  window before candidates are compared against it;
* **never slower** — while the best set's predicted or measured speed-up is
  under ``min_speedup`` the loop decodes plainly, probing the set again now and then;
* **drift** — when acceptance falls well below its value at the time the
  search stopped, the search re-opens from the current set.
"""

from .optimizer import STATE_VERSION, CostProvider, FixedCosts, SkipOptimizer
from .search import BayesSearch, LocalSearch, RandomSearch, Strategy
from .records import ACCELERATE, PLAIN, SEARCH, Evaluation, OptimizerState

__all__ = [
    "ACCELERATE", "PLAIN", "SEARCH", "STATE_VERSION", "BayesSearch", "Evaluation", "LocalSearch", "OptimizerState",
    "RandomSearch", "SkipOptimizer", "Strategy", "CostProvider", "FixedCosts",
]
