"""Where the head runs (pure): on the auctioneer, or on a device that finishes it sooner.

The last map is always assembled on the auctioneer (every plan's last stage
gathers). The head (global pool + classifier) usually runs there too, but the
device a request enters is often not the one to run it on: a camera-class entry
peer takes 200 ms over VGG-16's classifier (124M weights, memory-bound), a laptop
in the same cluster 20 ms, and the map it needs is 100 KB. :func:`place_head`
moves the head when the last map's trip, the head there and the logits' trip back
(:func:`~edgeci_p2p.core.sim.remote_head_seconds`) beat the head at home by a
clear margin; the simulator and the daemon then do exactly that, and the daemon
runs the head at home if that device fails.

Only our strategies place the head; the baselines run it on the auctioneer, as
their papers do.
"""

from __future__ import annotations

from dataclasses import replace

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import head_seconds, remote_head_seconds
from edgeci_p2p.core.units import ModelSpec

HEAD_MIN_GAIN = 0.2
"""Move the head only to save at least this fraction of its time at home: the remote
trip has a failure mode (and a fallback that costs the trip) the home run does not."""

HEAD_MIN_GAIN_S = 0.005
"""... and at least this many seconds."""


def place_head(plan: Plan, spec: ModelSpec, testbed: Testbed) -> Plan:
    """``plan`` with ``head_device`` set to the device that finishes the head soonest,
    if that beats the auctioneer by :data:`HEAD_MIN_GAIN` and :data:`HEAD_MIN_GAIN_S`;
    otherwise ``plan`` unchanged. ``predicted`` moves by the time saved."""
    aid = testbed.auctioneer
    here = head_seconds(spec, testbed)
    best, where = here, aid
    for d in range(len(testbed.devices)):
        if d != aid:
            t = remote_head_seconds(spec, testbed, d)
            if t < best:
                best, where = t, d
    if where == aid or here - best < max(HEAD_MIN_GAIN_S, HEAD_MIN_GAIN * here):
        return plan
    predicted = None if plan.predicted is None else plan.predicted - here + best
    notes = {**plan.notes, "head": {"device": where, "here_s": here, "there_s": best}}
    return replace(plan, head_device=where, predicted=predicted, notes=notes)
