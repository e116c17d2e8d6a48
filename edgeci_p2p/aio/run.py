"""One request this node answers, as an object: its input, plan, stats and pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.auctioneer import Decision
from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.timeline import Offset, Timeline
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.wire.messages import InferRequest


@dataclass
class RunStats:
    """What one request cost: per-node compute seconds, transfer seconds, bytes moved."""

    compute: dict[str, float] = field(default_factory=dict)
    transfer_s: float = 0.0
    """Round-trip time of remote tiles minus their compute time, summed."""
    bytes: int = 0
    """Tile inputs sent plus tile outputs received over the network."""
    retries: int = 0
    """Tiles given to another peer (or computed here) after their peer failed."""
    hedges: int = 0
    """Straggling tiles that got a second copy elsewhere."""

    def computed(self, node: str, seconds: float) -> None:
        self.compute[node] = self.compute.get(node, 0.0) + seconds


@dataclass
class RequestRun:
    """A request being answered here, from its decision to its result."""

    req: InferRequest
    decision: Decision
    timing: dict[str, float]
    """Seconds spent before execution (the auction)."""
    spec: ModelSpec
    fingerprint: str
    x: torch.Tensor
    """The normalised input."""
    pixels: npt.NDArray[np.uint8] | None
    """The input's uint8 pixels when it has exact ones: first-stage slabs travel as
    pixels, a quarter of the bytes."""
    t_start: float
    stats: RunStats = field(default_factory=RunStats)
    timeline: Timeline | None = None
    folded: bool = False
    """The last segment answered with fc1's partial sums, added up, not the last map
    (``Plan.fold_head``; False again when it fell back to gathering)."""
    reached: set[str] = field(default_factory=set)
    """Peers sent a tile or a strip job of this request: each turned its reservation
    into queued work there (an awarded peer sent neither is released at the end)."""
    """The request's spans on every node, when it asked for them (``trace``)."""

    def span(
        self,
        node: str,
        name: str,
        start: float,
        stop: float,
        lane: str = "compute",
        stage: int | None = None,
        tile: int | None = None,
    ) -> None:
        """Record a step measured here (``time.monotonic`` values), if traced."""
        if self.timeline is not None:
            self.timeline.add(node, name, start, stop, lane, stage, tile)

    def remote_spans(
        self,
        node: str,
        spans: list[list[Any]] | None,
        offset: Offset | None,
        stage: int | None = None,
        tile: int | None = None,
    ) -> None:
        """Record the steps a peer reported on its own clock (``tile_result.spans``); a
        step that names its stage's first unit (a strip job's) gets that stage."""
        if self.timeline is None or not spans:
            return
        first_unit = {st.start: i for i, st in enumerate(self.plan.stages)}
        for span in spans:
            name, start, stop, lane = span[:4]
            at = first_unit.get(int(span[4]), stage) if len(span) > 4 else stage
            self.timeline.add_remote(node, str(name), start, stop, offset, str(lane), at, tile)

    @property
    def request_id(self) -> str:
        return self.req.request_id

    @property
    def model(self) -> str:
        return self.req.model

    @property
    def plan(self) -> Plan:
        return self.decision.plan

    @property
    def nodes(self) -> list[str]:
        return self.decision.nodes

    @property
    def testbed(self) -> Testbed:
        return self.decision.testbed

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.spec.input_shape[1], self.spec.input_shape[2])
