"""Every message type survives encode -> frame -> decode; bad fields are refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from edgeci_p2p.wire import cbor, framing, messages
from edgeci_p2p.wire.errors import LocalProtocolError, MessageError
from edgeci_p2p.wire.messages import (
    Auth,
    Award,
    Bid,
    BidItem,
    CallForBids,
    Cancel,
    Chunk,
    Error,
    Hello,
    InferRequest,
    InferResult,
    LinearCost,
    Message,
    Peers,
    PeersResult,
    Ping,
    PlanRequest,
    PlanResult,
    Pong,
    Rect,
    TileRequest,
    TileResult,
    TopK,
)


def samples() -> list[Message]:
    """At least one instance of every message type, with optional fields both ways."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 8, 6, 5)).astype(np.float32)
    return [
        Hello(1, "node-a", "kitchen pi", 7070, {"vgg16": "ab12", "resnet34": "cd34"}, b"n" * 32),
        Hello(1, "cli-1", "", 0, {}, bytes(range(16)), role="client", auth=True),
        Auth(bytes(range(32))),
        Ping(7, 123.25),
        Pong(7, 123.25, 99.5),
        CallForBids(
            "auc-1",
            "vgg16",
            "ab12",
            [
                BidItem("i0", {"conv": 10**12, "pool": 3}, 1 << 20, 1 << 19, 1 << 26),
                BidItem("i1", {}, 0, 0, 0),
            ],
            deadline_s=0.05,
            lease_s=2,
        ),
        Bid(
            "auc-1",
            "node-b",
            {"i0": 0.125, "i1": 0.5},
            2.0,
            {"conv": LinearCost(1e-11, 2e-4), "pool": LinearCost(3e-12, 0.0)},
            0.75,
            1 << 30,
        ),
        Bid("auc-1", "node-c", {}, 0.0, {}, 0.0, 0, declined=True, reason="busy"),
        Award("auc-1", ["i0"], 2.0),
        Award("auc-1", ["i1"], 0.0, release=True),
        TileRequest(
            "req-1", 3, "vgg16", "ab12", 0, 4, Rect((2, 4), (0, 5)), Rect((0, 6), (0, 5)), x
        ),
        TileRequest(
            "req-1",
            4,
            "vgg16",
            "ab12",
            2,
            9,
            Rect((0, 1), (0, 1)),
            Rect((1, 7), (0, 5)),
            x.astype(np.float16),
            deadline_s=1.5,
        ),
        TileResult("req-1", 3, rng.standard_normal((1, 64, 2, 5)).astype(np.float32), 0.02),
        InferRequest("req-2", "resnet34", image=b"\xff\xd8\xff\xe0fakejpeg"),
        InferRequest(
            "req-3",
            "vgg16",
            tensor=rng.standard_normal((1, 3, 9, 7)).astype(np.float32),
            strategy="modnn",
            size="native",
            top_k=3,
            verify=True,
        ),
        InferResult(
            "req-2",
            "resnet34",
            "edgeci",
            [TopK(207, "golden retriever", 0.8, 11.5), TopK(208, "Labrador", 0.1, 9.25)],
            rng.standard_normal((1, 1000)).astype(np.float32),
            {"bid": 0.01, "plan": 0.002, "total": 0.3, "compute": {"node-a": 0.1, "node-b": 0.12}},
            {"blocks": [{"start": 0, "stop": 4, "strips": [[0, 56], [56, 112]]}], "ok": True},
        ),
        Cancel("req-1"),
        Cancel("req-1", tile_id=3),
        Error(203, "busy", request_id="req-1"),
        Error(100, "malformed"),
        Peers("req-4"),
        PeersResult("req-4", {"peers": [{"node_id": "a", "addr": "127.0.0.1:7070"}]}),
        PlanRequest("req-5", {"model": "vgg16", "strategy": "edgeci", "size": "224"}),
        PlanResult("req-5", {"predicted_s": 0.25, "blocks": [], "raw": b"\x00\x01"}),
        Chunk(0, 0, b"\x00" * 10),
    ]


def equal(a: object, b: object) -> bool:
    """Deep equality that compares arrays by dtype, shape and values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b)
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def roundtrip(msg: Message) -> Message:
    frame = framing.encode_frame(msg.to_wire())
    reader = framing.FrameReader()
    reader.feed(frame)
    payload = reader.next_frame()
    assert payload is not None and reader.buffered == 0
    return messages.message_from_wire(framing.decode_payload(payload))


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
    ("negative lease", {"type": "award", "auction_id": "a", "items": [], "lease_s": -1.0}),
    ("items not a list", {"type": "award", "auction_id": "a", "items": "i0", "lease_s": 1.0}),
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


def test_locally_built_messages_are_validated_too() -> None:
    with pytest.raises(MessageError):
        Ping(1, float("nan"))
    with pytest.raises(MessageError):
        Bid("a", "b", {"i": -1.0}, 1.0, {}, 0.0, 0)


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
