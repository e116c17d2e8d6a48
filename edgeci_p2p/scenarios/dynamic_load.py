"""The dynamic-load scenario: a shared cluster under Poisson requests (pure simulation).

Requests arrive as a Poisson process, each at a peer drawn uniformly (that peer
is its auctioneer), while every peer also carries bursty background load from
other tenants: in each ``period`` (a multiple of edgeci's unloaded latency)
a peer is busy with probability equal to its
duty cycle, and then other tenants take ``busy_share`` of its CPU (+- ``jitter``),
else next to nothing. Duty cycles are uneven: spread evenly between
``background[0]`` and ``background[1]`` over the peers, shuffled. A task on a
peer runs ``1 / (1 - share)`` times slower.

Requests overlap, so they queue for the same peers and the same radio: each
peer's CPU and the radio cell are calendars of reserved intervals, and a
request's transfers and tiles take the first free slot after they are ready
(requests are admitted in arrival order). The stage model is the simulator's
(:mod:`edgeci_p2p.core.sim`): slabs scattered in part order through the
auctioneer's radio, one tile at a time per peer, strips gathered, head on the
auctioneer; a link between two peers is the slower of their two links.

Strategies:

* ``edgeci``: AWAS + DPFL, re-bid per request. Every peer bids from its true
  state at the arrival time (its measured model slowed by its current
  background share, its queue of accepted work), the round runs (bids arrive
  after one round trip, awards are confirmed after another, both added to the
  latency) and the work goes where the bids say (:mod:`edgeci_p2p.auction.awas`).
* the baselines (``aofl``, ``edgeld``, ``modnn``, ...): their plan for the
  unloaded testbed with that auctioneer (static capacities), computed once.

The arrival rate is ``load / idle latency`` of edgeci's plan on the unloaded
testbed, the same for every strategy, and every strategy sees the same
arrivals and the same background trace (per seed; ``seeds`` runs are pooled).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgeci_p2p.auction.awas import AwasPlanner, probe_call, push_stage
from edgeci_p2p.auction.bidder import Bidder
from edgeci_p2p.auction.messages import Award, Release
from edgeci_p2p.auction.round import AuctionRound, Phase, RoundConfig
from edgeci_p2p.core.cost import LinkModel, Testbed
from edgeci_p2p.core.geometry import head_flops
from edgeci_p2p.core.plan import Part, Plan, Stage, single_stage
from edgeci_p2p.core.sim import Task, head_bytes, head_seconds, simulate, stage_tasks
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.core.workload import Workload

PlanFn = Callable[[str, ModelSpec, Testbed], Plan]
"""(strategy, spec, testbed) -> plan: the planner registry."""

STATIC_BASELINES: tuple[str, ...] = ("aofl", "edgeld", "modnn")


@dataclass(frozen=True)
class Scenario:
    requests: int = 40
    """Requests simulated per (model, testbed, strategy)."""
    load: float = 0.2
    """Arrival rate times edgeci's unloaded latency (offered load, before background)."""
    background: tuple[float, float] = (0.1, 0.6)
    """Range of the peers' background duty cycles (spread evenly, shuffled)."""
    busy_share: float = 0.8
    """CPU share other tenants take from a peer while it is busy."""
    period: float = 10.0
    """How long each peer's background state lasts, in units of edgeci's unloaded
    latency (so every model and testbed sees the same number of load changes per
    request). Other tenants' jobs outlast a request, so a bid still describes the
    peer when the work arrives; if the load flips within a request (period ~4 or
    less), bids go stale and re-bidding gains little over static plans."""
    jitter: float = 0.1
    seed: int = 1
    seeds: int = 5
    """Independent runs (arrivals, duty cycles, background trace) pooled together,
    so that one lucky or unlucky draw for a dominant peer does not decide the result."""
    window: float = 0.1
    """The bid window (an upper bound: rounds close when every peer answered)."""
    horizon: float = 60.0
    """Seconds of committed work a peer will promise before it declines."""


# ---- the shared world ---------------------------------------------------------------------


