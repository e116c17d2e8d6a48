"""The shell's pure policy (edgeci_p2p/policy, auction/decider.py, auction/on_wire.py),
checked without a daemon: tile ids, deadlines, fallbacks, forwarding, link hysteresis,
bounded memories, the round's memo of findings and the auction <-> wire conversion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeci_p2p.aio import strips
from edgeci_p2p.aio.strips import check_job
from edgeci_p2p.auction import decider
from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.on_wire import from_wire, to_wire
from edgeci_p2p.core import cost, geometry
from edgeci_p2p.core.cost import ComputeModel, DeviceModel, LinearFit, LinkModel
from edgeci_p2p.core.geometry import Region, Span, trace
from edgeci_p2p.core.membership import Member
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.policy.deadlines import DeadlinePolicy, strip_job_seconds, tile_seconds
from edgeci_p2p.policy.fallbacks import fallback_order
from edgeci_p2p.policy.forwarding import forward_target, may_forward
from edgeci_p2p.policy.links import DEFAULT_TILE_OVERHEAD, PlannedLinks, measured_link
from edgeci_p2p.policy.recent import RecentSet
from edgeci_p2p.policy.tile_ids import (
    HEAD_TILE_ID,
    STRIP_TILE_BASE,
    GatherTile,
    hedged,
    strip_job_id,
)
from edgeci_p2p.wire.messages import StripJob, StripStage

# ---- tile ids: the numbers old and new peers share -----------------------------------------


def test_tile_ids_are_the_numbers_every_version_puts_on_the_wire() -> None:
    # Stage 3, part 2, attempt 1 was 3*1000+2 -> *8+1; its hedge attempt+4.
    assert GatherTile(3, 2).base == 3002
    assert GatherTile(3, 2).attempt(1) == 3002 * 8 + 1
    assert GatherTile(3, 2).attempt(hedged(1)) == 3002 * 8 + 5
    assert strip_job_id(5, 2) == (1 << 24) + 5 * 64 + 2 == STRIP_TILE_BASE + 322
    assert HEAD_TILE_ID == (1 << 24) - 1
    # Gather ids of any real plan stay below the head's and the strips'.
    assert GatherTile(2000, 999).attempt(7) < HEAD_TILE_ID
    with pytest.raises(ValueError):
        GatherTile(0, 1000)
    with pytest.raises(ValueError):
        strip_job_id(0, 64)


def test_ids_of_different_tiles_and_attempts_never_collide() -> None:
    ids = {GatherTile(s, p).attempt(a) for s in range(20) for p in range(8) for a in range(8)}
    assert len(ids) == 20 * 8 * 8
    strips = {strip_job_id(s, d) for s in range(40) for d in range(64)}
    assert len(strips) == 40 * 64 and not ids & strips and HEAD_TILE_ID not in ids | strips


# ---- deadlines ------------------------------------------------------------------------------


def _testbed() -> cost.Testbed:
    fast = ComputeModel({"conv": LinearFit(1e-10, 0.0)})
    slow = ComputeModel({"conv": LinearFit(4e-10, 0.0)})
    return cost.Testbed(
        "t",
        (DeviceModel("a", fast, 1 << 30), DeviceModel("b", slow, 1 << 30)),
        (LinkModel(1e9, 0.0), LinkModel(1e6, 0.002)),
    )


def test_deadline_and_hedge_scale_the_prediction() -> None:
    p = DeadlinePolicy(factor=4.0, margin=2.0, hedge_factor=2.0, hedge_margin=0.5)
    assert p.deadline(0.25) == 3.0
    assert p.hedge_after(0.25) == 1.0
    assert p.hedge_after(1.0) < p.deadline(1.0)


def test_tile_prediction_uses_the_plans_device_and_link_else_this_node() -> None:
    spec = spec_for("vgg16", 64, 64)
    tb = _testbed()
    tr = trace(spec, 0, 2, Region(Span(0, 32), Span(0, 64)))
    own = ComputeModel({"conv": LinearFit(2e-10, 0.0)})
    on_b = tile_seconds(tb, "b", tr, 10_000, own)
    assert on_b == pytest.approx(
        tb.devices[1].compute.trace_seconds(tr) + tb.links[1].seconds(10_000)
    )
    assert tile_seconds(tb, "stranger", tr, 10_000, own) == own.trace_seconds(tr)
    assert tile_seconds(tb, "stranger", tr, 10_000, None) == 0.0
    rows = [(0, 2, (0, 32))]
    assert strip_job_seconds(tb, "b", spec, rows, 10_000, own) == pytest.approx(on_b)


def test_a_strip_jobs_prediction_traces_each_strip_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request prices the strip jobs it sends (their deadlines): the strips are
    traced once, and the price is the traced one, stage by stage, to the bit."""
    spec = spec_for("vgg16", 64, 64)
    tb = _testbed()
    job = [(0, 3, (5, 19)), (3, 6, (3, 9)), (6, 8, (1, 4))]
    model = tb.devices[1].compute
    want = tb.links[1].seconds(1000) + sum(
        model.trace_seconds(trace(spec, a, b, Region(Span(*rows), Span(0, spec.shape_at(b)[2]))))
        for a, b, rows in job
    )
    traced: list[int] = []
    real = geometry.trace
    counting = lambda *a: traced.append(1) or real(*a)  # noqa: E731
    monkeypatch.setattr(geometry, "trace", counting)
    monkeypatch.setattr(strips, "trace", counting, raising=False)  # as its check once did
    geometry._STRIPS.clear()
    for _ in range(3):
        assert strip_job_seconds(tb, "b", spec, job, 1000, None) == want
    assert len(traced) == len(job)
    # The peer that gets a job checks its rows on the same traces.
    need = geometry.strip_trace(spec, 0, 3, (5, 19)).need.rows
    first = StripStage(0, 3, (5, 19), (need.start, need.stop), [], [])
    x = np.zeros((1, 3, need.stop - need.start, 64), np.float32)
    check_job(StripJob("r", 1, 1, spec.name, "fp", [first], x, (64, 64)), spec)
    assert len(traced) == len(job)


