"""A client written from docs/protocol.md alone against a live peer.

``tests/conformance_client.py`` speaks the protocol with ``cbor2``, ``numpy`` and
the standard library only. Here it performs the handshake with and without a
cluster key, image and tensor requests (plain, float16, chunked and
zero-suppressed), ``peers``, ``plan``, a tile, strip jobs, and provokes every
error code of section 7, against ``PeerDaemon``s started in this process on
127.0.0.1 (their event loop in a thread: the client blocks on sockets, as a
simple third-party client would). Every message the peer sends is checked
against the document's table for its type, and the plain-data bodies (peer
entries, ``timing``, ``plan_result.body``) against theirs: a field the daemon sends
and the document does not list fails here.

The daemon is used through its public API only (``PeerConfig``, ``PeerDaemon``);
nothing of ``edgeci_p2p``'s wire code is used to talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import protocol_doc
from tests.conformance_client import (
    Conn,
    PeerError,
    encode,
    frame,
    new_id,
    read_key_file,
    send_chunked,
    tensor,
    untensor,
)
from tests.daemons import cluster

pytestmark = pytest.mark.slow

KEY = b"conformance test key 0123456789"
MODEL = "resnet34"
GHOST = "ghost-node"
"""A node id that no peer has: rows sent to it go nowhere, rows from it never come."""


# --- live peers ------------------------------------------------------------------------


class Loop:
    """An asyncio loop in a thread, for the daemons."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def peers(loop: Loop, n: int = 1, **config: Any) -> Iterator[list[Any]]:
    """``tests/daemons.cluster(n, ...)`` (ResNet-34 on 127.0.0.1, connected, always
    stopped), held open from this thread. ``--plaintext``: the frames below are the
    same inside TLS (section 6); tests/test_tls.py covers the channel itself."""
    cm = cluster(n, models=[MODEL], **{"plaintext": True, **config})
    daemons = loop.run(cm.__aenter__())
    try:
        yield daemons
    finally:
        loop.run(cm.__aexit__(None, None, None))


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def open_peer(loop: Loop) -> Iterator[Any]:
    """No cluster key; one request at a time (so that a second one is BUSY)."""
    with peers(loop, max_requests=1) as (daemon,):
        yield daemon


@pytest.fixture(scope="module")
def keyed_peer(loop: Loop) -> Iterator[Any]:
    with peers(loop, cluster_key=KEY) as (daemon,):
        yield daemon


@pytest.fixture
def connect() -> Iterator[Callable[[Any], Conn]]:
    conns: list[Conn] = []

    def go(daemon: Any) -> Conn:
        conns.append(Conn.open(daemon.port))
        return conns[-1]

    yield go
    for c in conns:
        c.close()


@pytest.fixture
def client(open_peer: Any, connect: Callable[[Any], Conn]) -> Conn:
    c = connect(open_peer)
    conforming(c.handshake())
    return c


# --- what the document says ------------------------------------------------------------

TIMING = protocol_doc.table("The keys of `timing`")
PEER_ENTRY = protocol_doc.table("A peer entry is a map")
PLAN_RESULT_BODY = protocol_doc.table("The keys of `plan_result.body`")


