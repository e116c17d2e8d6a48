"""The encrypted, mutually bound channel (issue 20), on loopback only.

A relay between two peers records every byte (nothing of a request's input or maps
may be in it), flips one byte (the connection closes, the request is still answered
exactly), or terminates TLS with its own certificate (both sides refuse). Wrong key,
no key, plaintext against TLS and an old protocol version are refused with their
codes while the peer keeps serving; an allow-list keeps a keyed peer out; stalled
handshakes are cut by the read timeout and capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator

import numpy as np
import pytest

from edgeci_p2p.aio.client import Client
from edgeci_p2p.aio.connection import ConnectionLost
from edgeci_p2p.aio.node import Tasks
from edgeci_p2p.aio.tls import Listener, client_context, server_context
from edgeci_p2p.core.geometry import Region, Span
from edgeci_p2p.core.plan import Part, Plan, Stage, validate
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.wire import framing
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import Hello
from tests.daemons import (
    HOST,
    IMAGE,
    address,
    assert_exact,
    client,
    cluster,
    reference,
    run_plan,
    wait_until,
)
from tests.planfakes import strips

KEY = b"tls test cluster key 0123456789"


class Relay:
    """A TCP relay on loopback to ``target`` (set once known) that records every byte;
    with ``tls`` it terminates TLS with its own certificate on both sides (a man in
    the middle that relays the plaintext)."""

    def __init__(self, *, tls: bool = False) -> None:
        self.target: int | None = None
        self.recorded = bytearray()
        self.flip_armed = False
        self.flipped = 0
        self.connections = 0
        self.ended = 0
        self._server_ctx = server_context(Identity.generate("mallory")) if tls else None
        self._client_ctx = client_context() if tls else None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, HOST, 0, ssl=self._server_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.target is None:
            w.close()
            return
        self.connections += 1
        try:
            r2, w2 = await asyncio.open_connection(HOST, self.target, ssl=self._client_ctx)
        except (OSError, ssl.SSLError):
            w.close()
            return
        await asyncio.gather(self._pump(r, w2), self._pump(r2, w), return_exceptions=True)
        for wr in (w, w2):
            wr.close()
        self.ended += 1

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1 << 16):
                if self.flip_armed and len(data) > 4096:
                    self.flip_armed = False
                    self.flipped += 1
                    flipped = bytearray(data)
                    flipped[len(flipped) // 2] ^= 0x01
                    data = bytes(flipped)
                self.recorded += data
                w.write(data)
                await w.drain()
        finally:
            w.close()


def two_device_plan(spec, nodes: list[str], cut: int = 6) -> Plan:  # type: ignore[no-untyped-def]
    """Stage 1 split between the two nodes, the rest on the second: the input's lower
    half and the whole map at ``cut`` cross the link."""
    n = spec.n_units
    _, h, w = spec.shape_at(n)
    stages = (
        strips(spec, 0, cut, [1, 1], "gather"),
        Stage(cut, n, (Part(Region(Span(0, h), Span(0, w)), 1),)),
    )
    plan = Plan(spec.name, "edgeci", "test", tuple(nodes), stages, auctioneer=0)
    validate(plan, spec)
    return plan


def known_patterns(d, plan: Plan) -> list[bytes]:  # type: ignore[no-untyped-def]
    """64-byte runs the request's input and its map after stage 1 certainly contain."""
    x = to_input(decode(IMAGE), "224")
    image_run = x.numpy()[0, 1, 180, 40:56].tobytes()  # in the second node's strip
    first = plan.stages[0]
    ex = d.store.executor("resnet34", 224, 224)
    # The map as the peers compute it, tile by tile (bit for bit what crosses the link).
    fmap = ex.run_tiled(0, first.stop, [p.region for p in first.parts], x).numpy().ravel()
    nz = fmap != 0
    # 16 consecutive non-zero floats: zero suppression sends them as they are.
    run = np.convolve(nz.astype(np.int32), np.ones(16, dtype=np.int32), "valid")
    at = int(np.argmax(run == 16))
    assert run[at] == 16
    return [image_run, fmap[at : at + 16].tobytes()]


@contextlib.asynccontextmanager
async def via_relay(relay: Relay, **config: object) -> AsyncIterator[list]:  # type: ignore[type-arg]
    """Two peers, the second reaching the first only through ``relay``."""
    async with cluster(2, per_peer={1: {"peers": [(HOST, relay.port)]}}, wait=False, **config) as (
        a,
        b,
    ):
        relay.target = a.port
        await wait_until(lambda: b.node_id in a.conns and a.node_id in b.conns, "linked")
        yield [a, b]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("plaintext", [False, True], ids=["tls", "plaintext-control"])
