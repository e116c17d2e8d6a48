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

Where the head stays on the auctioneer, VGG's first linear layer (fc1, most of the
head's time) can instead be folded into the last stage (:func:`fold_head`): each
part multiplies its own rows of the last map by fc1's matching columns and sends
the partial sums. The plan folds when the simulator says that finishes sooner.

Only our strategies place or fold the head; the baselines run it on the
auctioneer, as their papers do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.core.geometry import Region, Span
from edgeci_p2p.core.plan import Part, Plan, why_not_fold
from edgeci_p2p.core.sim import head_seconds, remote_head_seconds, simulate
from edgeci_p2p.core.units import ModelSpec

HEAD_MIN_GAIN = 0.2
"""Move the head only to save at least this fraction of its time at home: the remote
trip has a failure mode (and a fallback that costs the trip) the home run does not."""

HEAD_MIN_GAIN_S = 0.005
"""... and at least this many seconds."""


FOLD_MIN_GAIN_S = 0.002
"""Fold fc1 into the last stage only to save at least this many seconds: a failed
strip reruns its segment the gather way, which costs more than the head."""

LOAD_BYTES_PER_S = 300e6
"""How fast a peer loads weights it does not hold (drawing seeded weights or reading
a file): a device that must first load the head pays that time, so the planner
prefers one that holds it."""


def load_seconds(testbed: Testbed, d: int) -> float:
    return testbed.devices[d].head_load / LOAD_BYTES_PER_S


def place_head(plan: Plan, spec: ModelSpec, testbed: Testbed, fold: bool = True) -> Plan:
    """``plan`` with ``head_device`` set to the device that finishes the head soonest,
    if that beats the auctioneer by :data:`HEAD_MIN_GAIN` and :data:`HEAD_MIN_GAIN_S`;
    otherwise ``plan`` unchanged. ``predicted`` moves by the time saved.

    A device that would have to load the head pays :func:`load_seconds` first, and one
    whose memory cannot take the head is never chosen. When the auctioneer itself
    cannot take it, the head goes to the soonest device that can, whatever the gain
    (unchanged if none can: the auctioneer then runs it as a last resort)."""
    if plan.fold_head:
        return plan  # already decided: the head stays with the auctioneer
    aid = testbed.auctioneer
    here_fits = testbed.devices[aid].fits_head()
    here = head_seconds(spec, testbed) + load_seconds(testbed, aid)
    folded, fold_gain = fold_head(plan, spec, testbed) if here_fits and fold else (plan, 0.0)
    best, where = (here, aid) if here_fits else (float("inf"), aid)
    for d in range(len(testbed.devices)):
        if d != aid and testbed.devices[d].fits_head():
            t = remote_head_seconds(spec, testbed, d) + load_seconds(testbed, d)
            if t < best:
                best, where = t, d
    if where == aid or fold_gain >= here - best:
        return folded
    if here_fits and here - best < max(HEAD_MIN_GAIN_S, HEAD_MIN_GAIN * here):
        return folded
    predicted = None if plan.predicted is None else plan.predicted - here + best
    notes = {**plan.notes, "head": {"device": where, "here_s": here, "there_s": best}}
    if not here_fits:
        notes["head"]["why"] = "memory: the head does not fit here"
    return replace(plan, head_device=where, predicted=predicted, notes=notes)


def fold_head(plan: Plan, spec: ModelSpec, testbed: Testbed) -> tuple[Plan, float]:
    """``plan`` with fc1 folded into its last stage (``Plan.fold_head``) and the seconds
    that saves, if the simulator says it saves at least :data:`FOLD_MIN_GAIN_S`;
    otherwise ``(plan, 0.0)``. ``predicted`` moves by the time saved.

    The last stage's rows were split for its convolutions alone; folded, each row also
    carries a seventh of fc1 (VGG-16), so the rows are split again: every split of
    the last map's rows among the same devices, in the same order, is simulated
    (20 for 7 rows on 4 devices; at most :data:`FOLD_SPLITS`, else the plan's own)."""
    if plan.fold_head or why_not_fold(plan, spec) is not None:
        return plan, 0.0
    try:
        before = simulate(plan, spec, testbed, record=False).latency
        best, best_t = plan, float("inf")
        for candidate in _last_row_splits(plan, spec):
            t = simulate(candidate, spec, testbed, record=False).latency
            if t < best_t:
                best, best_t = candidate, t
    except ValueError:  # a plan made for other devices than the testbed's
        return plan, 0.0
    gain = before - best_t
    if gain < FOLD_MIN_GAIN_S:
        return plan, 0.0
    predicted = None if plan.predicted is None else plan.predicted - gain
    moved = best.stages[-1] != plan.stages[-1]
    notes = {**plan.notes, "fold": {"saved_s": gain, "rows_moved": moved}}
    return replace(best, predicted=predicted, notes=notes), gain


FOLD_SPLITS = 64
"""The most splits of the last stage's rows :func:`fold_head` simulates."""


def _last_row_splits(plan: Plan, spec: ModelSpec) -> list[Plan]:
    """``plan`` folded, with its last stage's rows as they are and split every other
    way among the same devices in the same order (each keeps at least one row)."""
    last = plan.stages[-1]
    folded = replace(plan, fold_head=True)
    parts = sorted(last.parts, key=lambda p: p.region.rows.start)
    _, h, w = spec.shape_at(last.stop)
    if math.comb(h - 1, len(parts) - 1) > FOLD_SPLITS:
        return [folded]
    out = [folded]
    for cuts in itertools.combinations(range(1, h), len(parts) - 1):
        edges = (0, *cuts, h)
        new = tuple(
            Part(Region(Span(a, b), Span(0, w)), p.device)
            for p, a, b in zip(parts, edges[:-1], edges[1:], strict=True)
        )
        if new != tuple(parts):
            stages = (*plan.stages[:-1], replace(last, parts=new))
            out.append(replace(folded, stages=stages))
    return out


def head_peer(candidates: Mapping[str, tuple[int, int, float]]) -> str | None:
    """The peer to send the head to when the auctioneer cannot hold it, from each
    peer's (free memory, bytes it must load for the head, probe seconds): the fastest
    whose memory takes the head, those that hold it first; None when none can."""
    fits = [
        (load > 0, seconds, peer)
        for peer, (free, load, seconds) in candidates.items()
        if load == 0 or load <= free
    ]
    return min(fits)[2] if fits else None


def with_head_on(plan: Plan, peer: str, why: str) -> Plan:
    """``plan`` with its head on ``peer`` (added to its devices if it has no part)."""
    devices = tuple(plan.devices)
    if peer not in devices:
        devices = (*devices, peer)
    notes = {**plan.notes, "head": {"device": devices.index(peer), "why": why}}
    notes.pop("fold", None)
    return replace(
        plan, devices=devices, head_device=devices.index(peer), notes=notes, fold_head=False
    )
