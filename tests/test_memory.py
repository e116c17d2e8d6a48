"""Weights by part and memory in the auction (issue 24): parts bit-identical to the
whole model, the head loaded on demand within a budget and dropped when idle, the
budget measured, planners that never put the head where it does not fit, and a
cluster whose memory-limited entry peer answers VGG-16 exactly without its head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeci_p2p.aio.weights import holding
from edgeci_p2p.auction.bidder import Bidder, Holding
from edgeci_p2p.auction.messages import Award, CallForBids, WorkItem
from edgeci_p2p.commands.peers import models_held
from edgeci_p2p.core import cost
from edgeci_p2p.core.cost import ComputeModel, DeviceModel, LinearFit, LinkModel
from edgeci_p2p.core.geometry import full_region
from edgeci_p2p.meminfo import (
    Budget,
    cgroup_room,
    memory_budget,
    one_malloc_arena,
    parse_size,
)
from edgeci_p2p.nn.models import load_model, seed_tensor, seeded_pieces
from edgeci_p2p.nn.runtime import ModelStore, OverMemory, shared_model
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.nn.weights import HEAD, ModelWeights, shared_weights
from edgeci_p2p.planners import plan as plan_with
from edgeci_p2p.planners.head import head_peer, place_head
from tests.daemons import client, cluster

MB = 1 << 20


def test_parts_are_bit_identical_to_the_whole_model_and_the_fingerprint_is_its() -> None:
    w = ModelWeights("resnet18", use_hub_cache=False)
    whole = load_model("resnet18", use_hub_cache=False)
    assert w.fingerprint == whole.fingerprint
    assert w.loaded() == frozenset()
    for p in w.parts:
        w.acquire(p)
    got, want = w.module.state_dict(), whole.module.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    w.release(HEAD)
    assert w.module.fc.weight.device.type == "meta" and HEAD not in w.loaded()
    assert w.part_bytes[HEAD] == (512 * 1000 + 1000) * 4


def test_large_seeded_tensors_drawn_in_pieces_are_the_whole_draw() -> None:
    # What lets the fingerprint hash VGG-16's fc1 without holding it: pieces of a
    # multiple of 16, the last at least 16 long, an odd size (the tail redrawn).
    fc = torch.nn.Linear(517, 1003)
    whole = torch.zeros(1003, 517)
    seed_tensor("fc", fc, "weight", whole, 7, "")
    for chunk in (64, 100, 4096):
        pieces = list(seeded_pieces("fc", fc, "weight", (1003, 517), torch.float32, 7, "", chunk))
        assert len(pieces) > 1 and torch.equal(torch.cat(pieces), whole.reshape(-1))


def test_the_head_loads_on_demand_once_within_the_budget_and_drops_when_idle() -> None:
    clock = [0.0]
    store = ModelStore(["resnet18"], budget=1 << 40, idle_s=10.0, clock=lambda: clock[0])
    w = store.weights["resnet18"]
    assert store.held("resnet18") == frozenset(w.feature_parts)
    assert store.holds() == {"resnet18": ["features"]}
    x = torch.randn(1, 3, 64, 64)
    spec = store.spec("resnet18", 64, 64)
    features = store.executor("resnet18", 64, 64).reference(x)
    ref = shared_model("resnet18").module(x)
    clock[0] = 1.0
    logits = store.head("resnet18", (64, 64), features)
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert store.holds() == {"resnet18": ["features", HEAD]}
    assert store.load_cost("resnet18", [HEAD]) == 0
    clock[0] = 10.5
    assert store.drop_idle() == []  # used at 1.0: not yet idle for 10 s
    clock[0] = 11.0
    assert store.drop_idle() == [("resnet18", HEAD)]
    assert store.held("resnet18") == frozenset(w.feature_parts)  # features stay
    assert spec.n_units > 0
    # A budget that holds the features but not the head refuses the head ("memory").
    tight = ModelStore(["resnet18"], budget=w.nbytes(w.feature_parts) + MB)
    assert not tight.fits("resnet18", [HEAD])
    with pytest.raises(OverMemory) as e:
        tight.head("resnet18", (64, 64), features)
    assert e.value.reason == "memory" and HEAD not in tight.held("resnet18")
    # ... unless forced (the auctioneer's last resort).
    torch.testing.assert_close(
        tight.head("resnet18", (64, 64), features, force=True), ref, rtol=0, atol=0
    )


def _features(store: ModelStore, name: str, x: torch.Tensor) -> torch.Tensor:
    """Every feature unit of ``name`` as one tile through ``store`` (loads what it needs)."""
    h, w = x.shape[2:]
    spec = store.spec(name, h, w)
    _, oh, ow = spec.shape_at(spec.n_units)
    fp = store.get(name).fingerprint
    y = store.run_tile(
        name, fp, (h, w), 0, spec.n_units, full_region(oh, ow), x.numpy(), full_region(h, w)
    )
    return torch.from_numpy(y)


def test_a_budget_for_one_models_features_serves_two_by_dropping_the_least_recent() -> None:
    r18, r34 = shared_weights("resnet18"), shared_weights("resnet34")
    feats = {"resnet18": r18.nbytes(r18.feature_parts), "resnet34": r34.nbytes(r34.feature_parts)}
    budget = max(feats.values()) + MB  # either model's features, not both
    assert budget < sum(feats.values())
    store = ModelStore(["resnet18", "resnet34"], budget=budget)
    peaks: list[int] = []
    ensure = store.ensure

    def counted(name: str, parts: object, **kw: bool) -> None:
        ensure(name, parts, **kw)  # type: ignore[arg-type]
        peaks.append(store.weights_bytes())

    store.ensure = counted  # type: ignore[method-assign]
    try:
        # At start: the first model's features; the second's do not fit beside them.
        assert store.holds() == {"resnet18": ["features"], "resnet34": []}
        x = torch.randn(1, 3, 32, 32)
        first = {m: _features(store, m, x) for m in ("resnet18", "resnet34")}
        assert store.holds() == {"resnet18": [], "resnet34": ["features"]}
        # ResNet-18 dropped and loaded again: the same bits.
        assert torch.equal(_features(store, "resnet18", x), first["resnet18"])
        assert store.holds()["resnet18"] == ["features"] and store.dropped > 0
        assert peaks and max(peaks) <= budget
        # For a bid on ResNet-34, ResNet-18's features are room. With ResNet-34's
        # features held, its head (2 MB) does not fit, its own features are not
        # dropped for it: refused ("memory").
        assert store.others_bytes("resnet34") == feats["resnet18"]
        assert store.fits("resnet34", r34.feature_parts)
        assert torch.equal(_features(store, "resnet34", x), first["resnet34"])
        assert not store.fits("resnet34", [HEAD])
        with pytest.raises(OverMemory):
            store.ensure("resnet34", [HEAD])
        assert max(peaks) <= budget
    finally:
        store.close()


def test_what_work_leaves_resident_is_paid_from_the_budget_like_weights() -> None:
    # A fake VmRSS: the base, then the weights held, then what work left behind.
    r18 = shared_weights("resnet18")
    feats, head = r18.nbytes(r18.feature_parts), r18.nbytes([HEAD])
    left = [0]
    base = 500 * MB
    store: ModelStore | None = None

    def rss() -> int:
        held = 0 if store is None else store.weights_bytes()
        return base + held + left[0]

    store = ModelStore(["resnet18"], budget=feats + head + 3 * MB, resident=rss)
    assert store.settle() == 0 and store.fits("resnet18", [HEAD])
    # Work kept 4 MB (kernels, caches, the allocator): the head no longer fits, and a
    # bid says so (the 4 MB count as held and never droppable).
    left[0] = 4 * MB
    assert store.fits("resnet18", [HEAD])  # not measured yet: a load measures first
    with pytest.raises(OverMemory, match="4 MB kept by work"):
        store.ensure("resnet18", [HEAD])
    assert store.overhead == 4 * MB and store.room() == head - MB
    assert not store.fits("resnet18", [HEAD]) and HEAD not in store.held("resnet18")
    got = holding(store, store.fingerprints["resnet18"])
    assert got.weights_bytes == feats + 4 * MB and got.droppable == 0
    # Given back (the allocator trimmed): room again.
    left[0] = 0
    assert store.settle() == 0 and store.fits("resnet18", [HEAD])
    # Without ``resident`` (peers sharing a process) nothing is measured.
    assert ModelStore(["resnet18"], budget=feats + head).settle() == 0


def test_a_bidder_counts_other_models_weights_as_room_until_work_reserves_it() -> None:
    compute = ComputeModel({"conv": LinearFit(1e-10, 1e-4)})
    # Holds model A's features (60 MB) in a 100 MB budget; B's would need 85 MB.
    holds = {
        "A": Holding(60 * MB, ("features",)),
        "B": Holding(60 * MB, (), {"features": 85 * MB}, 60 * MB),
    }
    b = Bidder("p", compute, LinkModel(1e9), memory_bytes=100 * MB, holding=holds.__getitem__)
    conv = WorkItem("probe:conv:1", {"conv": 10**6})
    bid_b = b.bid(CallForBids("b1", "auc", "B", (conv,)), 0.0)
    assert bid_b.free_memory == 100 * MB and bid_b.load == {"features": 85 * MB}
    # B's strips with its feature load: accepted, A's weights would be dropped for them.
    strips = WorkItem("s0", {"conv": 10**6}, 1000, 1000, 2000 + 85 * MB)
    assert b.accept(Award("b1", "p", (strips,)), 0.0).accepted
    # A's next work finds that room reserved: declined with "memory" (the round
    # re-plans without this peer), until B's reservation is gone.
    b.bid(CallForBids("a1", "auc", "A", (conv,)), 0.0)
    a_strips = WorkItem("s0", {"conv": 10**6}, 1000, 1000, 30 * MB)
    reply = b.accept(Award("a1", "p", (a_strips,)), 0.0)
    assert not reply.accepted and reply.reason == "memory"
    b.release("b1")
    assert b.accept(Award("a1", "p", (a_strips,)), 0.0).accepted


def test_the_budget_is_the_flag_else_the_cgroup_room_else_available_less_a_margin(
    tmp_path: Path,
) -> None:
    assert parse_size("300M") == 300 * MB and parse_size("1.5G") == 3 * (1 << 29)
    assert parse_size("4096") == 4096 and parse_size("2GiB") == 2 << 30
    with pytest.raises(ValueError):
        parse_size("lots")
    assert memory_budget(300 * MB) == Budget(300 * MB, "--memory-limit")
    assert memory_budget(None, room=1000 * MB) == Budget(900 * MB, "cgroup")
    assert memory_budget(None, room=None, available=200 * MB) == Budget(136 * MB, "available")
    # cgroup v2: the tightest room from the process's cgroup up to the top.
    (tmp_path / "cg").write_text("0::/a/b\n")
    root = tmp_path / "sys"
    for d, limit, used in [("a/b", "max", 100), ("a", str(500 * MB), 300 * MB)]:
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "memory.max").write_text(limit + "\n")
        (root / d / "memory.current").write_text(f"{used}\n")
        (root / d / "cgroup.procs").touch()
    assert cgroup_room(tmp_path / "cg", root, mountinfo=None) == 200 * MB


def _tb(devices: list[DeviceModel]) -> cost.Testbed:
    return cost.Testbed("t", tuple(devices), tuple(LinkModel(100e6, 0.002) for _ in devices))


def test_the_head_goes_only_where_it_fits_and_leaves_an_auctioneer_it_does_not_fit() -> None:
    spec = spec_for("vgg16", 64, 64)
    fast = ComputeModel({k: LinearFit(1e-11, 1e-4) for k in ("conv", "pool", "head")})
    slow = ComputeModel({k: LinearFit(1e-9, 1e-4) for k in ("conv", "pool", "head")})
    head = 500 * MB
    # A slow auctioneer and a fast peer that has no room for the head: the head stays.
    tb = _tb([DeviceModel("a", slow, 1 << 40), DeviceModel("b", fast, 100 * MB, head_load=head)])
    plan = plan_with("local", spec, tb)
    assert place_head(plan, spec, tb).head_device is None
    # An auctioneer without room: the head moves to the peer that fits it, gain or not.
    tb = _tb([DeviceModel("a", fast, 100 * MB, head_load=head), DeviceModel("b", slow, 1 << 40)])
    moved = place_head(plan_with("local", spec, tb), spec, tb)
    assert moved.head_device == 1 and "memory" in moved.notes["head"]["why"]
    # Of two peers with room, the one that already holds the head.
    assert head_peer({"x": (1 << 40, head, 0.01), "y": (1 << 40, 0, 0.02)}) == "y"
    assert head_peer({"x": (100 * MB, head, 0.01)}) is None


def test_a_bidder_declines_an_award_whose_weights_do_not_fit_with_memory() -> None:
    compute = ComputeModel({"conv": LinearFit(1e-10, 1e-4), "head": LinearFit(1e-10, 1e-4)})
    holding = Holding(60 * MB, ("features",), {HEAD: 500 * MB})
    b = Bidder("p", compute, LinkModel(1e9), memory_bytes=200 * MB, holding=lambda fp: holding)
    call = CallForBids("a1", "auc", "fp", (WorkItem("probe:conv:1", {"conv": 10**6}),))
    bid = b.bid(call, 0.0)
    assert bid.free_memory == 140 * MB and bid.held == ("features",)
    assert bid.load == {HEAD: 500 * MB}
    head = WorkItem("head", {"head": 10**8}, 100_000, 4000, 104_000 + 500 * MB)
    reply = b.accept(Award("a1", "p", (head,)), 0.0)
    assert not reply.accepted and reply.reason == "memory"


@pytest.mark.asyncio
@pytest.mark.timeout(240)
@pytest.mark.one_loop
async def test_a_peer_limited_below_the_classifier_answers_vgg16_exactly_without_its_head() -> None:
    x = np.random.default_rng(24).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = shared_model("vgg16").module(torch.from_numpy(x))
    limit = 200 * MB  # the features (59 MB) fit, the classifier (494 MB) does not
    async with cluster(3, models=["vgg16"], per_peer={0: {"memory_limit": limit}}) as daemons:
        small = daemons[0]
        assert small.store.budget == limit
        assert small.store.holds() == {"vgg16": ["features"]}
        for entry in (small, daemons[1], small):
            async with client(entry) as c:
                res = await c.infer(x, model="vgg16", strategy="edgeci")
            got = torch.from_numpy(np.array(res.logits, dtype=np.float32)).reshape(ref.shape)
            torch.testing.assert_close(got, ref)
            assert HEAD not in small.store.held("vgg16")
        # The entry peer's own plan sent the head to a peer that could hold it.
        assert res.plan["head_device"] is not None
        assert res.plan["nodes"][res.plan["head_device"]] != small.node_id
        # `peers`: resident memory and what each peer holds.
        async with client(small) as c:
            peers = await c.peers()
        me = next(p for p in peers if p.get("self"))
        assert me["holds"] == {"vgg16": ["features"]} and me["rss_mb"] > 0
        assert any(HEAD in (p.get("holds") or {}).get("vgg16", []) for p in peers)
        assert models_held(me) == "vgg16 (features)"


@pytest.mark.asyncio
@pytest.mark.timeout(240)
@pytest.mark.one_loop
async def test_a_peer_whose_limit_fits_one_models_features_serves_two_models_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = ["vgg16", "resnet34"]
    x = np.random.default_rng(2424).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = {m: shared_model(m).module(torch.from_numpy(x)) for m in models}
    limit = 96 * MB  # VGG-16's features (59 MB) or ResNet-34's (85 MB), not both
    per_peer = {0: {"memory_limit": limit}}
    async with cluster(2, models=models, per_peer=per_peer) as daemons:
        small, big = daemons
        store = small.store
        assert store.holds() == {"vgg16": ["features"], "resnet34": []}
        peaks: list[int] = []
        ensure = store.ensure

        def counted(name: str, parts: object, **kw: bool) -> None:
            ensure(name, parts, **kw)  # type: ignore[arg-type]
            peaks.append(store.weights_bytes())

        monkeypatch.setattr(store, "ensure", counted)
        # "local" puts every feature unit on the entry peer: it must swap models (its
        # head goes where the bids of its first, auctioned, requests said it fits).
        for entry, strategy in ((small, "edgeci"), (small, "local"), (big, "edgeci")):
            for m in ("resnet34", "vgg16"):
                async with client(entry) as c:
                    res = await c.infer(x, model=m, strategy=strategy)
                got = torch.from_numpy(np.array(res.logits, dtype=np.float32))
                torch.testing.assert_close(got.reshape(ref[m].shape), ref[m])
        assert store.dropped > 0 and peaks and max(peaks) <= limit
        assert HEAD not in store.held("vgg16")  # 494 MB: it went to the other peer


def test_a_peer_process_asks_glibc_for_one_malloc_arena_unless_a_person_chose() -> None:
    # A person's MALLOC_ARENA_MAX is kept: nothing is asked of glibc.
    assert one_malloc_arena({"MALLOC_ARENA_MAX": "4"}) is False
    # Else mallopt(M_ARENA_MAX, 1) succeeds (glibc: this test runs on Linux).
    assert one_malloc_arena({}) is True
