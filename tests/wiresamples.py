"""Wire messages shared by the wire tests: one sample of every message type, deep equality
that compares arrays by dtype and shape, and a frame round trip."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeci_p2p.wire import framing, messages
from edgeci_p2p.wire.messages import (
    Auth,
    Award,
    AwardReply,
    Bid,
    CallForBids,
    Cancel,
    Chunk,
    Error,
    HaloRows,
    HeadJob,
    Hello,
    InferRequest,
    InferResult,
    Message,
    Peers,
    PeersResult,
    Ping,
    PlanJob,
    PlanJobResult,
    PlanRequest,
    PlanResult,
    Pong,
    Rect,
    Release,
    RowsFrom,
    StripJob,
    StripStage,
    TileRequest,
    TileResult,
    TopK,
    WorkItem,
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
        Ping(8, 124.25, bytes(1000)),
        Pong(7, 123.25, 99.5),
        CallForBids(
            "auc-1",
            "node-a",
            "ab12",
            [
                WorkItem("i0", {"conv": 10**12, "pool": 3}, 1 << 20, 1 << 19, 1 << 26, {"conv": 4}),
                WorkItem("i1", {}, 0, 0, 0, {}),
            ],
            window=0.05,
            model="vgg16",
        ),
        CallForBids("auc-2", "node-a", "ab12", [], 1),
        Bid("auc-1", "node-b", 0.75, {"i0": 0.125, "i1": 0.5}, 1 << 30, 1.25e7, 0.002, 0.5, ""),
        Bid("auc-1", "node-c", 3.0, {}, 0, 0.0, 0.0, 0.5, "capacity"),
        Award(
            "auc-1",
            "node-b",
            [WorkItem("i0", {"conv": 10**12}, 1 << 20, 1 << 19, 1 << 26, {"conv": 4})],
            seq=2,
            lease=2.0,
            quoted_backlog=0.75,
        ),
        AwardReply("auc-1", "node-b", 2, True, ""),
        AwardReply("auc-1", "node-c", 1, False, "stale"),
        Release("auc-1", "node-c"),
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
        TileRequest(
            "req-1",
            5,
            "mobilenet_v3_large",
            "ab12",
            10,
            11,
            Rect((0, 2), (0, 5)),
            Rect((0, 2), (0, 5)),
            x[:, :, :2],
            scale=rng.random((1, 72, 1, 1)).astype(np.float32),
        ),
        TileResult("req-1", 3, rng.standard_normal((1, 64, 2, 5)).astype(np.float32), 0.02),
        HeadJob(
            "req-1",
            999_999,
            "vgg16",
            "f" * 16,
            rng.standard_normal((1, 512, 7, 7)).astype(np.float32),
            input_hw=(224, 224),
            deadline_s=0.5,
        ),
        StripJob(
            "req-1",
            9,
            72,
            "vgg16",
            "ab12",
            [
                StripStage(0, 4, (0, 3), (0, 6), [], [RowsFrom("node-b", (2, 3))]),
                StripStage(4, 9, (0, 1), (0, 4), [RowsFrom("node-b", (3, 4))], []),
            ],
            x,
            input_hw=(7, 5),
            deadline_s=2.0,
        ),
        HaloRows("req-1", 9, 4, (2, 3), rng.standard_normal((1, 64, 1, 5)).astype(np.float32)),
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
        PlanJob("job-1", '{"kind": "awas", "bids": []}'),
        PlanJobResult("job-1", answer='{"items": {}, "plan": null}'),
        PlanJobResult("job-2", error="this peer plans in no child"),
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
