"""A halo segment of a plan as one ``strip_job`` per peer (strategy ``edgeci-halo``).

In a halo segment (consecutive stages linked by ``transfer="halo"``) every peer keeps
its row strip from one stage to the next; only the rows a neighbour's next stage
reads travel, peer to peer. The auctioneer sends each peer one strip job: its rows
per stage, which rows arrive from whom, which it sends on.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeci_p2p.core.geometry import Span, trace
from edgeci_p2p.core.plan import Plan, row_moves
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.wire.messages import RowsFrom, StripStage


@dataclass(frozen=True)
class SegmentJobs:
    """One halo segment's jobs: per device index, its stages; and the map rows each
    device's first stage reads (cut from the segment's input on the auctioneer)."""

    stages: dict[int, list[StripStage]]
    first_need: dict[int, Span]
    out_rows: dict[int, Span]
    """The rows of the segment's last map each device returns."""


def strip_jobs(
    spec: ModelSpec, plan: Plan, first: int, last: int, nodes: list[str]
) -> SegmentJobs | None:
    """The strip jobs of stages ``first..last`` (a halo segment), or None when the
    segment cannot run as strip jobs (then it runs as gather stages: correct, only
    slower): a device must hold one strip from the segment's first stage on, in
    consecutive stages. It may leave early (the planner drops a device from a map
    too small to share): its last stage then sends its rows on, and the strip it
    returns is not used."""
    stages = plan.stages[first : last + 1]
    devices = stages[0].devices
    for k, st in enumerate(stages):
        if len(st.parts) != len(st.devices) or not set(st.devices) <= set(devices):
            return None
        if k > 0 and not set(st.devices) <= set(stages[k - 1].devices):
            return None  # a device that left cannot come back
    per: dict[int, list[StripStage]] = {d: [] for d in devices}
    need_of: dict[int, Span] = {}
    for k, st in enumerate(stages):
        moves_in = row_moves(spec, stages[k - 1], st) if k > 0 else ()
        moves_out = row_moves(spec, st, stages[k + 1]) if k + 1 < len(stages) else ()
        for p in st.parts:
            need = trace(spec, st.start, st.stop, p.region).need.rows
            if k == 0:
                need_of[p.device] = need
            per[p.device].append(
                StripStage(
                    st.start,
                    st.stop,
                    (p.region.rows.start, p.region.rows.stop),
                    (need.start, need.stop),
                    [
                        RowsFrom(nodes[m.src], (m.rows.start, m.rows.stop))
                        for m in moves_in
                        if m.dst == p.device
                    ],
                    [
                        RowsFrom(nodes[m.dst], (m.rows.start, m.rows.stop))
                        for m in moves_out
                        if m.src == p.device
                    ],
                )
            )
    out_rows = {p.device: p.region.rows for p in stages[-1].parts}
    return SegmentJobs(per, need_of, out_rows)