# ---- fallbacks and forwarding -----------------------------------------------------------------


def _member(node: str, gflops: float) -> Member:
    m = Member(node, "127.0.0.1", 1)
    m.speed_gflops = gflops
    return m


def test_a_lost_tile_goes_to_the_fastest_usable_others_then_here() -> None:
    serving = [_member("slow", 1.0), _member("first", 9.0), _member("fast", 5.0),
               _member("banned", 8.0), _member("mid", 3.0)]  # fmt: skip
    order = fallback_order("first", serving, lambda n: n != "banned", 2, "me")
    assert order == ["fast", "mid", "me"]
    assert fallback_order("first", serving, lambda n: False, 2, "me") == ["me"]


def test_forwarding_picks_the_queue_that_ends_first_if_it_beats_ours() -> None:
    probe = {"me": 0.1, "a": 0.1, "b": 0.05}
    # Busy with one request: ours ends at 0.2; b's (empty) at 0.05.
    assert forward_target(1, probe["me"], ["a", "b"], probe, {}) == "b"
    # b already has three of ours in flight: 0.2 is not sooner than our 0.2; a's is 0.1.
    assert forward_target(1, probe["me"], ["a", "b"], probe, {"b": 3}) == "a"
    # Unmeasured peers and an unmeasured self never forward.
    assert forward_target(1, None, ["a"], probe, {}) is None
    assert forward_target(1, 0.1, ["unknown"], probe, {}) is None
    assert not may_forward(0, "edgeci", 0)  # idle: run it here
    assert not may_forward(1, "edgeci", 3)  # already forwarded once
    assert not may_forward(0, "aofl", 3)  # baselines run where they entered
    assert may_forward(0, "edgeci-halo", 1)


# ---- link figures -----------------------------------------------------------------------------


def test_planned_links_take_measurements_and_change_only_past_2x() -> None:
    m = Member("peer", "10.0.0.2", 7420)
    m.rtt = 0.001
    assert measured_link(m, 0.5, None) == (2e8, DEFAULT_TILE_OVERHEAD)  # the priors
    assert measured_link(m, 0.5, 11e6) == (11e6, 0.001)  # a known rate wins
    links = PlannedLinks()

    def probe(rate: float) -> list[tuple[int, float]]:  # 128 KiB at ``rate`` past the rtt
        return [(131072, m.rtt + 131072 / rate)]

    m.probe_samples = probe(50e6)
    first = links.adjust(am.Bid("a", "peer", bandwidth=1e9, rtt=0.0), m)
    assert (first.bandwidth, first.rtt) == (m.probed_bandwidth, DEFAULT_TILE_OVERHEAD)
    m.probe_samples = probe(80e6)  # within 2x: the planned figures hold (the plan cache hits)
    assert links.adjust(am.Bid("b", "peer"), m).bandwidth == first.bandwidth
    m.probe_samples = probe(120e6)  # past 2x: re-planned
    assert links.adjust(am.Bid("c", "peer"), m).bandwidth == pytest.approx(120e6)
    bid = am.Bid("d", "stranger", bandwidth=3.0, rtt=4.0)
    assert links.adjust(bid, None) is bid


# ---- bounded memories -------------------------------------------------------------------------


