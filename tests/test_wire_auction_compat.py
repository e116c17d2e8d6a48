"""The wire's auction messages carry the AWAS messages exactly, in both directions.

The daemon converts with ``message_from_wire({"type": T, **auction_msg.to_dict()})``
on the way out and ``AuctionMsg.from_dict(wire_msg.to_dict())`` on the way in;
the wire package does not import the auction package, so this is where the two
are held together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeci_p2p.auction import messages as awas
from edgeci_p2p.wire import messages as wire
from edgeci_p2p.wire.session import Established, Session, SessionConfig
from tests.wiresamples import samples

AuctionMessage = awas.CallForBids | awas.Bid | awas.Award | awas.AwardReply | awas.Release

WIRE_TYPE: dict[type[Any], str] = {
    awas.CallForBids: "call_for_bids",
    awas.Bid: "bid",
    awas.Award: "award",
    awas.AwardReply: "award_reply",
    awas.Release: "release",
}


def open_pair() -> tuple[Session, Session]:
    a = Session(SessionConfig("A", port=7001))
    b = Session(SessionConfig("B", port=7002))
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established) and isinstance(b.next_event(), Established)
    return a, b


def through_the_wire(msg: AuctionMessage, model: str | None = None) -> wire.Message:
    """Auction message -> wire message -> frame -> the wire message the peer decodes."""
    d = msg.to_dict()
    if model is not None:
        d["model"] = model
    out = wire.message_from_wire({"type": WIRE_TYPE[type(msg)], **d})
    a, b = open_pair()
    b.receive_data(a.send(out))
    got = b.next_event()
    assert isinstance(got, wire.Message) and b.next_event() is None
    return got


def back(msg: AuctionMessage, got: wire.Message) -> AuctionMessage:
    assert WIRE_TYPE[type(msg)] == got.TYPE
    converted: AuctionMessage = type(msg).from_dict(got.to_dict())
    return converted


# --- the field sets are the same -------------------------------------------------------------

ITEM = awas.WorkItem("i0", {"conv": 10**9}, 10, 20, 30, {"conv": 2})
EXAMPLES: list[AuctionMessage] = [
    awas.CallForBids("a", "me", "fp", (ITEM,), 0.1),
    awas.Bid(
        "a",
        "p",
        0.5,
        {"i0": 0.25},
        1 << 20,
        1e7,
        0.002,
        0.5,
        "",
        "h1",
        1.0,
        2.0,
        ("features",),
        {"head": 494 << 20},
        300 << 20,
        0.004,
        1.21,
        0.003,
    ),
    awas.Award("a", "p", (ITEM,), 3, 2.0, 0.5),
    awas.AwardReply("a", "p", 3, False, "capacity"),
    awas.Release("a", "p"),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: WIRE_TYPE[type(m)])
def test_wire_fields_are_exactly_the_auction_fields(msg: AuctionMessage) -> None:
    cls = wire.MESSAGE_TYPES[WIRE_TYPE[type(msg)]]
    extra = {"model"} if cls is wire.CallForBids else set()
    assert set(cls._fields()) == set(msg.to_dict()) | extra
    assert set(wire.WorkItem._fields()) == set(ITEM.to_dict())
    # Same keys and values on the wire as in the auction's own plain form.
    assert through_the_wire(msg).to_dict() == msg.to_dict()


def test_model_rides_along_and_the_auction_side_ignores_it() -> None:
    call = EXAMPLES[0]
    assert isinstance(call, awas.CallForBids)
    got = through_the_wire(call, model="vgg16")
    assert isinstance(got, wire.CallForBids) and got.model == "vgg16"
    assert awas.CallForBids.from_dict(got.to_dict()) == call


def test_a_declined_bid_and_a_declined_award_survive() -> None:
    for msg in (
        awas.Bid("a", "p", 4.0, {}, 0, 0.0, 0.0, 0.5, "capacity"),
        awas.AwardReply("a", "p", 7, False, "superseded"),
    ):
        assert back(msg, through_the_wire(msg)) == msg


# --- property: any valid auction message round-trips ----------------------------------------

ids = st.text(max_size=12)
counts = st.integers(min_value=0, max_value=2**64 - 1)
seconds = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
kinds = st.sampled_from(["conv", "pool", "block", "head"])


@st.composite
def work_items(draw: st.DrawFn, n_max: int = 5) -> tuple[awas.WorkItem, ...]:
    names = draw(st.lists(ids, max_size=n_max, unique=True))
    return tuple(
        awas.WorkItem(
            name,
            draw(st.dictionaries(kinds, counts, max_size=4)),
            draw(counts),
            draw(counts),
            draw(counts),
            draw(st.dictionaries(kinds, st.integers(0, 10**6), max_size=4)),
        )
        for name in names
    )


calls = st.builds(awas.CallForBids, ids, ids, ids, work_items(), seconds)
bids = st.builds(
    awas.Bid,
    ids,
    ids,
    seconds,
    st.dictionaries(ids, seconds, max_size=5),
    counts,
    seconds,
    seconds,
    seconds,
    st.one_of(st.just(""), ids),
)
awards = st.builds(awas.Award, ids, ids, work_items(), counts, seconds, seconds)
replies = st.builds(awas.AwardReply, ids, ids, counts, st.booleans(), ids)
releases = st.builds(awas.Release, ids, ids)
prop = settings(max_examples=150, deadline=None)


@prop
@given(calls, st.one_of(st.none(), ids))
def test_call_for_bids_round_trips(msg: awas.CallForBids, model: str | None) -> None:
    got = through_the_wire(msg, model)
    assert isinstance(got, wire.CallForBids) and got.model == model
    assert back(msg, got) == msg


@prop
@given(st.one_of(bids, awards, replies, releases))
def test_bids_awards_replies_and_releases_round_trip(msg: AuctionMessage) -> None:
    assert back(msg, through_the_wire(msg)) == msg


def test_the_wire_and_the_auction_refuse_the_same_strip_factors() -> None:
    assert wire.STRIP_FACTOR_RANGE == awas.STRIP_FACTOR_RANGE
    (bid,) = [m for m in samples() if isinstance(m, wire.Bid)][:1]
    lo, hi = wire.STRIP_FACTOR_RANGE
    for bad in (lo / 2, hi * 2):
        with pytest.raises(wire.MessageError, match="strip_factor"):
            dataclasses.replace(bid, strip_factor=bad)
        with pytest.raises(awas.MessageError, match="strip_factor"):
            awas.Bid.from_dict({"auction": "a", "bidder": "b", "strip_factor": bad})