class Calendar:
    """Reserved, disjoint busy intervals of one resource (a CPU or the radio)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.stops: list[float] = []

    def reserve(self, earliest: float, duration: float) -> float:
        """Book the first free slot of ``duration`` at or after ``earliest``; its start."""
        if duration <= 0:
            return earliest
        t = earliest
        k = bisect.bisect_right(self.stops, t)  # intervals ending after t
        while k < len(self.starts):
            if self.starts[k] >= t + duration:
                break
            t = max(t, self.stops[k])
            k += 1
        self.starts.insert(k, t)
        self.stops.insert(k, t + duration)
        return t

    def busy_after(self, now: float) -> float:
        """Seconds of booked work after ``now`` (a peer's queue of accepted work)."""
        k = bisect.bisect_right(self.stops, now)
        return sum(b - max(a, now) for a, b in zip(self.starts[k:], self.stops[k:], strict=True))

    def forget_before(self, t: float) -> None:
        k = bisect.bisect_right(self.stops, t)
        del self.starts[:k], self.stops[:k]


class World:
    """Peers' CPUs, the radio, and the background load over time."""

    def __init__(self, testbed: Testbed, sc: Scenario, idle_latency: float = 1.0) -> None:
        self.testbed = testbed
        self.sc = sc
        self.period = sc.period * idle_latency
        n = len(testbed.devices)
        rng = random.Random(sc.seed)
        lo, hi = sc.background
        means = [lo + (hi - lo) * k / max(1, n - 1) for k in range(n)]
        rng.shuffle(means)
        self.means = means
        self.cpu = [Calendar() for _ in range(n)]
        self._radios: dict[tuple[int, int], Calendar] = {}

    def share(self, device: int, t: float) -> float:
        """Background CPU share of ``device`` at time ``t`` (piecewise constant)."""
        q = int(t // self.period)
        r = random.Random(self.sc.seed * 1_000_003 + device * 10_007 + q)
        busy = r.random() < self.means[device]
        level = self.sc.busy_share if busy else 0.0
        return min(0.95, max(0.0, level + r.uniform(-1, 1) * self.sc.jitter))

    def radio(self, auctioneer: int, inbound: bool) -> Calendar:
        # One Wi-Fi cell: everything shares one half-duplex medium. Switched links:
        # each auctioneer's NIC sends one frame at a time and receives one at a time.
        key = (-1, 0) if self.testbed.shared_medium else (auctioneer, int(inbound))
        return self._radios.setdefault(key, Calendar())

    def run_task_compute(self, device: int, ready: float, seconds: float) -> float:
        """Book ``seconds`` of unloaded work on ``device`` from ``ready``; when it is done."""
        dur = seconds / (1.0 - self.share(device, ready))
        return self.cpu[device].reserve(ready, dur) + dur

    def forget_before(self, t: float) -> None:
        for c in self.cpu:
            c.forget_before(t)
        for c in self._radios.values():
            c.forget_before(t)


def rebase(testbed: Testbed, auctioneer: int) -> Testbed:
    """The testbed seen from another auctioneer: a peer-to-peer link is the slower
    of the two peers' links to the original auctioneer."""
    a = testbed.links[auctioneer]
    links = tuple(
        LinkModel(min(ln.bandwidth, a.bandwidth), max(ln.rtt, a.rtt)) for ln in testbed.links
    )
    return replace(testbed, links=links, auctioneer=auctioneer)


def execute(
    plan: Plan, spec: ModelSpec, tb: Testbed, world: World, t0: float, work: Workload
) -> float:
    """Run ``plan`` (devices named as in ``tb``) in ``world`` from ``t0``.

    Returns when the logits are out."""
    index = {name: i for i, name in enumerate(tb.names)}
    t = t0
    for st in plan.stages:
        parts = tuple(Part(p.region, index[plan.devices[p.device]]) for p in st.parts)
        tasks = stage_tasks(Stage(st.start, st.stop, parts), spec, tb, work)
        t = _run_stage(tasks, tb, world, t)
    h, aid = index[plan.devices[plan.head_at]], tb.auctioneer
    if h == aid:
        return world.run_task_compute(aid, t, head_seconds(spec, tb))
    # The head on another device: the last map out on the auctioneer's radio, the head
    # in that device's queue, the logits back.
    out_b, back_b = head_bytes(spec)
    link = tb.links[h]
    dur = out_b / link.bandwidth
    sent = world.radio(aid, True).reserve(t, dur) + dur + link.rtt / 2
    run = tb.devices[h].compute.piece([("head", head_flops(spec))])
    done = world.run_task_compute(h, sent, run)
    dur = back_b / link.bandwidth
    return world.radio(aid, False).reserve(done, dur) + dur + link.rtt / 2


def _run_stage(tasks: Sequence[Task], tb: Testbed, world: World, t0: float) -> float:
    aid = tb.auctioneer

    def scatter(ready: float, dur: float) -> float:
        return world.radio(aid, True).reserve(ready, dur) + dur

    def gather(ready: float, dur: float) -> float:
        return world.radio(aid, False).reserve(ready, dur) + dur

    return push_stage(tasks, tb, t0, scatter, world.run_task_compute, gather)


# ---- one request per strategy ----------------------------------------------------------------


def awas_request(
    spec: ModelSpec,
    tb: Testbed,
    world: World,
    now: float,
    sc: Scenario,
    auction_id: str,
    planners: dict[int, AwasPlanner] | None = None,
) -> tuple[Plan, float]:
    """Run an AWAS round against the peers' true state at ``now``.

    Returns the placed plan and when the work can start (after the bid and award
    round trips). With no usable bid the auctioneer runs the model itself.
    """
    names = tb.names
    aname = names[tb.auctioneer]
    bidders = {}
    for i, d in enumerate(tb.devices):
        b = Bidder(
            d.name,
            d.compute,
            tb.link(i),
            d.memory_bytes,
            horizon=sc.horizon,
            background=world.share(i, now),
        )
        b.busy_until = now + world.cpu[i].busy_after(now)
        bidders[d.name] = b
    call = probe_call(auction_id, aname, spec, sc.window)
    planners = {} if planners is None else planners
    decider = planners.setdefault(
        tb.auctioneer, AwasPlanner(spec, tb.shared_medium, own=tb.devices[tb.auctioneer].compute)
    )
    rnd = AuctionRound(call, frozenset(names), RoundConfig(window=sc.window), decide=decider)
    rnd.start(now)
    t = now + max(tb.link(i).rtt for i in range(len(names)))  # the last bid is in
    sends = []
    for name in sorted(names):
        sends += rnd.receive_bid(bidders[name].bid(call, now), t)
    if rnd.phase is Phase.COLLECTING:  # cannot happen when all answer, kept for safety
        sends += rnd.handle_timer(now + sc.window)
    while rnd.phase is Phase.AWARDING:
        # Awards travel to the winners only (the auctioneer's own is local).
        t += max((tb.link(names.index(x.to)).rtt for x in sends), default=0.0)
        replies = []
        for s in sends:
            if isinstance(s.message, Award):
                replies.append(bidders[s.to].accept(s.message, t))
            elif isinstance(s.message, Release):
                bidders[s.to].release(s.message.auction_id)
        sends = []
        for rep in replies:
            sends += rnd.receive_reply(rep, t)
    if rnd.phase is Phase.LOCAL or decider.plan is None:
        stage = single_stage(spec, 0, spec.n_units, tb.auctioneer)
        local = Plan(spec.name, "edgeci", tb.name, tuple(names), (stage,), tb.auctioneer)
        return local, t
    for p in sorted(rnd.awards):
        rnd.mark_delivered(p, t)
    return decider.plan, t


@dataclass(frozen=True)
class Outcome:
    strategy: str
    latencies: tuple[float, ...]

    def row(self, model: str, testbed: str) -> dict[str, Any]:
        ms = sorted(x * 1e3 for x in self.latencies)
        return {
            "model": model,
            "testbed": testbed,
            "strategy": self.strategy,
            "mean_ms": round(sum(ms) / len(ms), 1),
            "p50_ms": round(percentile(ms, 50), 1),
            "p95_ms": round(percentile(ms, 95), 1),
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def idle_latency(testbed: Testbed, spec: ModelSpec, plan_fn: PlanFn) -> float:
    """edgeci's latency on the unloaded testbed: the scenario's unit of time."""
    return simulate(plan_fn("edgeci", spec, testbed), spec, testbed, record=False).latency


def arrivals(
    testbed: Testbed, spec: ModelSpec, sc: Scenario, idle: float, seed: int
) -> list[tuple[float, int]]:
    """(time, auctioneer) of each request: Poisson at ``sc.load`` over ``idle``."""
    rate = sc.load / idle
    rng = random.Random(seed + 17)
    t = 0.0
    out = []
    for _ in range(sc.requests):
        t += rng.expovariate(rate)
        out.append((t, rng.randrange(len(testbed.devices))))
    return out


def run_strategy(
    strategy: str,
    spec: ModelSpec,
    testbed: Testbed,
    sc: Scenario,
    plan_fn: PlanFn,
    seed: int,
    idle: float,
) -> list[float]:
    """Latency of every request of one seeded run under ``strategy``."""
    world = World(testbed, replace(sc, seed=seed), idle)
    work = Workload(spec)
    static: dict[int, Plan] = {}
    planners: dict[int, AwasPlanner] = {}  # one per auctioneer, as each daemon keeps its own
    lat: list[float] = []
    for k, (t, a) in enumerate(arrivals(testbed, spec, sc, idle, seed)):
        tb = rebase(testbed, a)
        if strategy == "edgeci":
            plan, start = awas_request(spec, tb, world, t, sc, f"req{k}", planners)
        else:
            if a not in static:
                static[a] = plan_fn(strategy, spec, tb)
            plan, start = static[a], t
        lat.append(execute(plan, spec, tb, world, start, work) - t)
        world.forget_before(t - 60.0)
    return lat


def dynamic_load(
    spec: ModelSpec,
    testbed: Testbed,
    plan_fn: PlanFn,
    strategies: Sequence[str] = ("edgeci", *STATIC_BASELINES),
    sc: Scenario | None = None,
) -> list[dict[str, Any]]:
    """One row per strategy: ``{"model", "testbed", "strategy", "mean_ms", "p50_ms", "p95_ms"}``."""
    sc = sc or Scenario()
    idle = idle_latency(testbed, spec, plan_fn)
    rows = []
    for s in strategies:
        lat: list[float] = []
        for k in range(sc.seeds):
            lat += run_strategy(s, spec, testbed, sc, plan_fn, sc.seed + k, idle)
        rows.append(Outcome(s, tuple(lat)).row(spec.name, testbed.name))
    return rows


# ---- the command line (``edgeci bench sim --scenario dynamic-load``) --------------------------

DEFAULT_TESTBEDS: tuple[str, ...] = ("pi4-wifi-4", "mixed-8")


def table(rows: Sequence[dict[str, Any]], sc: Scenario) -> str:
    """Rows as a table, with edgeci's mean-latency reduction over each baseline."""
    lines = [
        f"dynamic load: {sc.requests} Poisson requests x {sc.seeds} seeds at load {sc.load} "
        f"(of edgeci's unloaded latency), bursty background (duty {sc.background[0]}-"
        f"{sc.background[1]}, {sc.busy_share:.0%} of the CPU while busy)",
        f"{'model':<10} {'testbed':<12} {'strategy':<9} {'mean ms':>10} {'p50 ms':>10} "
        f"{'p95 ms':>10} {'edgeci mean':>12}",
    ]
    ours = {(r["model"], r["testbed"]): r["mean_ms"] for r in rows if r["strategy"] == "edgeci"}
    for r in rows:
        mine = ours.get((r["model"], r["testbed"]))
        cut = "" if mine is None or r["strategy"] == "edgeci" else f"{1 - mine / r['mean_ms']:+.1%}"
        lines.append(
            f"{r['model']:<10} {r['testbed']:<12} {r['strategy']:<9} {r['mean_ms']:>10.1f} "
            f"{r['p50_ms']:>10.1f} {r['p95_ms']:>10.1f} {cut:>12}"
        )
    lines.append("(edgeci mean: how much lower edgeci's mean latency is than that strategy's)")
    return "\n".join(lines)


def run_command(
    models: Sequence[str],
    testbeds: Sequence[str] | None,
    strategies: Sequence[str] | None,
    as_json: bool,
    spec_for: Callable[[str], ModelSpec],
    sc: Scenario | None = None,
) -> str:
    """What ``edgeci bench sim --scenario dynamic-load`` prints (JSON rows or a table)."""
    import json

    from edgeci_p2p.planners import plan
    from edgeci_p2p.planners.testbeds import load_testbed

    sc = sc or Scenario()
    chosen = list(strategies or ("edgeci", *STATIC_BASELINES))
    rows: list[dict[str, Any]] = []
    for model in models:
        spec = spec_for(model)
        for name in testbeds or DEFAULT_TESTBEDS:
            rows += dynamic_load(spec, load_testbed(name), plan, chosen, sc)
    return json.dumps(rows) if as_json else table(rows, sc)