def test_recent_set_forgets_the_oldest_first() -> None:
    r = RecentSet[int](3)
    for k in (1, 2, 3):
        r.add(k)
    r.add(1)  # re-added: now the newest
    r.add(4)
    assert list(r) == [3, 1, 4] and 2 not in r and 4 in r and len(r) == 3
    with pytest.raises(ValueError):
        RecentSet[int](0)


# ---- the round's memo and margin ------------------------------------------------------------


def test_alone_memo_holds_for_the_same_peers_until_its_ttl() -> None:
    memo = decider.AloneMemo()
    idle = [am.Bid("r", p, 0.0) for p in ("a", "b")]
    memo.remember("k", idle, ["a", "b"], now=100.0)
    assert memo.holds("k", ["b", "a"], 100.0 + decider.ALONE_IDLE_TTL - 0.1)
    assert not memo.holds("k", ["a"], 101.0)  # other peers
    assert not memo.holds("k", ["a", "b"], 100.0 + decider.ALONE_IDLE_TTL)
    busy = [am.Bid("r", "a", 0.5)]
    memo.remember("k", busy, ["a"], now=0.0)
    assert not memo.holds("k", ["a"], decider.ALONE_TTL + 0.01)
    memo.forget("k")
    assert not memo.holds("k", ["a"], 0.0)


# ---- auction messages on the wire -----------------------------------------------------------


def test_every_auction_message_crosses_the_wire_and_back_unchanged() -> None:
    item = am.WorkItem("s0", {"conv": 1_000_000}, 10, 20, 30, {"conv": 1})
    msgs: list[am.CallForBids | am.Bid | am.Award | am.AwardReply | am.Release] = [
        am.CallForBids("r", "me", "fp", (item,), 0.1),
        am.Bid("r", "p", 0.5, {"s0": 0.2}, 1 << 20, 1e8, 0.002, 1.0, ""),
        am.Award("r", "p", (item,), 2, 5.0, 0.5),
        am.AwardReply("r", "p", 2, False, "capacity"),
        am.Release("r", "p"),
    ]
    for m in msgs:
        wire = to_wire(m)
        names = {am.CallForBids: "call_for_bids", am.Bid: "bid", am.Award: "award"}
        assert names.get(type(m), wire.TYPE) == wire.TYPE
        assert from_wire(wire) == m  # type: ignore[arg-type]


def test_calibration_moves_the_bids_by_windows_past_its_band_onto_a_grid() -> None:
    from edgeci_p2p.policy.calibration import SpeedCalibration

    cal = SpeedCalibration(window_s=0.095, skip_windows=0, min_windows=2, band=0.2, grid=1.1)
    # Ten pieces fill a window of 0.095 predicted seconds; one window is not a slow peer.
    for _ in range(9):
        assert cal.observe(0.010, 0.013) is None
    assert cal.observe(0.010, 0.013) is None and cal.windows == 1
    for _ in range(9):
        assert cal.observe(0.010, 0.013) is None
    # Second window: 1.3x is past the 20% band; in force as the nearest 1.1**k.
    assert cal.observe(0.010, 0.013) == pytest.approx(1.1**3)
    assert cal.slowdown == pytest.approx(1.331)
    # Noisy pieces are judged by their windows' sums: a window of 0.8x and 1.8x
    # pieces that adds up to 1.3x leaves the bids as they are.
    for _ in range(10):
        for p, m in ((0.010, 0.008), (0.010, 0.018)):
            assert cal.observe(p, m) is None
    assert cal.estimate == pytest.approx(1.3, rel=0.01)
    # Within the band of the factor in force: the bids stay (a new bid is a new plan).
    for _ in range(50):
        assert cal.observe(0.010, 0.015) is None
    assert cal.slowdown == pytest.approx(1.331)
    # Pieces too short to time, and nonsense, are not counted at all.
    before = (cal.predicted, cal.measured)
    assert cal.observe(0.0005, 0.5) is None and cal.observe(0.01, 0.0) is None
    assert (cal.predicted, cal.measured) == before
    # A stalled machine is bounded: 100x slower counts as the highest factor.
    cal2 = SpeedCalibration(window_s=0.01, skip_windows=0, min_windows=1)
    assert cal2.observe(0.01, 1.0) == pytest.approx(cal2.highest)
    # The first window (a cold peer's) is left out of the estimate.
    cal3 = SpeedCalibration(window_s=0.01, skip_windows=1, min_windows=1)
    assert cal3.observe(0.01, 0.03) is None and cal3.windows == 0
    assert cal3.observe(0.01, 0.0101) is None and cal3.estimate == pytest.approx(1.01)
    with pytest.raises(ValueError):
        SpeedCalibration(lowest=1.5)


