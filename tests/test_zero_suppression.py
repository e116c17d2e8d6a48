"""Zero suppression in planning: the wire fraction of a map, its running estimate on
the auctioneer, the planners' byte counts, and the daemon learning it from the maps
it assembles (with exact answers throughout)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgeci_p2p.core.density import REPLAN_STEP, WireFractions, wire_fraction
from edgeci_p2p.core.plan import validate
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan
from edgeci_p2p.planners.testbeds import load_testbed
from tests.daemons import assert_exact, cluster, reference, run_plan
from tests.planfakes import moving_plan


def test_the_wire_fraction_is_mask_plus_values_or_whole() -> None:
    assert wire_fraction(800, 400) == pytest.approx(1 / 32 + 0.5)
    assert wire_fraction(800, 0) == pytest.approx(1 / 32)
    assert wire_fraction(800, 800) == 1.0
    assert wire_fraction(800, 700) == 1.0  # 0.906 of the bytes: sent whole
    assert wire_fraction(0, 0) == 1.0
    with pytest.raises(ValueError, match="non-zero values"):
        wire_fraction(8, 9)


def test_unseen_boundaries_take_the_mean_and_the_input_travels_whole() -> None:
    w = WireFractions(5)
    assert w.estimate() == () and w.for_planning() == ()
    w.observe(2, 800, 0)  # 1/32
    w.observe(4, 800, 800)  # whole
    est = w.estimate()
    assert est[0] == 1.0 and est[2] == pytest.approx(1 / 32) and est[4] == 1.0
    assert est[1] == est[3] == pytest.approx((1 / 32 + 1.0) / 2)
    with pytest.raises(ValueError, match="boundary 0"):
        w.observe(0, 8, 8)
    with pytest.raises(ValueError, match="boundary 5"):
        w.observe(5, 8, 8)


def test_planned_fractions_move_only_past_the_step() -> None:
    w = WireFractions(3)
    w.observe(1, 3200, 1600)
    first = w.for_planning()
    assert first == (1.0, 0.53, 0.53)
    w.observe(1, 3200, 1800)  # the estimate moves 0.02: the plan cache keeps its key
    assert w.for_planning() is first
    for _ in range(10):
        w.observe(1, 3200, 400)  # a different kind of input: far fewer non-zeros
    moved = w.for_planning()
    assert moved != first and abs(moved[1] - first[1]) > REPLAN_STEP


def test_plans_count_the_suppressed_bytes_and_offload_no_less() -> None:
    tb = load_testbed("emulated-4")
    dense = dataclasses.replace(spec_for("vgg16", 224, 224), input_itemsize=1)
    half = dataclasses.replace(dense, wire_fraction=(1.0,) + (0.55,) * dense.n_units)
    assert half.wire_bytes(0, 1000) == 1000 and half.wire_bytes(3, 1000) == 2200
    for strategy in ("edgeci", "edgeci-halo"):
        p_dense = plan(strategy, dense, tb)
        p_half = plan(strategy, half, tb)
        validate(p_half, half)
        same_dense = simulate(p_dense, dense, tb)
        same_half = simulate(p_dense, half, tb)
        # the same plan moves 55% of the map bytes (pixels unchanged) and is no slower
        assert same_half.auctioneer_bytes < 0.75 * same_dense.auctioneer_bytes
        assert same_half.latency <= same_dense.latency
        # and planning with the fractions finds a plan at least that fast
        assert simulate(p_half, half, tb).latency <= same_half.latency + 1e-9


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_the_auctioneer_learns_the_fractions_from_the_maps_it_assembles() -> None:
    async with cluster(3) as daemons:
        d = daemons[0]
        assert d.store is not None and d.auctioneer is not None
        nodes = [x.node_id for x in daemons]
        spec = d.store.spec("resnet34", 224, 224)
        p = moving_plan(spec, nodes)
        await d.make_plan("z0", "resnet34", "edgeci", 224, 224, dry_run=True)  # nothing seen
        assert [k[4] for k in d.auctioneer._planners if k[0] == "edgeci"] == [()]
        logits, timing = await run_plan(d, p, "z1")
        assert_exact(logits, reference())
        seen = d.started.wire[("resnet34", 224, 224)]
        ends = {p.stages[last].stop for _, last in _segments(p)}
        assert set(seen.seen) == ends
        assert all(0.03 < f < 0.9 for f in seen.seen.values())
        # The bytes reported are those that crossed: about what the simulator moves
        # at the fractions seen, well below the maps' own bytes.
        tb = d.auctioneer.local_decision(spec, None).testbed
        tb = dataclasses.replace(tb, devices=tb.devices * 3, links=tb.links * 3)
        at_seen = simulate(p, dataclasses.replace(spec, wire_fraction=seen.estimate()), tb)
        whole = simulate(p, spec, tb)
        moved = float(timing["bytes"])  # type: ignore[arg-type]
        assert 0.3 * whole.bytes_moved < moved < 0.9 * whole.bytes_moved
        assert at_seen.bytes_moved < 0.9 * whole.bytes_moved
        # The next plan is made with them (its decider is keyed by them).
        await d.make_plan("z2", "resnet34", "edgeci", 224, 224, dry_run=True)
        # (one decider per kind of request: the one planned whole is gone)
        keys = [k for k in d.auctioneer._planners if k[0] == "edgeci"]
        assert len(keys) == 1 and keys[0][4] == seen.for_planning() and keys[0][4][0] == 1.0


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_peer_that_sends_maps_whole_works_beside_those_that_do_not() -> None:
    """``edgeci-peer --no-zero-suppression``: the receiving side accepts both forms."""
    async with cluster(3, per_peer={1: {"zero_suppression": False}}) as daemons:
        assert daemons[1].started.session_config().zero_suppress_bytes is None
        assert daemons[0].started.session_config().zero_suppress_bytes is not None
        nodes = [x.node_id for x in daemons]
        spec = daemons[0].store.spec("resnet34", 224, 224)  # type: ignore[union-attr]
        logits, timing = await run_plan(daemons[0], moving_plan(spec, nodes), "w1")
        assert_exact(logits, reference())
        assert timing["retries"] == 0


def _segments(p: object) -> list[tuple[int, int]]:
    from edgeci_p2p.core.plan import Plan, segments

    assert isinstance(p, Plan)
    return list(segments(p))


def test_zero_suppressed_and_plain_maps_decode_to_the_same_array() -> None:
    """The executor's maps have signed zeros nowhere else but where the model puts them:
    the bit pattern is what travels, so the decoded map equals the sent one exactly."""
    from edgeci_p2p.wire import tensors

    x = np.maximum(np.random.default_rng(0).standard_normal((1, 64, 56, 56)), 0).astype(np.float32)
    packed = tensors.zero_suppress(x)
    assert packed is not None
    back = tensors.zero_restore(x.shape, tensors.TAG_FLOAT32_LE, packed.nnz, packed.body)
    assert back.tobytes() == x.tobytes()


def test_uniform_fractions_for_the_cli() -> None:
    from edgeci_p2p.core.density import uniform_fractions

    assert uniform_fractions(3, 0.0) == ()
    f = uniform_fractions(3, 0.5)
    assert f[0] == 1.0 and f[1:] == (pytest.approx(1 / 32 + 0.5),) * 3
    assert uniform_fractions(2, 0.05) == (1.0, 1.0, 1.0)  # too few zeros: sent whole
    with pytest.raises(ValueError, match="share of zeros"):
        uniform_fractions(3, -0.1)
