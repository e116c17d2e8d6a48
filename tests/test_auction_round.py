"""The auction round's transitions, table-driven: each case is a script of inputs
and what must come of it (final phase, the path through the transition table,
who won, what was ignored and why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from edgeci_p2p.auction.messages import Award, AwardReply, Bid, CallForBids, Release, WorkItem
from edgeci_p2p.auction.round import (
    TRANSITIONS,
    AuctionRound,
    Input,
    Phase,
    RoundConfig,
    RoundStateError,
    Send,
)

ITEMS = tuple(WorkItem(f"i{k}", {"conv": 1_000_000 * (k + 1)}) for k in range(4))
CALL = CallForBids("auc-1", "me", "fp", ITEMS, window=0.1)
CFG = RoundConfig(window=0.1, reply_timeout=0.05, lease=1.0)


def bid(peer: str, speed: float = 1.0, backlog: float = 0.0, valid_for: float = 0.5) -> Bid:
    return Bid(
        "auc-1",
        peer,
        backlog=backlog,
        duration={it.item_id: it.flops["conv"] / 1e6 / speed for it in ITEMS},
        valid_for=valid_for,
    )


@dataclass
class Case:
    name: str
    peers: tuple[str, ...]
    script: list[tuple[Any, ...]]
    """("bid", t, Bid) | ("timer", t) | ("reply", t, peer, accepted) | ("deliver", t, peer)
    | ("reply-all", t) | ("deliver-all", t)."""
    phase: Phase
    path: list[Input]
    winners: set[str] = field(default_factory=set)
    ignored: dict[str, str] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)


A, B, C = "peer-a", "peer-b", "peer-c"
BOTH_BID = [("bid", 0.01, bid(A)), ("bid", 0.02, bid(B))]
"""The script's start where A and B both bid."""
AWARDED = [Input.BID, Input.BID, Input.CLOSE, Input.AWARD]
"""Two bids in, the window closed, the items awarded."""
BOTH_ACCEPT = [Input.ACCEPT, Input.ACCEPT, Input.ALL_ACCEPTED]

CASES = [
    Case(
        "all bids in: closes before the window, awards, commits, done",
        (A, B),
        [*BOTH_BID, ("reply-all", 0.03), ("deliver-all", 0.04)],
        Phase.DONE,
        [*AWARDED, *BOTH_ACCEPT, Input.DELIVER, Input.DELIVER, Input.ALL_DELIVERED],
        {A, B},
    ),
    Case(
        "window closes with a silent peer: decide with the bids in hand",
        (A, B, C),
        [*BOTH_BID, ("timer", 0.1), ("reply-all", 0.11)],
        Phase.COMMITTED,
        [*AWARDED, *BOTH_ACCEPT],
        {A, B},
    ),
    Case(
        "late bid after the window is ignored",
        (A, B),
        [("bid", 0.01, bid(A)), ("timer", 0.1), ("bid", 0.12, bid(B, speed=10.0))],
        Phase.AWARDING,
        [Input.BID, Input.CLOSE, Input.AWARD],
        {A},
        {B: "late"},
    ),
    Case(
        "a bid that expires before the decision is ignored",
        (A, B, C),
        [("bid", 0.01, bid(A, speed=10.0, valid_for=0.05)), ("bid", 0.02, bid(B)), ("timer", 0.1)],
        Phase.AWARDING,
        AWARDED,
        {B},
        {A: "expired"},
        {A},
    ),
    Case(
        "no bidders at all: local execution",
        (),
        [],
        Phase.LOCAL,
        [Input.CLOSE, Input.NO_BIDS],
    ),
    Case(
        "called peers stay silent: local execution when the window closes",
        (A, B),
        [("timer", 0.1)],
        Phase.LOCAL,
        [Input.CLOSE, Input.NO_BIDS],
    ),
    Case(
        "a peer declining the call counts as an answer",
        (A, B),
        [("bid", 0.01, Bid("auc-1", B, declined="capacity")), ("bid", 0.02, bid(A))],
        Phase.AWARDING,
        [Input.DECLINE, Input.BID, Input.CLOSE, Input.AWARD],
        {A},
    ),
    Case(
        "a winner declining its award: re-plan without it",
        (A, B),
        [*BOTH_BID, ("reply", 0.03, A, False), ("reply-all", 0.04)],
        Phase.COMMITTED,
        [*AWARDED, Input.REJECT, Input.AWARD, Input.ACCEPT, Input.ALL_ACCEPTED],
        {B},
        {},
        {A},
    ),
    Case(
        "a winner that never confirms is dropped at the reply timeout",
        (A, B),
        [*BOTH_BID, ("reply", 0.03, B, True), ("timer", 0.08), ("reply-all", 0.09)],
        Phase.COMMITTED,
        [*AWARDED, Input.ACCEPT, Input.REJECT, Input.AWARD, Input.ACCEPT, Input.ALL_ACCEPTED],
        {B},
        {},
        {A},
    ),
    Case(
        "an expired lease (work not delivered in time): re-plan without that peer",
        (A, B),
        [*BOTH_BID, ("reply-all", 0.03), ("deliver", 0.5, B), ("timer", 1.02)],
        Phase.AWARDING,
        [*AWARDED, *BOTH_ACCEPT, Input.DELIVER, Input.LAPSE, Input.AWARD],
        {B},
        {},
        {A},
    ),
]


