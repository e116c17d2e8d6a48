"""How the plans this node ran fared against their predictions (pure; ``now`` is given).

An auctioneer distributes a request when its plan predicts at least
:data:`~edgeci_p2p.auction.decider.LOCAL_MARGIN` gain over running it alone. Both
predictions come from the same cost model, and the model is wrong in a direction
that depends on the plan's shape: it leaves out what a distributed plan pays at
every stage boundary (hand-offs through each peer's event loop and worker, a CFS
pause after a wait), and a peer's calibrated bid is one factor over all its work,
thin strips and whole maps alike. On the emulated cluster ResNet-34 was distributed
at a predicted 180-195 ms against 234 alone, took 273-318 ms, and alone took 189
(``docs/cluster-benchmark.md``, twelfth session): comparing the two predictions
chose the slower, request after request.

:class:`PlanOutcomes` keeps, per kind of request (model and input size) and per
shape (distributed, or alone on this node), a running mean of log(measured /
predicted) over the plans this node ran; :meth:`PlanOutcomes.factor` is what a
prediction of that shape should be multiplied by. Once distributed plans have been
measured, the comparison needs no margin for what the model leaves out, only one
for noise (:data:`~edgeci_p2p.auction.decider.MEASURED_MARGIN`): VGG-16's distributed
plans ran 1.2-1.3x their predictions and were still 15% faster than one peer.

An estimate not refreshed for ``ttl_s`` is forgotten: a shape that lost is not run,
so it would never be measured again, while peers come and go and loads move;
forgetting tries it again now and then, at the cost of one request.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["PlanOutcomes"]


@dataclass
class PlanOutcomes:
    """Measured / predicted execution time of this node's plans, by kind and shape."""

    weight: float = 0.3
    """Weight of each new request in the running mean of the log ratio."""
    ttl_s: float = 120.0
    """An estimate older than this is forgotten (the factor is 1 again)."""
    max_factor: float = 4.0
    """One request moves the estimate by at most this factor (a stall, a lost peer)."""
    enabled: bool = True
    """Off: nothing is learnt, every factor is unknown (``edgeci-peer --no-plan-outcomes``,
    for measuring this against its absence)."""
    _est: dict[tuple[Hashable, bool], tuple[float, float]] = field(default_factory=dict)
    """(kind, distributed) -> (mean log ratio, when last observed)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"outcome weight {self.weight} is not in (0, 1]")
        if self.ttl_s <= 0 or self.max_factor <= 1.0:
            raise ValueError("ttl_s must be > 0 and max_factor > 1")

    def observe(
        self, kind: Hashable, distributed: bool, predicted_s: float, measured_s: float, now: float
    ) -> None:
        """One plan of ``kind`` ran: predicted ``predicted_s``, took ``measured_s``."""
        if not (self.enabled and predicted_s > 0 and measured_s > 0):
            return  # no prediction (or a clock that did not move): nothing to learn
        bound = math.log(self.max_factor)
        x = max(-bound, min(bound, math.log(measured_s / predicted_s)))
        key = (kind, distributed)
        old = self._est.get(key)
        if old is None or now - old[1] > self.ttl_s:
            self._est[key] = (x, now)
        else:
            self._est[key] = ((1.0 - self.weight) * old[0] + self.weight * x, now)

    def factor(self, kind: Hashable, distributed: bool, now: float) -> float | None:
        """What a prediction of this shape should be multiplied by (None: not known)."""
        got = self._est.get((kind, distributed))
        if got is None or now - got[1] > self.ttl_s:
            return None
        return math.exp(got[0])

    def factors(self, kind: Hashable, now: float) -> tuple[float | None, float | None]:
        """(distributed, alone) factors of ``kind``."""
        return self.factor(kind, True, now), self.factor(kind, False, now)

    def note(self, kind: Hashable, now: float) -> str:
        """What a decision note says of the factors ('' when nothing is known)."""
        shared, alone = self.factors(kind, now)
        if shared is None and alone is None:
            return ""
        said = [f"x{f:.2f} {what}" for f, what in ((shared, "distributed"), (alone, "alone")) if f]
        return f" (plans here lately ran {', '.join(said)} their predictions)"
