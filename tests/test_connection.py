"""aio/connection.py's Connection over an in-memory stream: what a read does when its
task is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.wire.messages import Ping
from edgeci_p2p.wire.session import Established, Session, SessionConfig


class NullWriter:
    """What a Connection writes to; nothing here is sent."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def connected() -> tuple[Session, asyncio.StreamReader, Connection]:
    """A sending session, and a Connection (30 s read timeout) reading what the test
    feeds its stream reader."""
    a, b = Session(SessionConfig("A", port=7001)), Session(SessionConfig("B", port=7002))
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established)
    ev = b.next_event()
    assert isinstance(ev, Established)
    reader = asyncio.StreamReader()
    conn = Connection(b, reader, NullWriter(), ev.peer, read_timeout=30.0)  # type: ignore[arg-type]
    return a, reader, conn


@pytest.mark.asyncio
async def test_a_recv_cancelled_as_its_read_completes_is_cancelled() -> None:
    # The rest of a frame arrives in the loop iteration the receiving task is cancelled
    # in (a daemon shutting down while a peer still sends). The task must end cancelled,
    # not return the message and read on.
    a, reader, conn = connected()
    frame = a.send(Ping(1, 0.0))
    reader.feed_data(frame[:5])  # half a frame: the next read runs under the read timeout
    task = asyncio.ensure_future(conn.recv())
    for _ in range(5):  # loop iterations, not time: the task reaches its read
        await asyncio.sleep(0)
    assert not task.done() and conn.session.buffered
    reader.feed_data(frame[5:])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_a_frame_arriving_in_pieces_is_one_message() -> None:
    a, reader, conn = connected()
    frame = a.send(Ping(7, 1.5))
    task = asyncio.ensure_future(conn.recv())
    for i in range(0, len(frame), 3):
        reader.feed_data(frame[i : i + 3])
        await asyncio.sleep(0)  # one loop iteration: the task takes each piece alone
    got = await task
    assert isinstance(got, Ping) and got.seq == 7
