"""Measure one emulated link: round-trip time and TCP throughput between two namespaces.

    python benchmarks/linkprobe.py serve HOST PORT     (one connection, then exits)
    python benchmarks/linkprobe.py send HOST PORT [--mb 4]   -> JSON {"bandwidth", "rtt"}

Messages: 8-byte big-endian length, payload; the server answers each with one
byte once the whole payload has arrived.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def serve(host: str, port: int) -> None:
    with socket.create_server((host, port)) as srv:
        print("ready", flush=True)
        conn, _ = srv.accept()
        with conn:
            while True:
                try:
                    n = int.from_bytes(_recv_exact(conn, 8), "big")
                except ConnectionError:
                    return
                _recv_exact(conn, n)
                conn.sendall(b"k")


def send(host: str, port: int, mb: float) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.create_connection((host, port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def exchange(payload: bytes) -> float:
            t0 = time.perf_counter()
            s.sendall(len(payload).to_bytes(8, "big") + payload)
            _recv_exact(s, 1)
            return time.perf_counter() - t0

        rtt = statistics.median(exchange(b"x") for _ in range(20))
        payload = bytes(int(mb * 1e6))
        t = min(exchange(payload) for _ in range(2))
    return {"bandwidth": len(payload) / max(t - rtt, 1e-9), "rtt": rtt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["serve", "send"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--mb", type=float, default=4.0)
    a = p.parse_args()
    if a.mode == "serve":
        serve(a.host, a.port)
    else:
        print(json.dumps(send(a.host, a.port, a.mb)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