def run(case: Case) -> tuple[AuctionRound, list[Any]]:
    r = AuctionRound(CALL, frozenset(case.peers), CFG)
    sent: list[Any] = [s.message for s in r.start(0.0)]
    for step in case.script:
        kind, t = step[0], step[1]
        if kind == "bid":
            sent += [s.message for s in r.receive_bid(step[2], t)]
        elif kind == "timer":
            timer = r.get_timer()
            assert timer is not None and timer <= t, f"no timer due at {t} (timer {timer})"
            sent += [s.message for s in r.handle_timer(t)]
        elif kind == "reply":
            aw = r.awards[step[2]]
            sent += [
                s.message
                for s in r.receive_reply(
                    AwardReply("auc-1", step[2], aw.seq, step[3], "" if step[3] else "capacity"), t
                )
            ]
        elif kind == "reply-all":
            for p, aw in sorted(r.awards.items()):
                if p not in r.accepted:
                    sent += [
                        s.message for s in r.receive_reply(AwardReply("auc-1", p, aw.seq, True), t)
                    ]
        elif kind == "deliver":
            r.mark_delivered(step[2], t)
        elif kind == "deliver-all":
            for p in sorted(r.awards):
                r.mark_delivered(p, t)
    return r, sent


def test_the_cases_walk_every_row_of_the_transition_table() -> None:
    walked = {(before, event) for case in CASES for before, event, _ in run(case)[0].history}
    assert walked == set(TRANSITIONS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_round_transitions(case: Case) -> None:
    r, sent = run(case)
    assert r.phase is case.phase
    assert [i for _, i, _ in r.history] == case.path
    # The history is one connected walk from COLLECTING to the final phase (checked
    # against the walk itself: the table that builds it proves nothing about it).
    phases = [Phase.COLLECTING, *(after for _, _, after in r.history)]
    assert [before for before, _, _ in r.history] == phases[:-1]
    assert phases[-1] is case.phase
    assert set(r.awards) == case.winners
    assert {p: why for p, why in r.ignored} == case.ignored
    assert set(r.excluded) >= case.excluded
    # Every item is awarded exactly once unless the round ended locally.
    awarded = [it.item_id for aw in r.awards.values() for it in aw.items]
    if case.phase is Phase.LOCAL:
        assert awarded == []
    else:
        assert sorted(awarded) == sorted(it.item_id for it in ITEMS)
    # A peer excluded after winning was released or superseded, never left holding work.
    for p in case.excluded:
        assert p not in r.awards
    # What the round believes it awarded is what it told the caller to send.
    for aw in r.awards.values():
        assert aw in sent


def test_calls_go_to_every_live_peer() -> None:
    r = AuctionRound(CALL, frozenset({A, B, C}), CFG)
    sends = r.start(5.0)
    assert sorted(s.to for s in sends) == [A, B, C]
    assert all(s.message == CALL for s in sends)
    assert r.get_timer() == pytest.approx(5.1)
    assert r.handle_timer(5.05) == [] and r.phase is Phase.COLLECTING


def test_declines_cascade_to_local_without_releases() -> None:
    # A is fast and takes everything at first; B then gets nothing. When A declines,
    # B is awarded all; when B in turn declines, nobody is left: local, and no
    # release goes to peers that hold nothing.
    r = AuctionRound(CALL, frozenset({A, B}), CFG)
    r.start(0.0)
    r.receive_bid(bid(A, speed=100.0), 0.01)
    sends = r.receive_bid(bid(B, backlog=50.0), 0.02)
    assert [s.to for s in sends] == [A]
    first: Award = sends[0].message  # type: ignore[assignment]
    r.receive_reply(AwardReply("auc-1", A, first.seq, False, "stale"), 0.03)
    assert set(r.awards) == {B}
    again = r.awards[B]
    assert again.seq > first.seq
    sends = r.receive_reply(AwardReply("auc-1", B, again.seq, False, "capacity"), 0.04)
    assert r.phase is Phase.LOCAL and not r.awards and sends == []


def test_only_the_last_bid_and_a_declined_award_may_run_the_planner() -> None:
    # The auctioneer hands exactly these to a thread; everything else is handled inline,
    # so a message that does plan must be one may_decide says yes to.
    planned: list[int] = []

    def decide(call: CallForBids, bids: Any) -> dict[str, tuple[WorkItem, ...]]:
        planned.append(len(bids))
        return {b.bidder: call.items for b in bids}

    r = AuctionRound(CALL, frozenset({A, B, C}), CFG, decide=decide)
    r.start(0.0)
    for k, p in enumerate((A, B, C)):
        b = bid(p)
        assert r.may_decide(b) == (k == 2)
        r.receive_bid(b, 0.01)
        assert len(planned) == (1 if k == 2 else 0)
    ok = AwardReply("auc-1", A, r.awards[A].seq, True)
    no = AwardReply("auc-1", B, r.awards[B].seq, False, "capacity")
    assert not r.may_decide(ok) and r.may_decide(no)
    r.receive_reply(ok, 0.02)
    assert len(planned) == 1
    r.receive_reply(no, 0.03)
    assert len(planned) == 2


def test_a_silent_winner_is_released_when_planned_around() -> None:
    # Its acceptance may still be on the way: it must be told to drop the hold.
    r = AuctionRound(CALL, frozenset({A, B}), CFG)
    r.start(0.0)
    r.receive_bid(bid(A), 0.0)
    r.receive_bid(bid(B), 0.0)
    r.receive_reply(AwardReply("auc-1", B, r.awards[B].seq, True), 0.01)
    sends = r.handle_timer(0.06)
    assert Send(A, Release("auc-1", A)) in sends
    assert set(r.awards) == {B} and r.awards[B].seq == 2


def test_lapse_moves_the_lapsed_share_to_the_delivered_peer() -> None:
    # Two winners commit; B's work never comes. The re-plan gives everything to A
    # (new seq), and B is told to drop a hold whose lease may outlive ours by the
    # award's flight time.
    r = AuctionRound(CALL, frozenset({A, B}), CFG)
    r.start(0.0)
    r.receive_bid(bid(A), 0.0)
    r.receive_bid(bid(B), 0.0)
    for p, aw in sorted(r.awards.items()):
        r.receive_reply(AwardReply("auc-1", p, aw.seq, True), 0.01)
    r.mark_delivered(A, 0.2)
    sends = r.handle_timer(1.5)
    assert [(s.to, type(s.message).__name__) for s in sends] == [(B, "Release"), (A, "Award")]
    assert r.awards[A].seq == 2 and len(r.awards[A].items) == len(ITEMS)


def test_stale_reply_and_foreign_bid_are_ignored() -> None:
    r = AuctionRound(CALL, frozenset({A, B}), CFG)
    r.start(0.0)
    r.receive_bid(Bid("other-auction", A, duration={"i0": 1.0}), 0.01)
    r.receive_bid(bid(C), 0.01)
    r.receive_bid(bid(A), 0.02)
    r.receive_bid(bid(A), 0.03)
    assert [w for _, w in r.ignored] == [
        "bid for auction 'other-auction'",
        "not a called peer",
        "duplicate",
    ]
    r.receive_bid(bid(B), 0.04)
    old_seq = r.awards[A].seq
    r.receive_reply(AwardReply("auc-1", A, old_seq + 7, True), 0.05)
    assert A not in r.accepted


def test_inputs_outside_the_table_are_our_bug() -> None:
    r = AuctionRound(CALL, frozenset({A}), CFG)
    r.start(0.0)
    with pytest.raises(RoundStateError, match="deliver"):
        r.mark_delivered(A, 0.01)


def test_reply_timeout_counts_from_when_awards_were_sent() -> None:
    """A slow decider must not make every winner miss its reply timeout."""
    from edgeci_p2p.auction.messages import AwardReply, Bid, CallForBids, WorkItem
    from edgeci_p2p.auction.round import AuctionRound, Phase, RoundConfig

    call = CallForBids("a1", "p0", "fp", (WorkItem("i1", {"conv": 10}),), 0.1)
    rnd = AuctionRound(call, frozenset({"p0"}), RoundConfig(window=0.1, reply_timeout=0.5))
    rnd.start(0.0)
    sends = rnd.receive_bid(Bid("a1", "p0", 0.0, {"i1": 1.0}, 1 << 20, 1e9, 0.0, 5.0), 0.01)
    assert rnd.phase is Phase.AWARDING and sends
    rnd.awards_sent(2.0)  # the decision took two seconds
    assert rnd.handle_timer(2.2) == [] and rnd.phase is Phase.AWARDING
    seq = rnd.awards["p0"].seq
    rnd.receive_reply(AwardReply("a1", "p0", seq, True), 2.3)
    assert rnd.phase is Phase.COMMITTED
