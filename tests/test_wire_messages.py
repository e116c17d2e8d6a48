"""Every message type survives encode -> frame -> decode; bad fields are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeci_p2p.wire import cbor, framing, messages
from edgeci_p2p.wire.errors import LocalProtocolError, MessageError
from edgeci_p2p.wire.messages import (
    Bid,
    CallForBids,
    Cancel,
    HaloRows,
    HeadJob,
    Hello,
    InferRequest,
    Message,
    Ping,
    PlanResult,
    Rect,
    RowsFrom,
    StripJob,
    StripStage,
    TileRequest,
    TileResult,
    WorkItem,
)
from tests.wiresamples import equal, roundtrip, samples


def test_samples_cover_every_message_type() -> None:
    assert {type(m).TYPE for m in samples()} == set(messages.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", samples(), ids=lambda m: m.TYPE)
def test_every_message_round_trips(msg: Message) -> None:
    back = roundtrip(msg)
    assert equal(back, msg), (back, msg)
    # And through the plain-dict form alone.
    assert equal(type(msg).from_dict(msg.to_dict()), msg)


def test_absent_optional_fields_are_left_off_the_wire() -> None:
    wire = Cancel("r").to_wire()
    assert wire == {"type": "cancel", "request_id": "r"}
    assert messages.message_from_wire({"type": "cancel", "request_id": "r", "tile_id": None}) == (
        Cancel("r")
    )


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    ping = messages.message_from_wire({"type": "ping", "seq": 1, "time": 5})
    assert isinstance(ping, Ping) and ping.time == 5.0 and type(ping.time) is float


ITEM: dict[str, Any] = {"id": "i0", "flops": {"conv": 9}, "bytes_in": 1, "bytes_out": 2}
ITEM |= {"memory": 3, "calls": {}}
CALL: dict[str, Any] = {"type": "call_for_bids", "auction": "a", "auctioneer": "me"}
CALL |= {"fingerprint": "f", "items": [ITEM], "window": 0.1}
BID: dict[str, Any] = {"type": "bid", "auction": "a", "bidder": "b", "backlog": 0.0}
BID |= {"duration": {"i0": 0.5}, "free_memory": 0, "bandwidth": 1e6, "rtt": 0.001}
BID |= {"valid_for": 0.5, "declined": ""}
AWARD: dict[str, Any] = {"type": "award", "auction": "a", "bidder": "b", "items": [ITEM]}
AWARD |= {"seq": 1, "lease": 2.0, "quoted_backlog": 0.0}
REPLY: dict[str, Any] = {"type": "award_reply", "auction": "a", "bidder": "b", "seq": 1}
REPLY |= {"accepted": True, "reason": ""}


def test_the_bad_auction_frames_differ_from_good_ones_only_in_the_fault() -> None:
    # Otherwise a case below could pass for a reason other than its name.
    for good in (CALL, BID, AWARD, REPLY):
        assert messages.message_from_wire(good).to_wire() == good


BAD_WIRE: list[tuple[str, dict[str, Any]]] = [
    ("not a known type", {"type": "hijack"}),
    ("missing type", {"seq": 1, "time": 0.0}),
    ("missing field", {"type": "ping", "seq": 1}),
    ("unknown field", {"type": "ping", "seq": 1, "time": 0.0, "extra": 1}),
    ("bool for int", {"type": "ping", "seq": True, "time": 0.0}),
    ("float for int", {"type": "ping", "seq": 1.0, "time": 0.0}),
    ("string for number", {"type": "ping", "seq": 1, "time": "0"}),
    ("nan", {"type": "ping", "seq": 1, "time": float("nan")}),
    ("infinity", {"type": "pong", "seq": 1, "echo": float("inf"), "time": 0.0}),
    ("short nonce", {**Hello(1, "a", "", 0, {}, b"x" * 16).to_wire(), "nonce": b"x" * 8}),
    ("bad role", {**Hello(1, "a", "", 0, {}, b"x" * 16).to_wire(), "role": "admin"}),
    ("port range", {**Hello(1, "a", "", 0, {}, b"x" * 16).to_wire(), "port": 70000}),
    ("short proof", {"type": "auth", "proof": b"\x00" * 31}),
    ("negative lease", {**AWARD, "lease": -1.0}),
    ("negative seq", {**AWARD, "seq": -1}),
    ("items not a list", {**AWARD, "items": "i0"}),
    ("item ids not records", {**AWARD, "items": ["i0"]}),
    ("duplicate awarded items", {**AWARD, "items": [ITEM, ITEM]}),
    ("duplicate offered items", {**CALL, "items": [ITEM, {**ITEM, "bytes_in": 5}]}),
    ("item without calls", {**CALL, "items": [{k: v for k, v in ITEM.items() if k != "calls"}]}),
    ("old item field", {**CALL, "items": [{**ITEM, "mem_bytes": 1}]}),
    ("negative flops", {**CALL, "items": [{**ITEM, "flops": {"conv": -1}}]}),
    ("negative calls", {**CALL, "items": [{**ITEM, "calls": {"conv": -1}}]}),
    ("negative window", {**CALL, "window": -0.1}),
    ("nan window", {**CALL, "window": float("nan")}),
    ("model not text", {**CALL, "model": 16}),
    ("negative duration", {**BID, "duration": {"i0": -0.5}}),
    ("infinite duration", {**BID, "duration": {"i0": float("inf")}}),
    ("negative free memory", {**BID, "free_memory": -1}),
    ("negative rtt", {**BID, "rtt": -0.001}),
    ("negative backlog", {**BID, "backlog": -1.0}),
    ("declined as bool", {**BID, "declined": True}),
    ("bid without valid_for", {k: v for k, v in BID.items() if k != "valid_for"}),
    ("old bid field", {**BID, "finish_s": {}}),
    ("accepted as int", {**REPLY, "accepted": 1}),
    ("reply without seq", {k: v for k, v in REPLY.items() if k != "seq"}),
    ("release extra field", {"type": "release", "auction": "a", "bidder": "b", "items": []}),
    (
        "non-string map key",
        {"type": "peers", "request_id": "r", "body": {"a": {1: 2}}},
    ),
    (
        "both image and tensor",
        {
            **InferRequest("r", "m", image=b"x").to_wire(),
            "tensor": np.zeros((1, 3, 2, 2), np.float32),
        },
    ),
    ("neither image nor tensor", {"type": "infer_request", "request_id": "r", "model": "m"}),
    (
        "int64 tensor",
        {
            **TileResult("r", 0, np.zeros((1, 1, 1, 1), np.float32), 0.0).to_wire(),
            "output": np.zeros((1, 1, 1, 1), np.int64),
        },
    ),
    (
        "rank-3 tile",
        {
            **TileResult("r", 0, np.zeros((1, 1, 1, 1), np.float32), 0.0).to_wire(),
            "output": np.zeros((1, 1, 1), np.float32),
        },
    ),
    (
        "rank-2 head input",
        {
            **HeadJob("r", 0, "m", "f", np.zeros((1, 1, 1, 1), np.float32)).to_wire(),
            "input": np.zeros((1, 512), np.float32),
        },
    ),
    (
        "pixels as a head input",
        {
            **HeadJob("r", 0, "m", "f", np.zeros((1, 1, 1, 1), np.float32)).to_wire(),
            "input": np.zeros((1, 3, 7, 7), np.uint8),
        },
    ),
    (
        "tensor in plain data",
        {"type": "plan", "request_id": "r", "body": {"x": np.zeros(2, np.float32)}},
    ),
]


@pytest.mark.parametrize(("why", "wire"), BAD_WIRE, ids=[w for w, _ in BAD_WIRE])
def test_invalid_fields_are_refused(why: str, wire: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        messages.message_from_wire(wire)


def test_tile_request_slab_must_match_input() -> None:
    x = np.zeros((1, 2, 6, 5), np.float32)
    with pytest.raises(MessageError, match="slab"):
        TileRequest("r", 0, "m", "f", 0, 1, Rect((0, 1), (0, 1)), Rect((0, 5), (0, 5)), x)
    with pytest.raises(MessageError, match="range"):
        TileRequest("r", 0, "m", "f", 0, 1, Rect((3, 1), (0, 1)), Rect((0, 6), (0, 5)), x)
    with pytest.raises(MessageError, match="empty"):
        TileRequest("r", 0, "m", "f", 2, 2, Rect((0, 1), (0, 1)), Rect((0, 6), (0, 5)), x)


def test_pixels_travel_as_uint8_only_where_a_message_says_so() -> None:
    px = np.arange(2 * 3 * 6 * 5, dtype=np.uint8).reshape(2, 3, 6, 5)
    out, slab = Rect((0, 1), (0, 1)), Rect((0, 6), (0, 5))
    msg = TileRequest("r", 0, "m", "f", 0, 1, out, slab, px, pixels=True)
    back = roundtrip(msg)
    assert isinstance(back, TileRequest) and back.pixels
    assert back.input.dtype == np.uint8 and np.array_equal(back.input, px)
    # A quarter of the float32 frame's bytes, give or take the heads.
    big = np.zeros((1, 3, 64, 64), np.uint8)
    sizes = [
        len(
            framing.encode_frame(
                TileRequest(
                    "r", 0, "m", "f", 0, 1, out, Rect((0, 64), (0, 64)), x, pixels=p
                ).to_wire()
            )
        )
        for x, p in ((big, True), (big.astype(np.float32), None))
    ]
    assert sizes[0] < 0.26 * sizes[1]
    with pytest.raises(MessageError, match="only as pixels"):
        TileRequest("r", 0, "m", "f", 0, 1, out, slab, px)
    with pytest.raises(MessageError, match="not unit 2"):
        TileRequest("r", 0, "m", "f", 2, 3, out, slab, px, pixels=True)
    with pytest.raises(MessageError, match="uint8"):
        TileRequest("r", 0, "m", "f", 0, 1, out, slab, px.astype(np.float32), pixels=True)
    with pytest.raises(MessageError, match="only as pixels"):
        TileResult("r", 0, px, 0.1)
    # On the wire too: a uint8 tensor where floats belong is refused.
    wire = TileResult("r", 0, px.astype(np.float32), 0.1).to_wire()
    wire["output"] = px
    with pytest.raises(MessageError, match="only as pixels"):
        messages.message_from_wire(wire)


def test_locally_built_messages_are_validated_too() -> None:
    with pytest.raises(MessageError):
        Ping(1, float("nan"))
    with pytest.raises(MessageError, match="pad"):
        Ping(1, 0.0, bytes((1 << 20) + 1))
    with pytest.raises(MessageError):
        Bid("a", "b", 0.0, {"i": -1.0}, 0, 0.0, 0.0, 0.5, "")
    with pytest.raises(MessageError, match="duplicate"):
        CallForBids("a", "me", "f", [WorkItem("i", {}, 0, 0, 0, {})] * 2, 0.1)


def test_encoder_refuses_what_has_no_wire_form() -> None:
    with pytest.raises(LocalProtocolError):
        cbor.encode({"x": object()})
    with pytest.raises(LocalProtocolError):
        cbor.encode({1: 2})
    with pytest.raises(LocalProtocolError):
        cbor.encode(2**64)
    with pytest.raises(LocalProtocolError):
        cbor.encode(np.zeros(3, np.int32))


def test_numpy_scalars_are_accepted_locally_and_travel_as_plain_numbers() -> None:
    msg = TileResult("r", np.int64(3), np.zeros((1, 1, 1, 1), np.float32), np.float32(0.5))  # type: ignore[arg-type]
    assert type(msg.tile_id) is int and type(msg.compute_s) is float
    plan = PlanResult("r", {"n": np.int32(2), "t": np.float64(0.25), "xs": [np.float32(1.5)]})
    back = roundtrip(plan)
    assert isinstance(back, PlanResult) and back.body == {"n": 2, "t": 0.25, "xs": [1.5]}
    assert type(back.body["n"]) is int


def test_strip_job_checks_its_stages_and_input() -> None:
    x = np.zeros((1, 2, 6, 5), np.float32)
    first = StripStage(0, 2, (0, 3), (0, 6), [], [])
    with pytest.raises(MessageError, match="first stage needs"):
        StripJob("r", 0, 0, "m", "f", [StripStage(0, 2, (0, 3), (0, 4), [], [])], x)
    with pytest.raises(MessageError, match="not followed"):
        StripJob("r", 0, 0, "m", "f", [first, StripStage(3, 4, (0, 1), (0, 3), [], [])], x)
    with pytest.raises(MessageError, match="comes with the job"):
        StripJob(
            "r", 0, 0, "m", "f", [StripStage(0, 2, (0, 3), (0, 6), [RowsFrom("b", (5, 6))], [])], x
        )
    # a peer that leaves the segment early sends its last rows on
    StripJob(
        "r", 0, 0, "m", "f", [StripStage(0, 2, (0, 3), (0, 6), [], [RowsFrom("b", (2, 3))])], x
    )
    with pytest.raises(MessageError, match="empty row range"):
        StripStage(0, 2, (0, 3), (0, 6), [], [RowsFrom("b", (2, 2))])
    with pytest.raises(MessageError, match="does not hold rows"):
        HaloRows("r", 0, 2, (0, 2), np.zeros((1, 2, 3, 5), np.float32))
    StripJob("r", 0, 0, "m", "f", [first], x)
