"""Shared fakes for plan, planner and simulator tests: testbeds built in code and the
plan invariant checker every planner test uses."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from edgeci_p2p.core.cost import ComputeModel, DeviceModel, LinearFit, LinkModel, Testbed
from edgeci_p2p.core.geometry import Region, Span
from edgeci_p2p.core.plan import Part, Plan, Stage, validate
from edgeci_p2p.core.units import ModelSpec


def device(name: str, gflops: float, overhead_ms: float = 1.0) -> DeviceModel:
    fit = LinearFit(1e-9 / gflops, overhead_ms / 1e3)
    slow = LinearFit(8e-9 / gflops, overhead_ms / 2e3)
    return DeviceModel(name, ComputeModel({"conv": fit, "block": fit, "pool": slow, "head": slow}))


def fake_testbed(
    gflops: list[float],
    mbps: list[float],
    shared: bool = True,
    auctioneer: int = 0,
    rtt_ms: float = 2.0,
    name: str = "fake",
) -> Testbed:
    return Testbed(
        name=name,
        devices=tuple(device(f"d{k}", g) for k, g in enumerate(gflops)),
        links=tuple(LinkModel.from_mbps(m, rtt_ms) for m in mbps),
        auctioneer=auctioneer,
        shared_medium=shared,
        source="test fake",
    )


def random_testbed(rnd: random.Random, n_devices: int) -> Testbed:
    return fake_testbed(
        [rnd.uniform(0.5, 10.0) for _ in range(n_devices)],
        [rnd.uniform(10.0, 300.0) for _ in range(n_devices)],
        shared=rnd.random() < 0.6,
        auctioneer=rnd.randrange(n_devices),
        rtt_ms=rnd.uniform(0.2, 10.0),
    )


def sub_spec(spec: ModelSpec, start: int, stop: int) -> ModelSpec:
    """Units ``[start, stop)`` of ``spec`` as a model of their own (head kept for its FLOPs)."""
    units = tuple(replace(u, index=k) for k, u in enumerate(spec.units[start:stop]))
    head = replace(spec.head, in_shape=units[-1].out_shape)
    return replace(
        spec,
        name=f"{spec.name}[{start}:{stop}]",
        input_shape=units[0].in_shape,
        units=units,
        head=head,
    )


def check_plan(plan: Plan, spec: ModelSpec, tb: Testbed) -> None:
    """The invariants every planner's output must satisfy."""
    validate(plan, spec)
    assert plan.devices == tuple(tb.names)
    assert plan.auctioneer == tb.auctioneer
    assert Plan.from_dict(plan.to_dict()) == plan


def strips(spec: ModelSpec, start: int, stop: int, weights: list[float], transfer: str) -> Stage:
    """Full-width strips of ``[start, stop)``'s output in proportion to ``weights``."""
    _, h, w = spec.shape_at(stop)
    total, edges, acc = sum(weights), [0], 0.0
    for x in weights[:-1]:
        acc += x
        edges.append(max(edges[-1] + 1, round(h * acc / total)))
    edges.append(h)
    parts = tuple(
        Part(Region(Span(a, b), Span(0, w)), d)
        for d, (a, b) in enumerate(itertools.pairwise(edges))
    )
    return Stage(start, stop, parts, transfer)  # type: ignore[arg-type]


def moving_plan(spec: ModelSpec, nodes: list[str]) -> Plan:
    """Three halo-linked stages whose strip boundaries move, then a gathering stage."""
    n = spec.n_units
    a, b, c = 2, 5, 9
    stages = (
        strips(spec, 0, a, [1, 1, 1], "halo"),
        strips(spec, a, b, [3, 1, 2], "halo"),
        strips(spec, b, c, [1, 2, 1], "gather"),
        Stage(c, n, (Part(Region(Span(0, spec.shape_at(n)[1]), Span(0, spec.shape_at(n)[2])), 1),)),
    )
    plan = Plan(spec.name, "edgeci-halo", "test", tuple(nodes), stages, auctioneer=0)
    validate(plan, spec)
    return plan
