"""Wire throughput: encode + decode of a 1x64x224x224 float32 tensor (12.8 MB).

The tensor travels the full protocol path: ``Session.send(TileResult)`` on one
side, ``receive_data`` + ``next_event`` on the other. The figure of merit is
the ratio to a plain copy of the same bytes measured in the same run (best of
``--repeat`` for both), so it does not depend on the machine's speed. Target:
ratio >= 0.4, which needs decode to build the array over the received buffer.

Then the same tensor through a real loopback TCP connection, driven by the peers'
own ``aio/connection.py``: over TLS 1.3 (the default, target >= 300 MB/s: every edge
link is below 125 MB/s) and ``--plaintext``, in the same run (``--no-socket`` skips).

    .venv/bin/python benchmarks/wire.py [--json] [--repeat N] [--no-socket]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from edgeci_p2p.aio.connection import Connection, connect, handshake
from edgeci_p2p.aio.tls import client_context, server_context
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import TileResult
from edgeci_p2p.wire.session import Channel, Established, Session, SessionConfig


def open_pair() -> tuple[Session, Session]:
    a, b = Session(SessionConfig("A")), Session(SessionConfig("B"))
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established) and isinstance(b.next_event(), Established)
    return a, b


async def socket_mb_per_s(x: np.ndarray, tls: bool, messages: int) -> float:
    """MB/s of ``messages`` TileResults of ``x`` from one Connection to another over
    loopback (sent while the receiver reads: the receiver's clock, first to last)."""
    ids = Identity.generate("a"), Identity.generate("b")
    configs = [SessionConfig(i.node_id, identity=i, zero_suppress_bytes=None) for i in ids]
    accepted: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        channel = Channel(listener=True) if tls else None
        accepted.set_result(await handshake(r, w, configs[0], channel=channel))

    ssl_server = server_context(ids[0]) if tls else None
    server = await asyncio.start_server(on_accept, "127.0.0.1", 0, ssl=ssl_server)
    port = server.sockets[0].getsockname()[1]
    sender = await connect("127.0.0.1", port, configs[1], tls=client_context() if tls else None)
    receiver = await accepted

    async def send_all() -> None:
        for i in range(messages):
            await sender.send(TileResult("req", i, x, 0.0))

    await asyncio.gather(sender.send(TileResult("warm", 0, x, 0.0)), receiver.recv())
    t0 = time.perf_counter()
    sending = asyncio.ensure_future(send_all())
    for _ in range(messages):
        msg = await receiver.recv()
        assert isinstance(msg, TileResult) and msg.output.shape == x.shape
    elapsed = time.perf_counter() - t0
    await sending
    await sender.close()
    await receiver.close()
    server.close()
    return x.nbytes * messages / 1e6 / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-socket", action="store_true", help="skip the loopback connection")
    args = ap.parse_args()

    x = np.random.default_rng(0).standard_normal((1, 64, 224, 224)).astype(np.float32)
    nbytes = x.nbytes
    sender, receiver = open_pair()
    t_copy, t_enc, t_dec = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        copy = x.copy()
        t1 = time.perf_counter()
        t_copy.append(t1 - t0)
        del copy

        t0 = time.perf_counter()
        data = sender.send(TileResult("req", 0, x, 0.0))
        t1 = time.perf_counter()
        receiver.receive_data(data)
        msg = receiver.next_event()
        t2 = time.perf_counter()
        t_enc.append(t1 - t0)
        t_dec.append(t2 - t1)
        assert isinstance(msg, TileResult) and msg.output.shape == x.shape
        assert np.shares_memory(msg.output, np.frombuffer(data, np.uint8))  # decoded in place
        del data, msg

    # As from a socket: the frame arrives in 64 KiB reads and is assembled once.
    data = sender.send(TileResult("req", 0, x, 0.0))
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    t_pieces = []
    for _ in range(max(3, args.repeat // 3)):
        t0 = time.perf_counter()
        for p in pieces:
            receiver.receive_data(p)
        msg = receiver.next_event()
        t_pieces.append(time.perf_counter() - t0)
        assert isinstance(msg, TileResult) and np.array_equal(msg.output, x)
    copy_s, enc_s, dec_s = min(t_copy), min(t_enc), min(t_dec)
    codec_s = enc_s + dec_s
    mb = nbytes / 1e6
    result = {
        "mb_per_s": round(mb / codec_s, 1),
        "ratio_to_memcpy": round(copy_s / codec_s, 3),
    }
    if not args.no_socket:
        n = max(4, args.repeat)
        # Interleaved, best of three each, so that a shared machine's noise hits both alike.
        # On uvloop where installed, as edgeci-peer runs (aio/daemon.py run_forever).
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        tls_runs, plain_runs = [], []
        for _ in range(3):
            tls_runs.append(run(socket_mb_per_s(x, True, n)))
            plain_runs.append(run(socket_mb_per_s(x, False, n)))
        result["tls_socket_mb_per_s"] = round(max(tls_runs), 1)
        result["plaintext_socket_mb_per_s"] = round(max(plain_runs), 1)
    if args.json:
        print(json.dumps(result))
        return
    print(f"tensor 1x64x224x224 float32, {mb:.1f} MB, best of {args.repeat}")
    print(f"  memcpy          {copy_s * 1e3:8.2f} ms  {mb / copy_s:9.1f} MB/s")
    print(f"  encode (send)   {enc_s * 1e3:8.2f} ms  {mb / enc_s:9.1f} MB/s")
    print(f"  decode (recv)   {dec_s * 1e3:8.2f} ms  {mb / dec_s:9.1f} MB/s")
    print(f"  encode+decode   {codec_s * 1e3:8.2f} ms  {result['mb_per_s']:9.1f} MB/s")
    pieces_s = min(t_pieces)
    print("  decode from 64 KiB reads (frame assembled once, not in the ratio)")
    print(f"                  {pieces_s * 1e3:8.2f} ms  {mb / pieces_s:9.1f} MB/s")
    print(f"  ratio to memcpy {result['ratio_to_memcpy']:.3f} (target >= 0.4)")
    if not args.no_socket:
        print("through a loopback TCP connection (aio/connection.py, send while receiving)")
        print(f"  TLS 1.3         {result['tls_socket_mb_per_s']:9.1f} MB/s  (target >= 300)")
        print(f"  --plaintext     {result['plaintext_socket_mb_per_s']:9.1f} MB/s")


if __name__ == "__main__":
    main()
