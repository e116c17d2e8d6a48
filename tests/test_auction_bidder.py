"""The bidder: honest prices, leases, declines, and no over-commitment under
several simultaneous auctions (a hypothesis property test)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_p2p.auction.bidder import Bidder, Holding, item_parts, probe_items
from edgeci_p2p.auction.messages import (
    Award,
    AwardReply,
    Bid,
    CallForBids,
    MessageError,
    Release,
    WorkItem,
)
from edgeci_p2p.auction.round import AuctionRound, Phase, RoundConfig
from edgeci_p2p.core.cost import ComputeModel, LinearFit, LinkModel

CONV = LinearFit(1e-9, 0.002)
POOL = LinearFit(4e-9, 0.001)


def bidder(name: str = "p", **kw: Any) -> Bidder:
    return Bidder(name, ComputeModel({"conv": CONV, "pool": POOL}), LinkModel(1e6, 0.01), **kw)


ITEM = WorkItem("x", {"conv": 100_000_000, "pool": 1_000_000}, 200_000, 100_000, 10_000)


def test_bid_is_measured_model_plus_link_plus_backlog() -> None:
    b = bidder()
    b.add_work(0.3, now=1.0)
    bid = b.bid(CallForBids("a", "me", "fp", (ITEM,)), now=1.1)
    compute = CONV.seconds(100_000_000) + POOL.seconds(1_000_000)
    link = 200_000 / 1e6 + 0.005 + 100_000 / 1e6 + 0.005
    assert bid.backlog == pytest.approx(0.2)
    assert bid.duration["x"] == pytest.approx(compute + link)
    assert bid.finish("x") == pytest.approx(0.2 + compute + link)
    assert (bid.bandwidth, bid.rtt) == (1e6, 0.01)


def test_background_load_slows_compute_not_transfers() -> None:
    idle, loaded = bidder(), bidder(background=0.5)
    call = CallForBids("a", "me", "fp", (ITEM,))
    d0, d1 = idle.bid(call, 0.0).duration["x"], loaded.bid(call, 0.0).duration["x"]
    compute = idle.compute_seconds(ITEM)
    assert d1 - d0 == pytest.approx(compute)  # twice the compute, same link time


def test_probe_bids_reveal_the_fit() -> None:
    call = CallForBids("a", "me", "fp", probe_items([("conv", 10**9), ("pool", 10**7)]))
    bid = bidder(background=0.25).bid(call, 0.0)
    d1, d2 = bid.duration["probe:conv:1"], bid.duration["probe:conv:2"]
    a = (d1 - d2) / (10**9 - 10**9 // 2)
    assert a == pytest.approx(CONV.a / 0.75)
    assert d1 - a * 10**9 == pytest.approx(CONV.b / 0.75)


def test_probe_items_are_two_sizes_per_kind_and_skip_what_cannot_be_halved() -> None:
    items = probe_items([("conv", 1), ("pool", 2), ("block", 7)])
    assert items == (
        WorkItem("probe:pool:1", {"pool": 2}),
        WorkItem("probe:pool:2", {"pool": 1}),
        WorkItem("probe:block:1", {"block": 7}),
        WorkItem("probe:block:2", {"block": 3}),
    )
    assert all(type(f) is int for it in items for f in it.flops.values())


def test_decline_when_full_or_out_of_memory_or_wrong_model() -> None:
    call = CallForBids("a", "me", "fp", (ITEM,))
    full = bidder(horizon=1.0)
    full.add_work(1.0, 0.0)
    assert full.bid(call, 0.0).declined == "capacity"
    small = bidder(memory_bytes=1000)
    assert small.bid(call, 0.0).declined and not small.bid(call, 0.0).duration
    other = bidder(fingerprints=frozenset({"other"}))
    assert "no weights" in other.bid(call, 0.0).declined


def test_items_past_the_horizon_or_free_memory_are_left_out_of_the_bid() -> None:
    # Horizon 1 s with 0.5 s committed: an item of 0.3 s or exactly 0.5 s of compute
    # is priced; one of 0.502 s, or one needing more memory than is free, is not.
    b = bidder(horizon=1.0, memory_bytes=1 << 20)
    b.add_work(0.5, now=0.0)
    items = (
        WorkItem("small", {"conv": 298_000_000}),
        WorkItem("edge", {"conv": 498_000_000}),
        WorkItem("past", {"conv": 500_000_000}),
        WorkItem("big", {"conv": 1_000_000}, memory=(1 << 20) + 1),
    )
    bid = b.bid(CallForBids("a", "me", "fp", items), now=0.0)
    assert not bid.declined
    assert set(bid.duration) == {"small", "edge"}
    assert bid.duration["edge"] == pytest.approx(b.duration(items[1]))
    # Nothing left that fits: a decline that says why.
    none = b.bid(CallForBids("b", "me", "fp", items[2:]), now=0.0)
    assert none.declined == "no item fits in free memory and capacity" and not none.duration
    # Later the backlog has drained by 0.25 s, and "past" fits.
    later = b.bid(CallForBids("c", "me", "fp", items), now=0.25)
    assert set(later.duration) == {"small", "edge", "past"}


def test_award_reserves_until_delivery_or_lease() -> None:
    b = bidder(horizon=5.0)
    award = Award("a", "p", (ITEM,), seq=1, lease=1.0)
    assert b.accept(award, 0.0).accepted
    secs = b.compute_seconds(ITEM)
    assert b.committed(0.0) == pytest.approx(secs)
    assert b.free_memory(0.0) == b.memory_bytes - ITEM.memory
    # Delivered in time: the reservation becomes backlog.
    r = b.deliver("a", 0.5)
    assert r is not None and b.backlog(0.5) == pytest.approx(secs)
    # A second award whose work never comes: the lease lapses at 2.0 + 1.0.
    assert b.accept(Award("b", "p", (ITEM,), seq=1, lease=1.0), 2.0).accepted
    assert b.tick(2.99) == []
    lapsed = b.tick(3.0)
    assert [x.auction_id for x in lapsed] == ["b"]
    assert b.deliver("b", 3.1) is None
    assert b.committed(3.1) == pytest.approx(0.0)


def test_award_replies_and_holds_at_their_exact_limits() -> None:
    """Each reply names the auction, the bidder and the seq it answers; each limit
    (horizon, memory, staleness) admits exactly what reaches it, not a bit more."""
    one = WorkItem("i", {"conv": 98_000_000}, memory=1000)  # 0.1 s of compute here
    b = bidder(horizon=0.3, memory_bytes=3000)
    ok = b.accept(Award("a", "p", (one,), seq=2, lease=1.0), 0.0)
    assert ok == AwardReply("a", "p", 2, True)
    assert b.ledger.active["a"].item_ids == ("i",) and b.ledger.active["a"].memory == 1000
    # The same award again, or an older one: the newer promise stands.
    for seq in (2, 1):
        again = b.accept(Award("a", "p", (one,), seq=seq, lease=1.0), 0.0)
        assert again == AwardReply("a", "p", seq, False, "superseded")
    assert b.ledger.active["a"].seq == 2
    with pytest.raises(ValueError, match="bidder p got an award addressed to q"):
        b.accept(Award("x", "q", (one,)), 0.0)
    # Horizon: 0.2 s more fits exactly (0.1 + 0.2 = 0.3), 0.1 s beyond that does not.
    two = WorkItem("j", {"conv": 198_000_000})
    assert b.accept(Award("b", "p", (two,), quoted_backlog=0.1), 0.0).accepted
    tiny = WorkItem("k", {"conv": 1})
    full = b.accept(Award("c", "p", (tiny,), seq=3, quoted_backlog=0.3), 0.0)
    assert full == AwardReply("c", "p", 3, False, "capacity")
    # Memory: what is free is enough (3500 - 500 running - 1000 held), a byte more is not.
    b2 = bidder(memory_bytes=3500)
    b2.add_work(1.0, 0.0, memory=500)
    assert b2.accept(Award("a", "p", (one,), quoted_backlog=1.0), 0.0).accepted
    exact = WorkItem("m", {"conv": 1}, memory=2000)
    over = WorkItem("n", {"conv": 1}, memory=2001)
    q = b2.committed(0.0)
    assert b2.accept(Award("b", "p", (over,), quoted_backlog=q), 0.0).reason == "memory"
    assert b2.accept(Award("c", "p", (exact,), quoted_backlog=q), 0.0).accepted
    # Staleness: committed work grown by exactly stale_tolerance x the award is accepted.
    b3 = bidder(stale_tolerance=0.5)
    b3.add_work(0.05, 0.0)
    secs = b3.compute_seconds(one)  # 0.1 s: tolerance 0.05 s
    assert b3.accept(Award("a", "p", (one,), quoted_backlog=0.05 - 0.5 * secs), 0.0).accepted
    stale = b3.accept(Award("b", "p", (one,), quoted_backlog=0.0), 0.0)
    assert not stale.accepted and stale.reason == "stale"
    # Delivered, the held memory moves to the running work.
    assert b.deliver("a", 0.0) is not None
    assert b.free_memory(0.0) == b.memory_bytes - 1000


def test_a_declined_bid_prices_nothing() -> None:
    full = bidder(horizon=1.0)
    full.add_work(1.0, 0.0)
    bid = full.bid(CallForBids("a", "me", "fp", (ITEM,)), 0.0)
    assert bid.declined == "capacity" and bid.duration == {}


def test_award_declines_rather_than_over_promise() -> None:
    b = bidder(horizon=0.25)  # room for two items of ~0.105 s, not three
    replies = [
        b.accept(Award(f"a{k}", "p", (ITEM,), lease=9.0, quoted_backlog=9), 0.0) for k in range(3)
    ]
    assert [r.accepted for r in replies] == [True, True, False]
    assert replies[2].reason == "capacity"
    assert b.committed(0.0) <= b.horizon


def test_award_after_being_promised_elsewhere_is_stale() -> None:
    b = bidder()
    call = CallForBids("a", "me", "fp", (ITEM,))
    quote = b.bid(call, 0.0)
    big = WorkItem("big", {"conv": 2_000_000_000})
    assert b.accept(Award("other", "p", (big,)), 0.0).accepted
    reply = b.accept(Award("a", "p", (ITEM,), quoted_backlog=quote.backlog), 0.01)
    assert (reply.accepted, reply.reason) == (False, "stale")


def test_replacing_and_releasing_a_reservation() -> None:
    b = bidder()
    two = WorkItem("y", {"conv": 300_000_000})
    assert b.accept(Award("a", "p", (ITEM,), seq=1), 0.0).accepted
    assert b.accept(Award("a", "p", (ITEM, two), seq=2), 0.0).accepted
    assert b.committed(0.0) == pytest.approx(b.compute_seconds(ITEM) + b.compute_seconds(two))
    assert b.accept(Award("a", "p", (ITEM,), seq=1), 0.0).reason == "superseded"
    assert b.release("a") is not None and b.committed(0.0) == 0.0


def test_messages_round_trip_through_plain_dicts() -> None:
    call = CallForBids("a", "me", "fp", (ITEM,), window=0.2)
    bid = bidder().bid(call, 0.0)
    award = Award("a", "p", (ITEM,), seq=3, lease=1.5, quoted_backlog=0.25)
    reply = AwardReply("a", "p", 3, False, "capacity")
    for m in (call, bid, award, reply, Release("a", "p"), ITEM):
        assert type(m).from_dict(m.to_dict()) == m
    with pytest.raises(MessageError, match="missing field 'bidder'"):
        Bid.from_dict({"auction": "a"})
    with pytest.raises(MessageError, match="'flops' and 'calls' must be maps"):
        WorkItem.from_dict({"id": "x", "flops": [1, 2]})


# ---- no over-commitment with several simultaneous auctions --------------------------------

PEERS = ("p0", "p1", "p2")


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[list[int]], list[tuple[int, int, float]], list[int]]:
    n_auctions = draw(st.integers(2, 5))
    sizes = [
        draw(st.lists(st.integers(50, 900), min_size=1, max_size=4)) for _ in range(n_auctions)
    ]
    # (auction, action, time step) in an arbitrary interleaving. Action 0-3 moves the
    # auction one hop on (peers bid / bids arrive / awards arrive / replies arrive /
    # work arrives); 4 fires its timer. Every hop is its own step, so the bids of one
    # auction can be made before another's awards land.
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, n_auctions - 1), st.integers(0, 4), st.floats(0, 0.04)),
            min_size=5,
            max_size=60,
        )
    )
    horizons = draw(st.lists(st.integers(1, 20), min_size=len(PEERS), max_size=len(PEERS)))
    return sizes, steps, horizons


@settings(max_examples=150, deadline=None)
@given(schedules())
def test_simultaneous_auctions_never_over_commit(
    sched: tuple[list[list[int]], list[tuple[int, int, float]], list[int]],
) -> None:
    sizes, steps, horizons = sched
    peers = {
        p: Bidder(
            p,
            ComputeModel({"conv": LinearFit(1e-9 * (1 + k), 0.0)}),
            LinkModel(1e7, 0.002),
            memory_bytes=3_000_000,
            horizon=h / 10,
            stale_tolerance=1e9,  # only capacity limits: the hardest case for the ledger
        )
        for k, (p, h) in enumerate(zip(PEERS, horizons, strict=True))
    }
    cfg = RoundConfig(window=0.1, reply_timeout=0.1, lease=0.5)
    rounds: list[AuctionRound] = []
    bids: list[list[Bid]] = []  # made by the peers, not yet at the auctioneer
    awards: list[list[Award]] = []  # sent by the auctioneer, not yet at the peer
    replies: list[list[AwardReply]] = []
    for a, mflops in enumerate(sizes):
        items = tuple(
            WorkItem(f"a{a}i{k}", {"conv": m * 1_000_000}, memory=1_000_000)
            for k, m in enumerate(mflops)
        )
        rounds.append(AuctionRound(CallForBids(f"a{a}", "me", "fp", items), frozenset(PEERS), cfg))
        bids.append([])
        awards.append([])
        replies.append([])
    now = 0.0
    opened: set[int] = set()
    asked: set[int] = set()

    def send(a: int, sends: list[Any]) -> None:
        for s in sends:
            if isinstance(s.message, Award):
                awards[a].append(s.message)
            elif isinstance(s.message, Release):
                peers[s.to].release(s.message.auction_id)

    for a, kind, dt in steps:
        now += dt
        r = rounds[a]
        if a not in opened:  # auctions open at staggered times
            opened.add(a)
            r.start(now)
        if kind == 4:
            send(a, r.handle_timer(now))
        elif r.phase is Phase.COLLECTING and not bids[a] and a not in asked:
            asked.add(a)
            bids[a] = [peers[p].bid(r.call, now) for p in PEERS]
        elif bids[a]:
            for bid in bids[a]:
                send(a, r.receive_bid(bid, now))
            bids[a] = []
        elif awards[a]:
            replies[a] += [peers[aw.bidder].accept(aw, now) for aw in awards[a]]
            awards[a] = []
        elif replies[a]:
            for reply in replies[a]:
                send(a, r.receive_reply(reply, now))
            replies[a] = []
        elif r.phase is Phase.COMMITTED:
            for p in sorted(r.awards):
                if p not in r.delivered and peers[p].deliver(r.call.auction_id, now) is not None:
                    r.mark_delivered(p, now)
        for b in peers.values():
            b.tick(now)
            assert b.committed(now) <= b.horizon + 1e-9, f"{b.name} promised past its horizon"
            assert b.free_memory(now) >= 0, f"{b.name} promised more memory than it has"
        # An auctioneer never counts on a reservation the peer does not hold.
        for rr in rounds:
            if rr.phase is Phase.COMMITTED:
                for p in rr.awards:
                    held = peers[p].ledger.active.get(rr.call.auction_id)
                    if p not in rr.delivered and held is not None:
                        assert held.seq == rr.awards[p].seq


def test_declining_a_re_award_leaves_no_hold() -> None:
    """The round treats a peer that declines as holding nothing, so it must not."""
    b = Bidder("p", ComputeModel({"conv": LinearFit(1e-9, 0.0)}), LinkModel(1e9, 0.0), horizon=1.0)
    first = Award("a", "p", (WorkItem("i", {"conv": 400_000_000}),), seq=1)
    assert b.accept(first, 0.0).accepted
    bigger = Award("a", "p", (WorkItem("i", {"conv": 2_000_000_000}),), seq=2)
    reply = b.accept(bigger, 0.1)
    assert not reply.accepted and reply.reason == "capacity"
    assert "a" not in b.ledger.active and b.committed(0.1) == 0.0


def test_an_idle_peer_has_no_backlog_however_long_its_work_was_predicted() -> None:
    b = bidder()
    b.add_work(2.0, 10.0, memory=1 << 20)
    assert b.backlog(10.5) == pytest.approx(1.5)
    assert b.free_memory(10.5) == b.memory_bytes - (1 << 20)
    b.idle(10.5)  # it all finished early
    assert b.backlog(10.5) == 0.0 and b.free_memory(10.5) == b.memory_bytes
    b.add_work(1.0, 11.0)  # new work queues from now, not from the old predicted end
    assert b.backlog(11.0) == pytest.approx(1.0)


def test_a_bid_carries_the_peer_and_its_weights_for_the_model_called() -> None:
    def holding(fp: str) -> Holding:
        return Holding(100, ("features",), {"head": 50}) if fp == "fp" else Holding()

    b = bidder(
        memory_bytes=10_000, host="h", cpus=2.0, host_cpus=4.0, valid_for=0.7, holding=holding
    )
    bid = b.bid(CallForBids("a", "me", "fp", (ITEM,)), 0.0)
    assert (bid.host, bid.cpus, bid.host_cpus, bid.valid_for) == ("h", 2.0, 4.0, 0.7)
    assert bid.held == ("features",) and bid.load == {"head": 50}
    assert bid.free_memory == 10_000 - 100
    other = b.bid(CallForBids("a", "me", "other-model", (ITEM,)), 0.0)
    assert other.free_memory == 10_000 and other.held == ()
    # A head item needs the head's weights, a feature item the features' (held).
    head = WorkItem("h", {"head": 1000}, memory=10)
    assert b.item_memory(head, holding("fp")) == 60
    assert b.item_memory(ITEM, holding("fp")) == ITEM.memory
    assert item_parts(head) == ("head",) and item_parts(ITEM) == ("features",)
    call = CallForBids("a", "me", "0123456789abcdef", ())
    wrong = bidder(fingerprints=frozenset({"x"})).bid(call, 0)
    assert wrong.declined == "no weights for model '0123456789ab'"


def test_items_that_do_not_fit_are_skipped_not_the_ones_after_them() -> None:
    b = bidder(horizon=1.0, memory_bytes=1000)
    b.add_work(1.0, 0.0)  # no memory given: none held
    assert b.free_memory(0.0) == 1000
    b = bidder(horizon=1.0, memory_bytes=1000)
    items = (
        WorkItem("big", {"conv": 1}, memory=1001),
        WorkItem("long", {"conv": 2_000_000_000}),
        WorkItem("exact", {"conv": 1}, memory=1000),  # all the free memory: fits
    )
    assert set(b.bid(CallForBids("a", "me", "fp", items), 0.0).duration) == {"exact"}


def test_compute_prices_each_kind_with_its_fit_or_the_conv_fit() -> None:
    b = Bidder("p", ComputeModel({"conv": LinearFit(1e-9, 0.01)}), LinkModel(1e9, 0.0))
    # An unknown kind is priced with the conv fit; calls multiply the per-call cost;
    # a kind with no FLOPs costs nothing (not even its calls), and the others still count.
    item = WorkItem("i", {"pool": 0, "block": 10**9}, calls={"block": 4, "pool": 3})
    assert b.compute_seconds(item) == pytest.approx(1.0 + 4 * 0.01)
    none = Bidder("p", ComputeModel({"pool": LinearFit(1e-9, 0.0)}), LinkModel(1e9, 0.0))
    with pytest.raises(KeyError, match=r"bidder p: no compute fit for 'block' \(nor 'conv'\)"):
        none.compute_seconds(WorkItem("i", {"block": 1}))
    with pytest.raises(ValueError, match=r"bidder p: background CPU share 1.0 is not in \[0, 1\)"):
        bidder(background=1.0)
    assert bidder(background=0.99).background == 0.99


def test_an_award_is_checked_against_the_room_of_the_model_its_call_named() -> None:
    # 600 bytes of weights held; for model "fp", 400 of them (another model's) would be
    # dropped to make room. The callback takes a fingerprint, always a string ("": no
    # model named, nothing to drop).
    def holding(fp: str) -> Holding:
        assert isinstance(fp, str), fp
        return Holding(600, ("features",), {}, droppable=400 if fp == "fp" else 0)

    b = bidder(memory_bytes=1000, holding=holding)
    assert b.free_memory(0.0, "fp") == 1000 - 600 + 400
    assert b.free_memory(0.0) == 1000 - 600
    needs = (WorkItem("x", {"conv": 1}, memory=700),)
    # The bidder remembers the model of the last 256 calls, oldest forgotten first.
    for i in range(257):
        assert b.bid(CallForBids(f"a{i}", "me", "fp", (ITEM,)), 0.0).free_memory == 800
    # Forgotten (or never called): no model named, so only the 400 free bytes count.
    assert b.accept(Award("a0", "p", needs), 0.0).reason == "memory"
    assert b.accept(Award("never", "p", needs), 0.0).reason == "memory"
    # Remembered: the other model's 400 bytes count as room.
    assert b.accept(Award("a1", "p", needs), 0.0).accepted


def test_work_done_at_now_holds_no_memory() -> None:
    b = bidder(memory_bytes=1000)
    assert b.add_work(1.0, 0.0, memory=100) == 1.0
    assert b.free_memory(0.5) == 900
    assert b.free_memory(1.0) == 1000  # it finished exactly now