def conforming(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` checked against its type's table (and its bodies against theirs)."""
    kind = msg["type"]
    errors = protocol_doc.check_map(msg, protocol_doc.message_table(kind), kind, skip=("type",))
    if kind == "infer_result":
        errors += protocol_doc.check_map(msg["timing"], TIMING, "infer_result.timing")
    elif kind == "peers_result":
        assert set(msg["body"]) == {"peers"}, msg["body"].keys()
        for i, entry in enumerate(msg["body"]["peers"]):
            errors += protocol_doc.check_map(entry, PEER_ENTRY, f"peers_result.peers[{i}]")
    elif kind == "plan_result":
        errors += protocol_doc.check_map(msg["body"], PLAN_RESULT_BODY, "plan_result.body")
    assert errors == [], errors
    return msg


def fatal(c: Conn, code: int) -> dict[str, Any]:
    """Section 7: one ``error`` frame with ``code``, then the peer closes."""
    msg = c.recv_any()
    assert msg["type"] == "error" and msg["code"] == code, msg
    conforming(msg)
    c.expect_closed()
    return msg


def request_error(c: Conn, msg: dict[str, Any], code: int) -> PeerError:
    """A request answered with a request-scoped ``error``; the connection stays open."""
    with pytest.raises(PeerError) as info:
        c.call(msg)
    err = info.value.msg
    conforming(err)
    assert err["code"] == code and err["request_id"] == msg["request_id"], err
    alive(c)
    return info.value


def alive(c: Conn) -> None:
    seq = int.from_bytes(os.urandom(2), "big")
    c.send({"type": "ping", "seq": seq, "time": 1.5})
    pong = c.recv()
    assert pong == {"type": "pong", "seq": seq, "echo": 1.5, "time": pong["time"]}
    conforming(pong)


def png(width: int = 160, height: int = 120) -> bytes:
    from PIL import Image  # the image only; nothing of the wire

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def infer(c: Conn, **fields: Any) -> dict[str, Any]:
    msg = {"type": "infer_request", "request_id": new_id(), "model": MODEL, **fields}
    res = conforming(c.call(msg))
    assert res["type"] == "infer_result" and res["request_id"] == msg["request_id"]
    assert res["model"] == MODEL
    logits = tensor_of(res["logits"])
    assert logits.dtype == np.float32 and logits.shape[0] == 1
    flat = logits.reshape(-1)
    top = res["top_k"]
    assert len(top) == fields.get("top_k", 5)
    assert top[0]["index"] == int(np.argmax(flat))
    assert [t["logit"] for t in top] == [float(flat[t["index"]]) for t in top]
    assert all(a["prob"] >= b["prob"] for a, b in itertools.pairwise(top))
    res["logits_array"] = logits
    return res


def tensor_of(value: Any) -> np.ndarray:
    """A tensor field: plain (5.1) or already reassembled from chunks (5.3)."""
    return value if isinstance(value, np.ndarray) else untensor(value)


# --- section 6: the handshake ------------------------------------------------------------


def test_handshake_without_a_key_and_a_ping(open_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(open_peer)
    hello = conforming(c.handshake())
    assert hello["version"] == 2 and hello["node_id"] and hello["role"] == "peer"
    assert 16 <= len(hello["nonce"]) <= 64 and hello["port"] == open_peer.port
    assert MODEL in hello["models"] and hello.get("auth", False) is False
    alive(c)


def test_handshake_with_a_key(keyed_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(keyed_peer)
    hello = conforming(c.handshake(KEY))
    assert hello["auth"] is True
    alive(c)


def test_a_key_file_with_a_trailing_newline_holds_the_same_key(
    tmp_path: Path, keyed_peer: Any, connect: Callable[[Any], Conn]
) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"  " + KEY + b"\r\n")
    assert read_key_file(str(path)) == KEY
    conforming(connect(keyed_peer).handshake(read_key_file(str(path))))
    # The reference client and peer read key files the same way.
    from edgeci_p2p.aio import client as reference_client

    assert reference_client.read_key(path) == KEY


def test_the_peer_reads_its_key_file_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeci_p2p import peer_cli
    from edgeci_p2p.aio import daemon

    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    seen = []
    monkeypatch.setattr(daemon, "run_forever", lambda config, **_: seen.append(config))
    assert peer_cli.main(["--no-mdns", "--cluster-key-file", str(path)]) == 0
    assert seen[0].cluster_key == KEY


# --- section 4.4: requests ---------------------------------------------------------------


def test_an_image_request(client: Conn) -> None:
    res = infer(client, image=png(), top_k=3)
    assert res["strategy"] == "edgeci"
    assert res["logits_array"].shape == (1, 1000)
    assert isinstance(res["timing"]["compute"], dict) and res["timing"]["total"] > 0
    assert res["plan"]["text"] and res["plan"]["nodes"]


def test_image_sizes(client: Conn) -> None:
    # 224 (resize and centre-crop) and native (the image's own size) both answer.
    a = infer(client, image=png(200, 150), size="224", strategy="local")
    b = infer(client, image=png(200, 150), size="native", strategy="local")
    assert not np.array_equal(a["logits_array"], b["logits_array"])


def test_tensor_requests_plain_float16_and_zero_suppressed(client: Conn) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 64, 80)).astype(np.float16)
    wide = infer(client, tensor=tensor(x.astype(np.float32)), strategy="local")
    half = infer(client, tensor=tensor(x), strategy="local")
    # float16 is widened to float32 exactly: the same input, the same answer.
    np.testing.assert_allclose(half["logits_array"], wide["logits_array"], rtol=0, atol=1e-5)
    # size is for images: a tensor runs at its own H x W whatever size says.
    native = infer(client, tensor=tensor(x.astype(np.float32)), strategy="local", size="native")
    np.testing.assert_allclose(native["logits_array"], wide["logits_array"], rtol=0, atol=1e-5)
    # 5.3 + 5.4: the tensor chunked and zero-suppressed (a ReLU-like input, half zeros).
    relu = np.maximum(rng.standard_normal((1, 3, 64, 80)), 0).astype(np.float32)
    rid = new_id()
    msg = {"type": "infer_request", "request_id": rid, "model": MODEL, "strategy": "local"}
    send_chunked(client, msg, "tensor", relu, stream=7)
    chunked = conforming(client.recv())
    assert chunked["request_id"] == rid
    plain = infer(client, tensor=tensor(relu), strategy="local")
    np.testing.assert_allclose(
        tensor_of(chunked["logits"]), plain["logits_array"], rtol=0, atol=1e-5
    )


def test_overlapping_requests_are_answered_by_request_id(
    keyed_peer: Any, connect: Callable[[Any], Conn]
) -> None:
    c = connect(keyed_peer)
    c.handshake(KEY)
    ids = [new_id() for _ in range(3)]
    x = tensor(np.zeros((1, 3, 32, 32), np.float32))
    c.send_raw(
        b"".join(
            encode({"type": "infer_request", "request_id": r, "model": MODEL, "tensor": x})
            for r in ids
        )
    )
    got = {conforming(c.recv())["request_id"] for _ in ids}
    assert got == set(ids)


def test_peers(client: Conn, open_peer: Any) -> None:
    res = conforming(client.call({"type": "peers", "request_id": new_id()}))
    me = res["body"]["peers"][0]
    assert me["self"] is True and me["id"] == client.peer_hello["node_id"]
    assert me["address"] == f"127.0.0.1:{open_peer.port}" and me["alive"] is True
    assert me["models"] == client.peer_hello["models"]


def test_peers_of_a_two_peer_cluster(loop: Loop) -> None:
    # The entries of other peers carry the link keys the own entry lacks.
    with peers(loop, 2) as (a, b), contextlib.closing(Conn.open(a.port)) as c:
        c.handshake()
        deadline = time.monotonic() + 20
        while True:
            res = conforming(c.call({"type": "peers", "request_id": new_id()}))
            entries = res["body"]["peers"]
            if len(entries) == 2 and entries[1]["alive"] and entries[1]["rtt_ms"] is not None:
                break
            assert time.monotonic() < deadline, entries
            time.sleep(0.2)
        other = entries[1]
        assert other["id"] == b.node_id and "self" not in other
        assert other["address"] == f"127.0.0.1:{b.port}" and other["models"] == entries[0]["models"]
        assert {"bandwidth_mb_s", "probed_mb_s", "tile_overhead_ms"} <= set(other)


def test_plan(client: Conn) -> None:
    for body in ({"model": MODEL}, {"model": MODEL, "strategy": "local", "size": [160, 128]}):
        res = conforming(client.call({"type": "plan", "request_id": new_id(), "body": body}))
        assert res["body"]["nodes"] and res["body"]["text"]
        assert res["body"]["nodes"][0] == client.peer_hello["node_id"]


def test_a_plan_size_that_is_not_h_w_is_error_200(client: Conn) -> None:
    for size in ("224", "native", [224]):
        body = {"model": MODEL, "size": size}
        request_error(client, {"type": "plan", "request_id": new_id(), "body": body}, 200)


def test_a_plan_body_that_is_not_plan_options_is_error_200(client: Conn) -> None:
    # (A size of 224, an int, gets no answer at all now: a TypeError in the daemon.)
    for body in (
        {"size": [224, 224]},
        {"model": MODEL, "sizes": [1, 1]},
        {"model": MODEL, "size": 224},
    ):
        request_error(client, {"type": "plan", "request_id": new_id(), "body": body}, 200)


def test_a_plan_for_a_model_not_served_is_error_201(client: Conn) -> None:
    body = {"model": "vgg16"}
    request_error(client, {"type": "plan", "request_id": new_id(), "body": body}, 201)


def test_verify_reports_the_difference_from_the_unsplit_model(client: Conn) -> None:
    res = infer(client, image=png(), verify=True)
    assert 0 <= res["max_abs_diff"] <= 1e-4
    assert "max_abs_diff" not in infer(client, image=png())


def test_a_cancelled_request_is_answered_with_204(client: Conn) -> None:
    rid = new_id()
    x = tensor(np.zeros((1, 3, 448, 448), np.float32))
    client.send_raw(
        encode({"type": "infer_request", "request_id": rid, "model": MODEL, "tensor": x})
        + encode({"type": "cancel", "request_id": rid})
    )
    answer = conforming(client.recv_any())
    assert answer["type"] == "error" and answer["code"] == 204 and answer["request_id"] == rid
    alive(client)  # exactly one answer: nothing else for rid comes before the pong


def test_a_tile(client: Conn) -> None:
    fp = client.peer_hello["models"][MODEL]
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    res = conforming(client.call(tile_request(fp, x)))
    out = tensor_of(res["output"])
    assert res["type"] == "tile_result" and out.shape == (1, 64, 16, 16)
    # 64 KiB after a ReLU, about half zeros: the reference sends it zero-suppressed in
    # chunks (5.4), and this client's reassembly (5.3) made the array.
    assert isinstance(res["output"], np.ndarray) and out.dtype == np.float32
    assert 0.2 < np.mean(out == 0) < 0.9


def tile_request(fingerprint: str, x: np.ndarray) -> dict[str, Any]:
    """Unit 0 of ResNet-34 (the 7x7/2 stem) over a whole 32x32 input."""
    return {
        "type": "tile_request",
        "request_id": new_id(),
        "tile_id": 1,
        "model": MODEL,
        "fingerprint": fingerprint,
        "start": 0,
        "stop": 1,
        "out": {"rows": [0, 16], "cols": [0, 16]},
        "slab": {"rows": [0, 32], "cols": [0, 32]},
        "input": tensor(x),
        "input_hw": [32, 32],
    }


# --- section 7: every error ---------------------------------------------------------------


def test_100_malformed_frame(client: Conn) -> None:
    client.send_raw(frame(b"\x01\x02"))  # bytes after the first item
    fatal(client, 100)


def test_100_malformed_frame_indefinite_length(client: Conn) -> None:
    client.send_raw(frame(b"\xbf\x64type\x64ping\xff"))
    fatal(client, 100)


def test_101_frame_too_large(client: Conn) -> None:
    client.send_raw(struct.pack(">I", 64 * 1024 * 1024 + 1))
    fatal(client, 101)


def test_102_an_unknown_field(client: Conn) -> None:
    client.send({"type": "peers", "request_id": new_id(), "colour": "red"})
    fatal(client, 102)


def test_102_image_and_tensor(client: Conn) -> None:
    x = tensor(np.zeros((1, 3, 32, 32), np.float32))
    client.send(
        {
            "type": "infer_request",
            "request_id": new_id(),
            "model": MODEL,
            "image": png(),
            "tensor": x,
        }
    )
    fatal(client, 102)


def test_102_a_peers_body(client: Conn) -> None:
    client.send({"type": "peers", "request_id": new_id(), "body": {"all": True}})
    fatal(client, 102)


def test_102_an_unknown_size(client: Conn) -> None:
    client.send(
        {
            "type": "infer_request",
            "request_id": new_id(),
            "model": MODEL,
            "image": png(),
            "size": "big",
        }
    )
    fatal(client, 102)


def test_102_a_uint8_tensor_outside_pixels(client: Conn) -> None:
    x = np.zeros((1, 3, 32, 32), np.uint8)
    client.send(
        {"type": "infer_request", "request_id": new_id(), "model": MODEL, "tensor": tensor(x)}
    )
    fatal(client, 102)


def test_103_a_message_before_hello(open_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(open_peer)
    c.send(c.hello())
    c.recv()  # its hello
    c2 = connect(open_peer)
    c2.send({"type": "ping", "seq": 1, "time": 0.0})
    # The peer's hello may come first: it sends it as soon as the connection is up.
    first = c2.recv_any()
    if first["type"] == "hello":
        first = c2.recv_any()
    assert first["type"] == "error" and first["code"] == 103, first
    c2.expect_closed()


def test_103_a_second_hello(client: Conn) -> None:
    client.send(client.hello())
    fatal(client, 103)


def test_104_unsupported_version(open_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(open_peer)
    c.send(c.hello(version=1))
    assert c.recv()["type"] == "hello"
    fatal(c, 104)


def test_107_tls_required(loop: Loop) -> None:
    """A plaintext hello to a peer that speaks TLS (the default): one plaintext error."""
    with peers(loop, plaintext=False) as (daemon,), contextlib.closing(Conn.open(daemon.port)) as c:
        c.send(c.hello())
        fatal(c, 107)


def test_108_peer_not_allowed(loop: Loop) -> None:
    """A peer whose node id is not on the allow-list is refused after the handshake."""
    with (
        peers(loop, allow_peers=frozenset({"someone-else"})) as (daemon,),
        contextlib.closing(Conn.open(daemon.port)) as c,
    ):
        hello = {**c.hello(), "role": "peer", "port": 1}
        c.send(hello)
        assert c.recv_any()["type"] == "hello"
        fatal(c, 108)


def test_105_auth_required(keyed_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(keyed_peer)
    c.send(c.hello(auth=False))
    assert c.recv()["type"] == "hello"
    fatal(c, 105)


def test_106_a_wrong_proof(keyed_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(keyed_peer)
    c.send(c.hello(auth=True))
    c.peer_hello = c.recv()
    c.send({"type": "auth", "proof": c.proof_for(b"not the cluster key at all")})
    msg = c.recv_any()
    if msg["type"] == "auth":  # its own proof may come first
        msg = c.recv_any()
    assert msg["type"] == "error" and msg["code"] == 106, msg
    c.expect_closed()


def test_106_auth_to_a_peer_without_a_key(open_peer: Any, connect: Callable[[Any], Conn]) -> None:
    c = connect(open_peer)
    c.send(c.hello(auth=True))
    assert c.recv()["type"] == "hello"
    fatal(c, 106)


def test_106_a_reflected_nonce(open_peer: Any, connect: Callable[[Any], Conn]) -> None:
    # Section 6 step 2: our hello carries the peer's own nonce back to it. The peer
    # sends its hello as soon as the connection is up, so it can be read first.
    c = connect(open_peer)
    peer_hello = c.recv()
    c.nonce = peer_hello["nonce"]
    c.send(c.hello())
    fatal(c, 106)


def test_150_a_peer_that_stops(loop: Loop) -> None:
    with peers(loop) as (daemon,), contextlib.closing(Conn.open(daemon.port)) as c:
        c.handshake()
        alive(c)
        loop.run(daemon.stop())
        fatal(c, 150)


def test_200_bad_requests(client: Conn) -> None:
    req = {"type": "infer_request", "model": MODEL}
    wrong = tensor(np.zeros((1, 4, 32, 32), np.float32))
    request_error(client, {**req, "request_id": new_id(), "tensor": wrong}, 200)
    request_error(client, {**req, "request_id": new_id(), "image": b"not an image"}, 200)
    request_error(client, {**req, "request_id": new_id(), "image": png(), "strategy": "x"}, 200)


def test_200_a_request_id_already_being_answered(
    keyed_peer: Any, connect: Callable[[Any], Conn]
) -> None:
    c = connect(keyed_peer)
    c.handshake(KEY)
    rid = new_id()
    x = tensor(np.zeros((1, 3, 224, 224), np.float32))
    msg = encode({"type": "infer_request", "request_id": rid, "model": MODEL, "tensor": x})
    c.send_raw(msg + msg)
    answers = sorted((conforming(c.recv_any()) for _ in range(2)), key=lambda m: m["type"])
    assert [a["type"] for a in answers] == ["error", "infer_result"], answers
    assert answers[0]["code"] == 200 and answers[0]["request_id"] == rid


def test_201_unknown_model(client: Conn) -> None:
    for model in ("vgg16", "no-such-model"):
        msg = {"type": "infer_request", "request_id": new_id(), "model": model, "image": png()}
        request_error(client, msg, 201)


def test_202_fingerprint_mismatch(client: Conn) -> None:
    x = np.zeros((1, 3, 32, 32), np.float32)
    request_error(client, tile_request("0" * 64, x), 202)


def test_203_busy(client: Conn) -> None:
    # The open peer answers one request at a time; the second arrives with the first.
    x = tensor(np.zeros((1, 3, 224, 224), np.float32))
    first, second = new_id(), new_id()
    client.send_raw(
        encode({"type": "infer_request", "request_id": first, "model": MODEL, "tensor": x})
        + encode({"type": "infer_request", "request_id": second, "model": MODEL, "tensor": x})
    )
    answers = {m["request_id"]: conforming(m) for m in (client.recv_any(), client.recv_any())}
    assert answers[first]["type"] == "infer_result"
    assert answers[second]["type"] == "error" and answers[second]["code"] == 203


def strip_job(fingerprint: str, stages: list[dict[str, Any]], deadline_s: float) -> dict[str, Any]:
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return {
        "type": "strip_job",
        "request_id": new_id(),
        "job_id": 1,
        "tile_id": 1,
        "model": MODEL,
        "fingerprint": fingerprint,
        "stages": stages,
        "input": tensor(x),
        "input_hw": [32, 32],
        "deadline_s": deadline_s,
    }


def test_205_a_strip_job_whose_rows_never_come(client: Conn) -> None:
    # ResNet-34 at 32x32: unit 0 (stem) makes 16 rows, unit 1 (pool) 8. This peer
    # computes stem rows 1..16; row 0 should come from a neighbour that never sends.
    stages = [
        {"start": 0, "stop": 1, "rows": [1, 16], "need": [0, 32], "recv": [], "send": []},
        {
            "start": 1,
            "stop": 2,
            "rows": [0, 8],
            "need": [0, 16],
            "recv": [{"node": GHOST, "rows": [0, 1]}],
            "send": [],
        },
    ]
    t0 = time.monotonic()
    request_error(client, strip_job(client.peer_hello["models"][MODEL], stages, 0.5), 205)
    assert time.monotonic() - t0 < 10


def test_206_a_strip_job_that_fails_in_the_peer(client: Conn) -> None:
    # Its rows must go to a neighbour the peer has no connection to.
    stages = [
        {
            "start": 0,
            "stop": 1,
            "rows": [0, 16],
            "need": [0, 32],
            "recv": [],
            "send": [{"node": GHOST, "rows": [15, 16]}],
        }
    ]
    request_error(client, strip_job(client.peer_hello["models"][MODEL], stages, 5.0), 206)


def test_every_error_code_is_provoked_here() -> None:
    doc = protocol_doc.DOC_PATH.read_text()
    codes = {int(c) for c in re.findall(r"^\| (\d{3}) \| `[A-Z_]+` \|", doc, re.M)}
    here = Path(__file__).read_text()
    tested = {int(c) for c in re.findall(r"def test_(\d{3})_", here)}
    tested |= {int(c) for c in re.findall(r"is_answered_with_(\d{3})", here)}
    assert codes <= tested, sorted(codes - tested)


def test_the_client_uses_only_cbor2_numpy_and_the_standard_library() -> None:
    import ast
    import sys

    tree = ast.parse((Path(__file__).parent / "conformance_client.py").read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported - sys.stdlib_module_names - {"__future__"} == {"cbor2", "numpy"}