async def test_a_passive_tap_sees_nothing_of_the_request_and_a_flipped_byte_closes(
    plaintext: bool,
) -> None:
    cut = 6
    async with (
        Relay() as relay,
        via_relay(relay, cluster_key=KEY, plaintext=plaintext) as (
            a,
            b,
        ),
    ):
        plan = two_device_plan(a.store.spec("resnet34", 224, 224), [a.node_id, b.node_id], cut)
        logits, timing = await run_plan(a, plan, "tapped")
        assert_exact(logits, reference())
        assert set(timing["compute"]) == {a.node_id, b.node_id}  # type: ignore[arg-type]
        tape = bytes(relay.recorded)
        found = [p in tape for p in known_patterns(a, plan)]
        assert KEY not in tape
        if plaintext:  # the control: the same tap does see them in clear
            assert found == [True, True]
            return
        assert found == [False, False]
        # One flipped byte: TLS refuses the record, the connection closes, and the
        # request is still answered exactly (here, or on the peer once it redials).
        before = relay.ended
        relay.flip_armed = True
        logits, _ = await run_plan(a, plan, "flipped")
        assert_exact(logits, reference())
        assert relay.flipped == 1
        await wait_until(lambda: relay.ended > before, "the tampered connection closed")
        async with client(a, key=KEY) as c:
            assert {p["id"] for p in await c.peers()} >= {a.node_id}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_relay_that_terminates_tls_is_refused_by_both_sides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "edgeci.peer")
    async with (
        Relay(tls=True) as mitm,
        cluster(2, cluster_key=KEY, per_peer={1: {"peers": [(HOST, mitm.port)]}}, wait=False) as (
            a,
            b,
        ),
    ):
        mitm.target = a.port

        def refused(side: str) -> bool:
            return any(
                side in r.getMessage() and "AUTH_FAILED" in r.getMessage() for r in caplog.records
            )

        await wait_until(lambda: refused("inbound handshake refused"), "the listener refuses")
        await wait_until(lambda: refused("refused here"), "the dialler refuses")
        assert not a.membership.members and not b.membership.members
        # A client through it is refused too, and the peer goes on serving.
        with pytest.raises(Exception, match=r"AUTH_FAILED|code 106"):
            async with Client(f"{HOST}:{mitm.port}", key=KEY) as c:
                await c.peers()
        async with client(a, key=KEY) as c:
            assert (await c.peers())[0]["id"] == a.node_id


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_keyed_peer_off_the_allow_list_gets_no_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "edgeci.peer")
    ids = [Identity.generate() for _ in range(3)]
    allow = {0: {"allow_peers": frozenset({ids[1].node_id})}}
    async with cluster(3, cluster_key=KEY, identities=ids, per_peer=allow, wait=False) as (
        a,
        b,
        c,
    ):
        await wait_until(lambda: b.node_id in a.conns, "the listed peer is in")
        await wait_until(
            lambda: any("PEER_NOT_ALLOWED" in r.getMessage() for r in caplog.records),
            "the unlisted peer is refused and logged",
        )
        assert c.node_id not in a.membership.members
        async with client(a, key=KEY) as cl:
            r = await cl.infer(IMAGE, model="resnet34")
        assert c.node_id not in r.plan["nodes"]


async def raw_frames(sock_r: asyncio.StreamReader) -> list[dict[str, object]]:
    data = await asyncio.wait_for(sock_r.read(), 10)
    reader = framing.FrameReader(framing.DEFAULT_MAX_FRAME)
    reader.feed(data)
    out = []
    while (p := reader.next_frame()) is not None:
        item = framing.decode_payload(p)
        assert isinstance(item, dict)
        out.append(item)
    return out


def old_hello() -> bytes:
    hello = Hello(2, "old-peer", "", 7420, {}, b"o" * 32).to_wire()
    return framing.encode_frame({**hello, "version": 1})


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_wrong_key_no_key_plaintext_and_old_version_are_refused_with_their_codes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "edgeci.peer")
    async with cluster(1, cluster_key=KEY) as (d,):

        def refused_with(code: str) -> bool:
            return any(code in r.getMessage() for r in caplog.records)

        with pytest.raises(Exception, match=r"AUTH_FAILED|code 106"):
            async with Client(address(d), key=b"not the key, but long enough") as c:
                await c.peers()
        await wait_until(lambda: refused_with("AUTH_FAILED 106"), "wrong key: 106")
        with pytest.raises(Exception, match=r"AUTH_|code 10[56]"):
            async with Client(address(d)) as c:
                await c.peers()
        await wait_until(lambda: refused_with("AUTH_REQUIRED 105"), "no key: 105")
        with pytest.raises(ConnectionLost, match="code 107"):
            async with Client(address(d), key=KEY, plaintext=True) as c:
                await c.peers()
        # An old-version peer, plaintext as protocol 1 was: told so in plaintext.
        r, w = await asyncio.open_connection(HOST, d.port)
        w.write(old_hello())
        assert [f["code"] for f in await raw_frames(r) if f["type"] == "error"] == [107]
        w.close()
        # ... and one that got through TLS: UNSUPPORTED_VERSION.
        r, w = await asyncio.open_connection(HOST, d.port, ssl=client_context())
        w.write(old_hello())
        assert [f["code"] for f in await raw_frames(r) if f["type"] == "error"] == [104]
        w.close()
        assert not d.membership.members  # none of them got in, so none gets work
        async with client(d, key=KEY) as c:
            assert [p["id"] for p in await c.peers()] == [d.node_id]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_stalled_handshakes_are_cut_by_the_read_timeout_and_capped() -> None:
    handled: list[object] = []

    async def handler(r: object, w: asyncio.StreamWriter, done: object) -> None:
        handled.append(r)
        w.close()

    tasks = Tasks()
    listener = Listener(
        handler,
        server_context(Identity.generate()),
        read_timeout=0.5,
        max_handshakes=2,
        spawn=tasks.spawn,
    )
    port = await listener.start(HOST, 0)
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for first in (b"", b"\x16\x03\x01", b""):  # silent, a stalled ClientHello, silent
            s = socket.create_connection((HOST, port))
            s.setblocking(False)
            if first:
                s.send(first)
            socks.append(s)
        await wait_until(lambda: listener.in_handshake == 2, "two handshakes in progress")
        seen = 0
        for s in socks:  # each is closed by the listener, the third once a slot is free
            assert await asyncio.wait_for(loop.sock_recv(s, 16), 10) == b""
            seen = max(seen, listener.in_handshake)
        assert seen <= 2 and not handled
        await wait_until(lambda: listener.in_handshake == 0, "all slots free again")
    finally:
        for s in socks:
            s.close()
        listener.close()
        await tasks.cancel_all(1.0)