class _CountingPlanner:
    """A stand-in for AwasPlanner: records the bids it planned with."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, ...]] = []
        self.plan = None
        self.testbed = None
        self.left_out: dict[str, str] = {}

    def __call__(self, call: object, bids: object) -> dict[str, tuple[object, ...]]:
        durations = tuple(d for b in bids for d in b.duration.values())  # type: ignore[attr-defined]
        self.calls.append(durations)
        return {"planned-with": durations}


def _bids(speed: float, backlog: float = 0.0) -> list[am.Bid]:
    return [
        am.Bid("auc", p, backlog=backlog, duration={"i0": 0.1 / speed}, valid_for=1.0)
        for p in ("peer-a", "peer-b")
    ]


def test_new_speed_figures_get_the_old_plan_at_once_and_the_new_one_next() -> None:
    inner = _CountingPlanner()
    cached = decider.CachedDecider(inner)  # type: ignore[arg-type]
    call = am.CallForBids("auc", "me", "fp", (am.WorkItem("i0", {"conv": 1}),), window=0.1)
    first = cached(call, _bids(1.0))
    assert len(inner.calls) == 1 and cached.pending is None
    # A peer recalibrated: the same bidders, backlogs and links, other speeds. The round
    # is answered with the plan it has, and the new one is left for refresh().
    assert cached(call, _bids(1.3)) == first
    assert (len(inner.calls), cached.stale) == (1, 1) and cached.pending is not None
    assert cached.refresh() and len(inner.calls) == 2
    assert not cached.refresh()  # nothing left to plan
    assert cached(call, _bids(1.3)) == {"planned-with": (0.1 / 1.3, 0.1 / 1.3)}
    assert (len(inner.calls), cached.hits) == (2, 1)
    # A link measured anew is a figure like a speed: the plan at hand, the new one later.
    slower_link = [replace(b, rtt=b.rtt + 0.005) for b in _bids(1.3)]
    assert cached(call, slower_link) == {"planned-with": (0.1 / 1.3, 0.1 / 1.3)}
    assert (len(inner.calls), cached.stale) == (2, 2) and cached.refresh()
    # Anything but speeds (here the backlog) is planned for at once, on the round's path.
    cached(call, _bids(1.3, backlog=0.5))
    assert len(inner.calls) == 4 and cached.pending is None
    # Without stale answers every new figure is planned at once.
    strict = decider.CachedDecider(_CountingPlanner(), stale_ok=False)  # type: ignore[arg-type]
    strict(call, _bids(1.0))
    strict(call, _bids(1.3))
    assert (strict.stale, strict.misses, strict.pending) == (0, 2, None)


def test_small_moves_are_priced_into_the_plan_at_hand_and_planned_for_once_they_add_up() -> None:
    inner = _CountingPlanner()
    cached = decider.CachedDecider(inner)  # type: ignore[arg-type]
    call = am.CallForBids("auc", "me", "fp", (am.WorkItem("i0", {"conv": 1}),), window=0.1)
    first = cached(call, _bids(1.0))
    # Link estimates a few percent and a millisecond off, a speed 5% off: the plan at
    # hand answers (stale) and nothing is left to plan in the child.
    jitter = [replace(b, bandwidth=b.bandwidth * 1.1, rtt=b.rtt + 0.001) for b in _bids(1.05)]
    assert cached(call, jitter) == first
    assert (len(inner.calls), cached.stale, cached.pending) == (1, 1, None)
    # Drift is measured from the bids the plan was made for: 1.05, 1.10, then 1.2 of the
    # first speed is past MATERIAL_SPEED, and the round is left to plan anew.
    assert cached(call, _bids(1.1)) == first and cached.pending is None
    assert cached(call, _bids(1.2)) == first and cached.pending is not None
    assert cached.refresh() and len(inner.calls) == 2


def test_what_moves_materially() -> None:
    call = am.CallForBids("auc", "me", "fp", (am.WorkItem("i0", {"conv": 1}),), window=0.1)
    key = decider.CachedDecider.key
    bids = [replace(b, bandwidth=12e6) for b in _bids(1.0)]
    base = key(call, bids)

    def moved(**change: float) -> bool:
        return decider.moved_materially(base, key(call, [replace(b, **change) for b in bids]))

    assert not moved(piece_s=0.0015) and moved(piece_s=0.0025)
    assert not moved(rtt=0.0025) and moved(rtt=0.0035)
    assert not moved(bandwidth=12e6 * 1.2) and moved(bandwidth=12e6 * 1.3)
    slower = [replace(b, bandwidth=12e6) for b in _bids(1.0 / 1.16)]
    assert decider.moved_materially(base, key(call, slower))
