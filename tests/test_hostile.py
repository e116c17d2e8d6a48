"""Hostile and broken input against a running daemon: each case gets an error or a closed
connection, and the daemon keeps serving everyone else."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import zlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from edgeci_p2p.aio.client import Client, ClientError
from edgeci_p2p.aio.connection import Connection, ConnectionLost, connect
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.nn.images import sample_image_path
from edgeci_p2p.wire import framing
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import Error, Hello, Rect, TileRequest, TileResult
from edgeci_p2p.wire.session import SessionConfig
from tests.daemons import WAIT_S, client, cluster


@pytest_asyncio.fixture
async def daemon() -> AsyncIterator[PeerDaemon]:
    async with cluster(1, read_timeout=0.5, plaintext=True) as (d,):
        yield d


async def raw_exchange(port: int, data: bytes, timeout: float = WAIT_S) -> list[dict[str, object]]:
    """Send ``data`` on a fresh socket; return the frames received until the daemon closes
    (asserting that it does close, well within ``timeout``: every case here is refused
    at once or at the daemon's 0.5 s read timeout, far inside its 5 s handshake timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    got = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 16), timeout)
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    frames = framing.FrameReader()
    frames.feed(got)
    out = []
    while (payload := frames.next_frame()) is not None:
        item = framing.decode_payload(payload)
        assert isinstance(item, dict)
        out.append(item)
    return out


def error_codes(frames: list[dict[str, object]]) -> list[object]:
    return [f["code"] for f in frames if f.get("type") == "error"]


async def still_serving(d: PeerDaemon) -> None:
    async with client(d) as c:
        assert [p["id"] for p in await c.peers()] == [d.node_id]


def client_hello(version: int = 2) -> bytes:
    hello = {**Hello(2, "mallory", "", 0, {}, os.urandom(16), role="client").to_wire()}
    hello["version"] = version
    return framing.encode_frame(hello)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_random_bytes(daemon: PeerDaemon) -> None:
    # A whole frame of noise. (Unframed noise whose first four bytes announce a length
    # the rest does not reach is a frame never finished: closed at the handshake
    # timeout, with no error frame. It raced this test's read timeout; the
    # half-a-frame case below covers it, and the 4 GiB case an impossible length.)
    body = os.urandom(4092)
    frames = await raw_exchange(daemon.port, struct.pack(">I", len(body)) + body)
    assert error_codes(frames)  # an error frame, then the connection closed
    await still_serving(daemon)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_frame_announcing_4_gib_is_refused_before_allocating(daemon: PeerDaemon) -> None:
    frames = await raw_exchange(daemon.port, b"\xff\xff\xff\xff" + b"\xa0" * 16)
    assert error_codes(frames) == [int(ErrorCode.FRAME_TOO_LARGE)]
    await still_serving(daemon)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_deep_nesting(daemon: PeerDaemon) -> None:
    body = b"\x81" * 100_000 + b"\x01"
    frames = await raw_exchange(daemon.port, struct.pack(">I", len(body)) + body)
    assert error_codes(frames) == [int(ErrorCode.MALFORMED_FRAME)]
    await still_serving(daemon)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_wrong_protocol_version(daemon: PeerDaemon) -> None:
    frames = await raw_exchange(daemon.port, client_hello(version=99))
    assert error_codes(frames) == [int(ErrorCode.UNSUPPORTED_VERSION)]
    await still_serving(daemon)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_half_a_frame_then_silence_is_closed_after_the_read_timeout(
    daemon: PeerDaemon,
) -> None:
    # A handshaken client sends the first half of a frame and goes quiet.
    conn = await connect("127.0.0.1", daemon.port, SessionConfig("mallory", role="client"))
    conn.writer.write(b"\x00\x00\x01\x00" + b"\xa0" * 10)
    await conn.writer.drain()
    await expect_error_then_close(conn, ErrorCode.MALFORMED_FRAME)
    await still_serving(daemon)


async def expect_error_then_close(conn: Connection, code: ErrorCode) -> None:
    """The daemon answers a connection-fatal violation with an error frame, then closes."""
    reply = await asyncio.wait_for(conn.recv(), WAIT_S)
    assert isinstance(reply, Error) and reply.code == int(code), reply
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(conn.recv(), WAIT_S)


def tile_request(shape: tuple[int, ...] = (1, 3, 7, 7), **kw: object) -> TileRequest:
    x = np.zeros(shape, dtype=np.float32)
    fields: dict[str, object] = dict(
        request_id="r1",
        tile_id=1,
        model="resnet34",
        fingerprint="0" * 64,
        start=0,
        stop=1,
        out=Rect((0, 2), (0, 2)),
        slab=Rect((0, shape[2]), (0, shape[3])),
        input=x,
        input_hw=(224, 224),
    )
    fields.update(kw)
    return TileRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_tensor_whose_shape_disagrees_with_its_bytes(daemon: PeerDaemon) -> None:
    conn = await connect("127.0.0.1", daemon.port, SessionConfig("mallory", role="client"))
    frame = conn.session.send(tile_request((1, 1, 1, 2), slab=Rect((0, 1), (0, 2))))
    dims = bytes([0x84, 0x01, 0x01, 0x01, 0x02])
    assert frame.count(dims) == 1
    conn.writer.write(frame.replace(dims, bytes([0x84, 0x01, 0x01, 0x01, 0x03])))
    await conn.writer.drain()
    await expect_error_then_close(conn, ErrorCode.INVALID_MESSAGE)
    await still_serving(daemon)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_tile_with_wrong_weights_and_tile_result_never_given(daemon: PeerDaemon) -> None:
    conn = await connect("127.0.0.1", daemon.port, SessionConfig("mallory", role="client"))
    await conn.send(tile_request())
    reply = await asyncio.wait_for(conn.recv(), WAIT_S)
    assert reply.TYPE == "error" and "weights" in reply.message  # type: ignore[attr-defined]
    # A result for a tile nobody gave out is ignored; the connection stays usable.
    await conn.send(TileResult("nobody", 7, np.zeros((1, 1, 1, 1), np.float32), 0.0))
    await conn.send(tile_request(model="alexnet"))
    reply = await asyncio.wait_for(conn.recv(), WAIT_S)
    assert reply.TYPE == "error" and "not served" in reply.message  # type: ignore[attr-defined]
    await conn.close()
    await still_serving(daemon)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_huge_image_unknown_model_and_bad_image(daemon: PeerDaemon) -> None:
    async with client(daemon) as c:
        with pytest.raises(ClientError, match=r"(?i)pixels|limit|bomb") as info:
            await c.infer(png_header(50_000, 50_000), model="resnet34")
        assert info.value.code == int(ErrorCode.BAD_REQUEST)
        with pytest.raises(ClientError, match="not served") as info:
            await c.infer(sample_image_path().read_bytes(), model="vgg16")
        assert info.value.code == int(ErrorCode.UNKNOWN_MODEL)
        buf = io.BytesIO(sample_image_path().read_bytes()[:2000])  # a truncated JPEG
        with pytest.raises(ClientError, match="decode"):
            await c.infer(buf.getvalue(), model="resnet34")
        # The same connection still answers.
        r = await c.infer(sample_image_path().read_bytes(), model="resnet34")
        assert len(r.top_k) == 5


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_request_id_already_being_answered_is_refused(daemon: PeerDaemon) -> None:
    """Tiles, strip jobs and the input's pixels are found by request id: a second
    request under the same id while the first runs is refused, and the first is
    answered right (the same photo twice here, so a mix-up would not show in the
    logits; the refusal is what keeps two different inputs apart)."""
    from edgeci_p2p.wire.messages import InferRequest, InferResult

    image = sample_image_path().read_bytes()
    async with client(daemon) as c1, client(daemon) as c2:

        async def send(c: Client) -> object:
            req = InferRequest("same-id", "resnet34", image=image, strategy="local")
            try:
                return await c._call(req, InferResult, "same-id")
            except ClientError as e:
                return e

        got = await asyncio.gather(send(c1), send(c2))
    errors = [g for g in got if isinstance(g, ClientError)]
    results = [g for g in got if isinstance(g, InferResult)]
    assert len(errors) == 1 and len(results) == 1
    assert errors[0].code == int(ErrorCode.BAD_REQUEST)
    assert "already being answered" in str(errors[0])
    assert len(results[0].top_k) == 5
    assert not daemon.front.answering  # and the id is free again


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_reading_on_after_the_peer_closed_is_still_a_lost_connection(
    daemon: PeerDaemon,
) -> None:
    """Every read after EOF is ConnectionLost, not the session's 'data after EOF' (our
    own protocol error, which escaped from a listener's task as an unretrieved
    exception when a killed peer's connection was read on)."""
    conn = await connect("127.0.0.1", daemon.port, SessionConfig("mallory", role="client"))
    conn.writer.write(b"\x00\x00\x01\x00" + b"\xa0" * 10)
    await conn.writer.drain()
    await expect_error_then_close(conn, ErrorCode.MALFORMED_FRAME)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(conn.recv(), 5.0)
