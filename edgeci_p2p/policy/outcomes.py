"""Whether to distribute, judged by what each way of running really took (pure).

An auctioneer runs a request alone unless the distributed plan predicts a clear gain
(:data:`~edgeci_p2p.auction.decider.LOCAL_MARGIN`, 10%). Both predictions miss what the
model leaves out, and they miss it by different amounts: on the emulated cluster (VGG-16,
``edgeci-halo``) the local plan predicted 454 ms and ran 500-520, the distributed one
predicted 411 and ran 433-450. The predicted gain (9.5%) sat under the margin while the
measured one was 14%: the auctioneer ran alone, 20% slower.

And it then stayed alone. The distributed prediction had risen first (the peers' strip
calibrations, 1.2-1.46x, had moved it from 313 to 455 ms); running alone, no strip was
served again, so nothing could bring it back down. Of eight requests of one benchmark
run, four ran distributed in 403-480 ms, and the last four alone in 503-522.

:class:`Outcomes` keeps, per way of running (the local plan per model and input size;
a distributed plan per strategy as well), the measured and predicted time of this
node's recent requests. :func:`choose` then compares what each way measured, with the
smaller :data:`MEASURED_MARGIN`. A run counts only while fresh (``max_age_s``) and
made at a prediction near the one being judged (``similar``): what a request took when
the distributed plan predicted 313 ms says nothing about one that predicts 455. When
only one way has figures, the predictions are compared as before, except that a
distributed plan that ran here before and whose figures went stale is *tried again*
(``explore``) while it predicts less than the measured local time: that is the run
that refreshes its calibrations. A model whose plans never distributed (ResNet-34 on
the emulated cluster) is never tried that way.

The measured medians are compared as they are, not as ratios to their predictions
applied to the prediction at hand. Within ``similar`` a prediction mostly moves
because the peers' calibrations caught up with speeds that had not changed: in one
benchmark run (four strategies interleaved) ``edgeci``'s plan went from 550 to 599
ms while its requests kept taking 734-771; its ratio (x1.39, from the 550-ms runs
and one request caught in a slow spell of the whole machine) made the new plan
833 ms against 842 alone, and the next five of its requests ran alone at 802-1700 ms.
And running alone leaves the distributed figures as they were, slow spell included,
so a way that lost as measured is *tried again* once its newest run is
:data:`RETRY_S` old (with patience 5 s, one run's two slow requests kept both our
strategies alone for 7 of their 10 requests).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["MEASURED_MARGIN", "RETRY_S", "Choice", "Outcomes", "choose"]

MEASURED_MARGIN: Final = 0.05
"""The gain a distributed plan must show over running alone when both predictions are
measured by their recent runs."""

RETRY_S: Final = 30.0
"""A distributed way that lost, as measured, is tried again once its newest run here
is this old: running alone adds nothing to its figures (a slow spell among them stays
until it ages out, ``Outcomes.max_age_s``), and a benchmark's strategy comes round
every ~10 s."""


@dataclass(frozen=True)
class Sample:
    """One request: when it ended, what its plan predicted, what it took (seconds)."""

    at: float
    predicted: float
    measured: float


@dataclass
class Outcomes:
    """Measured against predicted time of this node's recent requests, per way of
    running (a hashable key chosen by the caller)."""

    skip: int = 2
    """Requests of a key left out at first: cold (first connections, allocations; a
    benchmark's warm-up requests of ``edgeci`` ran at twice their plan and, kept,
    held its choice on running alone for two minutes)."""
    keep: int = 6
    """Samples kept per key (the newest)."""
    min_samples: int = 3
    """Fresh, similar samples needed before their median is used: a median of three drops one
    slow run, a median of two is their mean. With two, early in a benchmark run, one
    settling request made ``edgeci``'s ratio x1.28 and four requests ran alone at 1.37x
    their plan instead of distributed at ~1.0x."""
    max_age_s: float = 120.0
    """Samples older than this no longer count."""
    similar: float = 0.15
    """A sample counts for a prediction within this fraction of the one it was made at."""
    lowest: float = 0.5
    highest: float = 2.0
    """Bounds on the median as a multiple of the prediction: beyond them a run stalled
    or the plan was wrong in a way the figures should not chase."""
    samples: dict[Hashable, list[Sample]] = field(default_factory=dict)
    seen: dict[Hashable, int] = field(default_factory=dict)
    shapes: dict[Hashable, Hashable] = field(default_factory=dict)
    """Per key, the shape of the plan last run (:meth:`ran`)."""

    def record(
        self, key: Hashable, predicted: float, measured: float, now: float, cold: bool = False
    ) -> None:
        """A request run the ``key`` way, predicted at ``predicted`` s, took ``measured``;
        ``cold``: the first run of a plan (new strips, new shapes), which counts as a run
        but is no sample. Its peers make their convolutions' primitives and buffers for
        the new shapes: on the emulated cluster the first request of a plan made in the
        background took 1.5 s where the plan's next ones took 0.6, and kept as a sample
        it sent the strategy alone for the rest of the run (:data:`RETRY_S`)."""
        if not (predicted > 0.0 and measured > 0.0) or not math.isfinite(predicted + measured):
            return
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.skip or cold:
            return
        kept = self.samples.setdefault(key, [])
        kept.append(Sample(now, predicted, measured))
        del kept[: -self.keep]

    def judge(
        self,
        strategy: str,
        model: Hashable,
        distributed: float,
        local: float,
        now: float,
        margin: float,
    ) -> Choice:
        """:func:`choose` for a distributed plan of ``strategy`` predicted at
        ``distributed`` s, against running ``model`` alone predicted at ``local`` s."""
        dist_key, local_key = (strategy, model), ("alone", model)
        return choose(
            distributed,
            local,
            self.measured(dist_key, distributed, now),
            self.measured(local_key, local, now),
            self.ran_before(dist_key),
            margin,
            self.age(dist_key, now),
        )

    def ran(
        self,
        strategy: str,
        model: Hashable,
        alone: bool,
        predicted: float,
        measured: float,
        now: float,
        shape: Hashable = None,
    ) -> None:
        """A request of ``model`` ran (``alone``, whatever ``strategy`` fell back on it,
        or distributed as ``strategy`` planned it), predicted at ``predicted`` s, in
        ``measured`` s; ``shape``: its plan's stages and devices, the first run of which
        is cold (:meth:`record`)."""
        key = ("alone", model) if alone else (strategy, model)
        cold = shape is not None and self.shapes.get(key) != shape
        if shape is not None:
            self.shapes[key] = shape
        self.record(key, predicted, measured, now, cold)

    def ran_before(self, key: Hashable) -> bool:
        """Whether a request ever ran the ``key`` way here (cold ones included)."""
        return self.seen.get(key, 0) > 0

    def age(self, key: Hashable, now: float) -> float | None:
        """Seconds since the newest sample of ``key`` (None: none kept)."""
        kept = self.samples.get(key)
        return now - kept[-1].at if kept else None

    def measured(self, key: Hashable, predicted: float, now: float) -> float | None:
        """The median time of the fresh samples made near ``predicted`` (seconds,
        within ``lowest`` .. ``highest`` times it: one stalled request is not the
        plan's error); None when there are fewer than ``min_samples``."""
        usable = [
            s
            for s in self.samples.get(key, ())
            if now - s.at <= self.max_age_s
            and abs(s.predicted - predicted) <= self.similar * s.predicted
        ]
        if len(usable) < self.min_samples or predicted <= 0.0:
            return None
        times = sorted(s.measured for s in usable)
        mid = len(times) // 2
        median = times[mid] if len(times) % 2 else math.sqrt(times[mid - 1] * times[mid])
        return min(max(median, self.lowest * predicted), self.highest * predicted)


@dataclass(frozen=True)
class Choice:
    """What to run, and the sentence a plan's notes give for it."""

    distribute: bool
    explore: bool
    why: str
    measured: bool = False
    """Decided on what both ways measured (not on the predictions alone)."""

    @property
    def noted(self) -> bool:
        """Whether a distributed plan's notes should say why (the predictions alone
        decided as they always have: nothing to add)."""
        return self.explore or self.measured


def choose(
    distributed: float,
    local: float,
    m_distributed: float | None,
    m_local: float | None,
    distributed_ran_before: bool,
    margin: float,
    distributed_age: float | None = None,
) -> Choice:
    """Distribute or run alone: ``distributed`` and ``local`` are the two plans'
    predictions (s), ``m_*`` what their recent runs measured (:meth:`Outcomes.measured`),
    ``margin`` the gain asked of predictions alone
    (:data:`~edgeci_p2p.auction.decider.LOCAL_MARGIN`), ``distributed_age`` the seconds
    since the distributed way last ran here."""
    ms = 1e3
    if m_distributed is not None and m_local is not None:
        figures = (
            f"distributed {m_distributed * ms:.0f} ms (plan {distributed * ms:.0f}) "
            f"against alone {m_local * ms:.0f} ms (plan {local * ms:.0f})"
        )
        if m_distributed < m_local * (1.0 - MEASURED_MARGIN):
            return Choice(True, False, f"as measured: {figures}", measured=True)
        if distributed_age is not None and distributed_age >= RETRY_S and distributed < m_local:
            why = f"tried again: last ran {distributed_age:.0f} s ago, as measured {figures}"
            return Choice(True, True, why)
        return Choice(False, False, f"as measured: {figures}", measured=True)
    if distributed < local * (1.0 - margin):
        return Choice(True, False, f"predicted gain >= {margin:.0%}")
    if m_local is not None and distributed_ran_before and distributed < m_local:
        why = (
            f"tried again: distributed {distributed * ms:.0f} ms has no recent runs at "
            f"that figure; alone measured {m_local * ms:.0f} ms (plan {local * ms:.0f})"
        )
        return Choice(True, True, why)
    figures = f"{distributed * ms:.0f} against {local * ms:.0f} ms"
    why = f"distributing predicted < {margin:.0%} gain ({figures})"
    return Choice(False, False, why)
