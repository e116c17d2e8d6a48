"""One request this node answers, as an object: its input, plan, stats and pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.aio.auctioneer import Decision
from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
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
