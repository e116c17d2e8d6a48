"""A peer's figures for Prometheus (``/metrics``) and its recent requests (``/api``).

Counters that move as work happens (requests, their latency, tiles served) are
``prometheus_client`` metrics in a registry of this node's own (several daemons may
share a process in tests); figures that are state (queue depth, backlog, links,
bytes per peer, bans, planning time) are read from the node when scraped, by
:class:`NodeCollector`, so the hot path pays nothing for them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

    from edgeci_p2p.aio.auctioneer import PlanningStats
    from edgeci_p2p.aio.node import Node
    from edgeci_p2p.wire.messages import InferRequest, InferResult

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
"""Seconds: CNN requests here take tens of ms (a fast PC) to seconds (a Pi)."""
RECENT = 50
"""Recent requests kept for the dashboard (with their plans and timelines)."""


class RecentRequests:
    """The last :data:`RECENT` requests answered here, newest first."""

    def __init__(self, keep: int = RECENT) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=keep)
        self._by_id: dict[str, dict[str, Any]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        if len(self._items) == self._items.maxlen:
            self._by_id.pop(self._items[0]["id"], None)
        self._items.append(entry)
        self._by_id[entry["id"]] = entry

    def get(self, request_id: str) -> dict[str, Any] | None:
        return self._by_id.get(request_id)

    def summaries(self) -> list[dict[str, Any]]:
        """Newest first, without the bulky parts (timeline, testbed)."""
        return [
            {k: v for k, v in e.items() if k not in ("trace", "plan")}
            | {
                "traced": e.get("trace") is not None,
                "plan_text": e["plan"].get("text", ""),
                "plan_nodes": e["plan"].get("nodes", []),
            }
            for e in reversed(self._items)
        ]


class Metrics:
    """The counters one node's parts move, and its recent requests."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgeci_requests",
            "Client requests answered by this node, by model, strategy and outcome",
            ["model", "strategy", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeci_request_seconds",
            "Latency of requests answered successfully by this node",
            ["model", "strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tiles = Counter(
            "edgeci_tiles",
            "Work pieces auctioneers gave this node (tile, strip or head jobs) by outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "edgeci_retries", "Tiles of this node's requests rerun after their peer failed",
            registry=r,
        )  # fmt: skip
        self.hedges = Counter(
            "edgeci_hedges", "Straggling tiles of this node's requests given a second copy",
            registry=r,
        )  # fmt: skip
        self.auction = Histogram(
            "edgeci_auction_seconds",
            "Time from a request's call for bids to its plan (the whole round)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.recent = RecentRequests()

    def watch(self, node: Node, planning: PlanningStats) -> None:
        """Read ``node``'s state figures at each scrape."""
        self.registry.register(NodeCollector(node, planning))

    def exposition(self) -> bytes:
        """The Prometheus text format of every figure."""
        return generate_latest(self.registry)

    # ---- recording --------------------------------------------------------------------------

    def tile(self, kind: str, outcome: str) -> None:
        self.tiles.labels(kind, outcome).inc()

    def answered(
        self,
        req: InferRequest,
        result: InferResult | None,
        outcome: str,
        seconds: float,
        error: str = "",
    ) -> None:
        """One client request done here (``outcome``: ``ok`` or its error's name)."""
        self.requests.labels(req.model, req.strategy, outcome).inc()
        entry: dict[str, Any] = {
            "id": req.request_id,
            "model": req.model,
            "strategy": req.strategy,
            "outcome": outcome,
            "error": error,
            "seconds": round(seconds, 4),
            "at": time.time(),
            "forwarded_from_peer": req.hops > 0,
            "plan": {},
            "top5": [],
            "timing": {},
            "trace": None,
        }
        if result is not None:
            self.latency.labels(req.model, req.strategy).observe(seconds)
            timing = result.timing
            if isinstance(retries := timing.get("retries"), float):
                self.retries.inc(retries)
            if isinstance(hedges := timing.get("hedges"), float):
                self.hedges.inc(hedges)
            if isinstance(auction := timing.get("auction"), float):
                self.auction.observe(auction)
            entry["plan"] = {k: v for k, v in result.plan.items() if k != "testbed"}
            entry["top5"] = [
                {"index": t.index, "label": t.label, "prob": t.prob} for t in result.top_k[:5]
            ]
            entry["timing"] = {k: v for k, v in timing.items() if isinstance(v, float)}
            entry["trace"] = result.trace
        self.recent.add(entry)


class NodeCollector(Collector):
    """The node's state, read when scraped (the tile path never touches these)."""

    def __init__(self, node: Node, planning: PlanningStats) -> None:
        self.node = node
        self.planning = planning

    def collect(self) -> Iterator[Metric]:
        node, now = self.node, time.monotonic()
        load = node.load

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("edgeci_requests_in_progress", "Client requests accepted here", load.requests)
        yield gauge(
            "edgeci_queue_depth",
            "Tile, strip and head jobs accepted from auctioneers and not yet done",
            load.queued_tiles,
        )
        yield gauge(
            "edgeci_backlog_seconds", "Reserved work this node's bids wait behind",
            node.bidder.backlog(now),
        )  # fmt: skip
        yield gauge("edgeci_threads", "Torch threads for tile work", node.config.threads)
        cores = node.cpu_cores if node.cpu_cores is not None else float(node.config.threads)
        yield gauge("edgeci_cpu_cores", "Cores tile work can use here, as measured", cores)
        yield gauge(
            "edgeci_cpu_share", "Measured share of the threads' CPU this peer gets",
            cores / max(1, node.config.threads),
        )  # fmt: skip
        peers = node.membership.members
        alive = GaugeMetricFamily("edgeci_peer_alive", "1 if the peer is alive", labels=["peer"])
        rate = GaugeMetricFamily(
            "edgeci_link_rate_bytes_per_second", "Fitted rate of the link to each peer",
            labels=["peer"],
        )  # fmt: skip
        rtt = GaugeMetricFamily("edgeci_link_rtt_seconds", "RTT to each peer", labels=["peer"])
        for m in peers.values():
            alive.add_metric([m.node_id], float(m.alive(now)))
            if m.bandwidth is not None:
                rate.add_metric([m.node_id], m.bandwidth)
            if m.rtt is not None:
                rtt.add_metric([m.node_id], m.rtt)
        yield from (alive, rate, rtt)
        sent = CounterMetricFamily(
            "edgeci_peer_sent_bytes", "Bytes sent to each peer", labels=["peer"]
        )
        received = CounterMetricFamily(
            "edgeci_peer_received_bytes", "Bytes received from each peer", labels=["peer"]
        )
        for peer, t in node.traffic.items():
            sent.add_metric([peer], t.sent)
            received.add_metric([peer], t.received)
        yield from (sent, received)
        bans = node.bans.total
        yield CounterMetricFamily("edgeci_bans", "Peers banned after failing", value=bans)
        yield gauge(
            "edgeci_banned_peers", "Peers banned now",
            sum(1 for p in node.bans.until if node.bans.banned(p, now)),
        )  # fmt: skip
        p = self.planning
        yield CounterMetricFamily(
            "edgeci_planning_seconds", "Time the auction's deciders spent planning", value=p.seconds
        )
        yield CounterMetricFamily("edgeci_decisions", "Decisions made", value=p.decisions)
        yield CounterMetricFamily(
            "edgeci_decision_cache_hits", "Decisions answered by the decision cache",
            value=p.cache_hits,
        )  # fmt: skip
