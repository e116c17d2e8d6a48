"""VGG's fc1 folded into the last strips (``Plan.fold_head``): where it applies, what
the planner and the simulator make of it, and that the logits stay the unsplit
model's, through the store and through real daemons."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest
import torch

from edgeci_p2p.auction import aside
from edgeci_p2p.auction.awas import AwasPlanner, probe_call
from edgeci_p2p.core.geometry import Region, Span, fold_bytes, fold_flops, head_flops
from edgeci_p2p.core.plan import Part, Plan, PlanError, validate, why_not_fold
from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.nn.runtime import ModelStore, WorkError
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import plan as plan_for
from edgeci_p2p.planners.halo import plan_edgeci_halo
from edgeci_p2p.planners.head import fold_head, place_head, with_head_on
from edgeci_p2p.planners.testbeds import load_testbed
from tests.daemons import IMAGE, cluster, reference, run_plan
from tests.planfakes import strips

ROWS = [(0, 3), (3, 5), (5, 6), (6, 7)]


def two_stage_plan(model: str, nodes: list[str], fold: bool) -> Plan:
    spec = spec_for(model, 224, 224)
    n = spec.n_units
    stages = (
        strips(spec, 0, n - 3, [1, 1, 1], "gather"),
        strips(spec, n - 3, n, [3, 2, 2], "gather"),
    )
    plan = Plan(model, "edgeci", "test", tuple(nodes), stages, auctioneer=0, fold_head=fold)
    validate(plan, spec)
    return plan


# ---- pure: where it applies, what it costs -------------------------------------------------------


def test_only_a_head_that_flattens_the_last_map_into_fc1_folds() -> None:
    vgg = spec_for("vgg16", 224, 224)
    assert fold_flops(vgg) == 2 * 25088 * 4096
    assert 0 < fold_flops(vgg) < head_flops(vgg)
    assert fold_bytes(vgg) == 4096 * 4
    assert fold_flops(spec_for("vgg16", 64, 64)) == 0  # 2x2 pooled up to 7x7: not an identity
    assert fold_flops(spec_for("resnet34", 224, 224)) == 0  # pooled to 1x1 first


def test_a_fold_the_plan_cannot_carry_is_refused() -> None:
    plan = two_stage_plan("vgg16", ["a", "b", "c"], fold=True)
    vgg = spec_for("vgg16", 224, 224)
    assert why_not_fold(plan, vgg) is None
    elsewhere = dataclasses.replace(plan, head_device=1)
    with pytest.raises(PlanError, match="another device"):
        validate(elsewhere, vgg)
    assert not with_head_on(plan, "c", "test").fold_head  # moving the head unfolds it
    resnet = spec_for("resnet34", 224, 224)
    n = resnet.n_units
    r_plan = Plan(
        "resnet34",
        "edgeci",
        "test",
        ("a", "b"),
        (strips(resnet, 0, n, [1, 1], "gather"),),
        fold_head=True,
    )
    with pytest.raises(PlanError, match="does not flatten"):
        validate(r_plan, resnet)


def test_the_planner_folds_when_the_simulator_says_it_is_sooner() -> None:
    spec = spec_for("vgg16", 224, 224)
    tb = load_testbed("emulated-4-headroom")
    plan = plan_for("edgeci-halo", spec, tb)
    assert plan.fold_head  # fc1 on one 0.4-core peer is the head's longest step
    unfolded = dataclasses.replace(plan, fold_head=False)
    with_fold, without = simulate(plan, spec, tb), simulate(unfolded, spec, tb)
    assert with_fold.latency < without.latency
    assert plan.notes["fold"]["saved_s"] == pytest.approx(without.latency - with_fold.latency)
    # The last strips send 4096 partial sums each instead of their rows.
    remote = sum(p.device != tb.auctioneer for p in plan.stages[-1].parts)
    last = plan.stages[-1]
    c = spec.shape_at(last.stop)[0]
    rows = sum(
        spec.wire_bytes(last.stop, c * p.region.area)
        for p in last.parts
        if p.device != tb.auctioneer
    )
    assert without.bytes_moved - with_fold.bytes_moved == rows - remote * fold_bytes(spec)
    # Already folded, or nothing to fold: unchanged.
    assert fold_head(plan, spec, tb) == (plan, 0.0)
    r_spec = spec_for("resnet34", 224, 224)
    r_plan = plan_for("edgeci-halo", r_spec, tb)
    assert not r_plan.fold_head


def test_a_peer_told_not_to_fold_plans_no_fold() -> None:
    spec = spec_for("vgg16", 224, 224)
    tb = load_testbed("emulated-4-headroom")
    unplaced = plan_edgeci_halo(spec, tb)
    assert place_head(unplaced, spec, tb).fold_head
    assert not place_head(unplaced, spec, tb, fold=False).fold_head
    assert not AwasPlanner(spec, fold=False).fold
    assert aside.job(AwasPlanner(spec, fold=False), probe_call("a", "n", spec), [])["fold"] is False


def test_folding_splits_the_last_stages_rows_again() -> None:
    """Split for its convolutions alone, the last stage gave the slowest peer most rows;
    folded, each row also carries a seventh of fc1, and the rows are split again."""
    spec = spec_for("vgg16", 224, 224)
    tb = load_testbed("emulated-4-headroom")
    p = plan_for("edgeci-halo", spec, tb)
    last = p.stages[-1]
    order = [q.device for q in sorted(last.parts, key=lambda q: q.region.rows.start)]
    slowest_last = sorted(order, key=lambda d: -tb.devices[d].compute.fits["conv"].a)
    edges = [(0, 1), (1, 2), (2, 3), (3, 7)]
    bad = dataclasses.replace(
        p,
        fold_head=False,
        stages=(
            *p.stages[:-1],
            dataclasses.replace(
                last,
                parts=tuple(
                    Part(Region(Span(a, b), Span(0, 7)), d)
                    for d, (a, b) in zip(slowest_last, edges, strict=True)
                ),
            ),
        ),
    )
    validate(bad, spec)
    folded, gain = fold_head(bad, spec, tb)
    assert folded.fold_head and folded.notes["fold"]["rows_moved"]
    validate(folded, spec)
    as_they_were = simulate(dataclasses.replace(bad, fold_head=True), spec, tb).latency
    assert simulate(folded, spec, tb).latency < as_they_were
    assert gain == pytest.approx(
        simulate(bad, spec, tb).latency - simulate(folded, spec, tb).latency
    )


def test_fold_survives_the_plans_dict_form() -> None:
    plan = two_stage_plan("vgg16", ["a", "b", "c"], fold=True)
    again = Plan.from_dict(plan.to_dict())
    assert again.fold_head and again == plan
    assert "fold_head" not in two_stage_plan("vgg16", ["a", "b", "c"], fold=False).to_dict()
    assert "fc1 folded" in str(plan)


# ---- the store: partial sums add up to the unsplit head --------------------------------------


@pytest.fixture(scope="module", name="store")
def vgg_store() -> ModelStore:
    return ModelStore(["vgg11"])


def test_partial_sums_of_the_strips_give_the_unsplit_logits(store: ModelStore) -> None:
    ex = store.executor("vgg11", 224, 224)
    x = to_input(decode(IMAGE), "224")
    last = ex.activations(x)[-1]
    fp = store.get("vgg11").fingerprint
    sums = [
        torch.from_numpy(store.fold("vgg11", fp, (224, 224), r, last[:, :, r[0] : r[1]].numpy()))
        for r in ROWS
    ]
    assert all(s.shape == (1, 4096, 1, 1) for s in sums)
    logits = store.head("vgg11", (224, 224), torch.stack(sums).sum(0), folded=True)
    torch.testing.assert_close(logits, store.head("vgg11", (224, 224), last))
    torch.testing.assert_close(logits, store.forward("vgg11", x))
    # A strip whose shape is not its rows is refused, as a bad tile is.
    with pytest.raises(WorkError, match="not rows"):
        store.fold("vgg11", fp, (224, 224), (0, 2), last[:, :, :3].numpy())
    assert store.prepare_folds() == ["vgg11"]


def test_a_dropped_store_frees_its_fc1_copy_while_the_shared_weights_live() -> None:
    # Stores of one process share their weights (nn/weights.py); the fold's copy of fc1
    # (411 MB for VGG-16) must go with its store, not live as long as the weight does.
    store = ModelStore(["vgg11"])
    assert store.prepare_folds() == ["vgg11"]
    fold = store._fold("vgg11", (224, 224))
    weight, blocks = fold._linear().weight, weakref.ref(fold.blocks())
    gone = weakref.ref(fold)
    del store, fold
    gc.collect()
    assert gone() is None and blocks() is None
    assert weight.shape[0] == 4096  # the shared weight itself is still there


def test_a_model_whose_head_does_not_fold_is_refused() -> None:
    store = ModelStore(["resnet18"])
    x = np.zeros((1, 512, 7, 7), np.float32)
    fp = store.get("resnet18").fingerprint
    with pytest.raises(WorkError, match=r"before fc1|linear"):
        store.fold("resnet18", fp, (224, 224), (0, 7), x)
    assert store.prepare_folds() == []


# ---- real daemons: folded strips, and the fallback -----------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_folded_strips_through_daemons_give_the_unsplit_logits() -> None:
    async with cluster(3, models=["vgg11"]) as daemons:
        nodes = [d.node_id for d in daemons]
        ref = reference("vgg11")
        folded, f_timing = await run_plan(
            daemons[0], two_stage_plan("vgg11", nodes, True), "f", model="vgg11"
        )
        torch.testing.assert_close(torch.from_numpy(folded).reshape(ref.shape), ref)
        assert f_timing["retries"] == 0
        assert set(f_timing["compute"]) == set(nodes)  # type: ignore[arg-type]
        plain, p_timing = await run_plan(
            daemons[0], two_stage_plan("vgg11", nodes, False), "p", model="vgg11"
        )
        torch.testing.assert_close(torch.from_numpy(plain).reshape(ref.shape), ref)
        # The two remote strips sent 4096 sums each, not their 3-4 KB-a-row rows.
        assert f_timing["bytes"] < p_timing["bytes"]  # type: ignore[operator]
