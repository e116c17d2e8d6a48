"""Wire throughput: encode + decode of a 1x64x224x224 float32 tensor (12.8 MB).

The tensor travels the full protocol path: ``Session.send(TileResult)`` on one
side, ``receive_data`` + ``next_event`` on the other. The figure of merit is
the ratio to a plain copy of the same bytes measured in the same run (best of
``--repeat`` for both), so it does not depend on the machine's speed. Target:
ratio >= 0.4, which needs decode to build the array over the received buffer.

    .venv/bin/python benchmarks/wire.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from edgeci_p2p.wire.messages import TileResult
from edgeci_p2p.wire.session import Established, Session, SessionConfig


def open_pair() -> tuple[Session, Session]:
    a, b = Session(SessionConfig("A")), Session(SessionConfig("B"))
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established) and isinstance(b.next_event(), Established)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=15)
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


if __name__ == "__main__":
    main()
