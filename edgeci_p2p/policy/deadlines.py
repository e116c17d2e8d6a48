"""How long the auctioneer waits for remote work, and when it hedges a straggler.

Every wait is the plan's own prediction for that piece of work (its compute on the
device model the plan used, plus its input over that device's link), times a
factor, plus a margin: a peer may be much slower than predicted before it is given
up (its backlog, a CFS pause), but not forever. A tile still running at a smaller
multiple of its prediction gets a second copy elsewhere (hedging); the first
result wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeci_p2p.core.cost import ComputeModel, Testbed
from edgeci_p2p.core.geometry import Trace, fold_flops, head_flops, strip_trace
from edgeci_p2p.core.units import ModelSpec

StageRows = tuple[int, int, tuple[int, int]]
"""A strip job's stage as the prediction needs it: (first unit, stop unit, output rows)."""


@dataclass(frozen=True)
class DeadlinePolicy:
    """Deadlines and hedge times from predicted seconds (``PeerConfig``'s fields)."""

    factor: float = 4.0
    """Remote work is given up after predicted time x this + ``margin``."""
    margin: float = 2.0
    hedge_factor: float = 2.0
    """A remote tile still running after predicted time x this + ``hedge_margin`` is
    hedged on the next peer (or here)."""
    hedge_margin: float = 0.5

    def deadline(self, predicted: float) -> float:
        """Seconds to wait for work predicted to take ``predicted`` seconds."""
        return predicted * self.factor + self.margin

    def hedge_after(self, predicted: float) -> float:
        """Seconds after which such work counts as straggling."""
        return predicted * self.hedge_factor + self.hedge_margin


def tile_seconds(
    testbed: Testbed, node: str, tile: Trace, nbytes: int, own: ComputeModel | None
) -> float:
    """A tile's predicted seconds on ``node``: its compute and its ``nbytes`` of input
    over the node's link, as planned; on a node outside the plan's testbed (a
    fallback), its compute on this node's own model (``own``), or 0 without one."""
    if node in testbed.names:
        i = testbed.names.index(node)
        return testbed.devices[i].compute.trace_seconds(tile) + testbed.links[i].seconds(nbytes)
    if own is not None:
        return own.trace_seconds(tile)
    return 0.0


def strip_job_seconds(
    testbed: Testbed,
    node: str,
    spec: ModelSpec,
    stages: Sequence[StageRows],
    nbytes: int,
    own: ComputeModel | None,
    fold: bool = False,
) -> float:
    """A strip job's predicted seconds on ``node``: its input over the node's link and
    each stage's rows computed (on the plan's model of the node, else ``own``); with
    ``fold``, the last rows' share of fc1 too (``strip_job.fold``)."""
    model = own
    predicted = 0.0
    if node in testbed.names:
        i = testbed.names.index(node)
        model = testbed.devices[i].compute
        predicted = testbed.links[i].seconds(nbytes)
    if model is not None:
        for start, stop, rows in stages:
            predicted += model.trace_seconds(strip_trace(spec, start, stop, rows))
        if fold and stages:
            start, stop, rows = stages[-1]
            _, h, _ = spec.shape_at(stop)
            share = fold_flops(spec) * (rows[1] - rows[0]) // h
            predicted += model.piece([("head", share)])
    return predicted


def head_seconds(testbed: Testbed, device: int, spec: ModelSpec, nbytes: int) -> float:
    """The head's predicted seconds on plan device ``device``: the last map's
    ``nbytes`` over its link and the head's compute there."""
    return testbed.link(device).seconds(nbytes) + testbed.devices[device].compute.piece(
        [("head", head_flops(spec))]
    )
