"""Soak: concurrent clients against a loopback cluster whose peers keep getting SIGKILLed.

Starts N ``edgeci-peer`` processes on 127.0.0.1 (each its own state dir, one shared
profile cache, mDNS on 127.0.0.1), waits until every peer sees all the others, then
C clients (one connection each, to the stable peers 0 and 1 round-robin) send R
requests in total (the sample photo, strategies cycling edgeci/modnn/aofl) while a
killer SIGKILLs one of peers 2..N-1 every ``--kill-every`` seconds and restarts it at
once (same state dir, so the same node id; the restart runs alongside the next kills,
so with a restart slower than the cadence several killable peers are down at once).
Every answer is checked against the unsplit model; a request that errors is "lost"
and its error message is kept.

With ``--kill-entry`` the clients' entry peers are among those killed: peer 0 alone
is never killed; client i enters at peer 1 + i mod (N-1) and is given every peer's
address, so that a request whose entry peer dies is re-sent, under its id, to the
next peer (client failover, ``aio/client.py``); a killed peer restarts on its port.
The table then also counts the requests re-sent and checks that each request was
answered exactly once.

    .venv/bin/python benchmarks/soak.py [--requests 400] [--clients 4] [--peers 4]
        [--kill-every 3.0] [--kill-entry] [--model resnet34] [--json]

Table on stdout, a progress line on stderr, ``--json`` adds a last line
``{"completed", "lost", "exact", "p50_ms", "p95_ms", "kills", "rss_growth_mb"}``
(with ``--kill-entry`` also ``"resent"`` and ``"answered_once"``).
Peer 0's resident memory (VmRSS) is sampled after the warm-up (the first 20
requests, before the killer starts) and at the end. Subprocesses are always stopped
(try/finally, also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeci_p2p.aio.client import Client
from edgeci_p2p.aio.connection import ConnectionLost
from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.runtime import shared_model

STRATEGIES = ("edgeci", "modnn", "aofl")
WARMUP = 20
STABLE = 2
"""Peers 0 and 1 are never killed: the clients talk to them, peer 0's memory is measured."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Peer:
    """One ``edgeci-peer`` subprocess; its output is drained (a full pipe would block
    the peer) and the last lines kept for diagnosis."""

    def __init__(
        self, index: int, state_dir: str, model: str, env: dict[str, str], same_port: bool
    ) -> None:
        self.index, self.state_dir, self.model, self.env = index, state_dir, model, env
        self.same_port = same_port
        """Restart on the port of the first start (clients hold its address)."""
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def start(self) -> None:
        # Planned as machines of their own (--host-id), as on real devices: on one
        # machine they would share its cores and the entry peer would keep the work.
        self.proc = start_peer(
            self.state_dir,
            f"soak-{self.index}",
            models=self.model,
            env=self.env,
            extra=["--host-id", f"soak-{self.index}"]
            + (["--port", str(self.port)] if self.same_port and self.port else []),
        )
        self.port = ready_port(self.proc, 240)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.tail.append(line.rstrip())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    lost: list[tuple[int, str, str]] = field(default_factory=list)
    """(request index, strategy, error message)"""
    worst_diff: float = 0.0
    worst_excess: float = -1.0
    """max over results of diff - tolerance; <= 0 means every result was exact."""
    reconnects: int = 0
    resent: int = 0
    """Requests sent again after their entry peer was lost (--kill-entry)."""
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    """Answers per request index."""
    kills: int = 0
    kill_errors: list[str] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    rss_trail: list[tuple[int, float]] = field(default_factory=list)
    """(requests answered, peer 0 VmRSS MB) every quarter of the run."""
    """Seconds from SIGKILL to the restarted peer serving again."""

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)


async def wait_all_alive(address: str, n: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with Client(address, timeout=10) as c:
        while True:
            alive = sum(1 for p in await c.peers() if p.get("alive"))
            if alive == n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"peers did not find each other: {alive}/{n} alive")
            await asyncio.sleep(0.3)


async def soak(args: argparse.Namespace, peers: list[Peer]) -> tuple[Tally, float, float]:
    image = sample_image_path().read_bytes()
    with torch.no_grad():
        ref = shared_model(args.model).module(to_input(decode(image), "224"))
    ref_np = ref.numpy().reshape(-1)
    tol = 1e-5 + 1.3e-6 * float(np.abs(ref_np).max())
    tally = Tally()
    counter = itertools.count()
    done = asyncio.Event()
    warm = asyncio.Event()
    finished = 0

    def progress() -> None:
        print(
            f"\r[soak] {finished}/{args.requests} answered, {len(tally.lost)} lost, "
            f"{tally.kills} kills",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def addresses(ci: int, target: int) -> list[str]:
        if not args.kill_entry:
            return [f"127.0.0.1:{peers[target].port}"]
        # The entry first, then every other peer to fail over to.
        entry = 1 + ci % (len(peers) - 1)
        order = [entry] + [j for j in range(len(peers)) if j != entry]
        return [f"127.0.0.1:{peers[j].port}" for j in order]

    async def client(ci: int) -> None:
        nonlocal finished
        target = ci % STABLE
        c: Client | None = None
        try:
            while (i := next(counter)) < args.requests:
                strategy = STRATEGIES[i % len(STRATEGIES)]
                if c is None:
                    c = Client(addresses(ci, target), timeout=args.timeout)
                    await c.__aenter__()
                t0 = time.perf_counter()
                try:
                    r = await c.infer(image, model=args.model, strategy=strategy)
                except (ConnectionLost, OSError) as e:
                    # The connection itself broke: this request is lost; the next one goes
                    # to the other stable peer on a fresh connection.
                    tally.lost.append((i, strategy, f"{type(e).__name__}: {e}"))
                    await c.close()
                    c, target = None, (target + 1) % STABLE
                    tally.reconnects += 1
                except Exception as e:
                    tally.lost.append((i, strategy, f"{type(e).__name__}: {e}"))
                else:
                    tally.answers[i] += 1
                    tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    got = np.asarray(r.logits, dtype=np.float32).reshape(-1)
                    diff = (
                        float(np.abs(got - ref_np).max()) if got.shape == ref_np.shape else np.inf
                    )
                    tally.worst_diff = max(tally.worst_diff, diff)
                    tally.worst_excess = max(tally.worst_excess, diff - tol)
                finished += 1
                progress()
                if finished >= WARMUP:
                    warm.set()
                if finished % max(1, args.requests // 4) == 0 and peers[0].proc is not None:
                    # Whether memory keeps climbing or levels off after the warm-up.
                    tally.rss_trail.append((finished, vm_rss_mb(peers[0].proc.pid)))
                if finished >= args.requests:
                    done.set()
        finally:
            if c is not None:
                tally.resent += c.resent
                await c.close()

    async def restart(victim: Peer) -> None:
        t = time.monotonic()
        try:
            await asyncio.to_thread(victim.start)
            tally.restart_s.append(time.monotonic() - t)
        except RuntimeError as e:
            tally.kill_errors.append(f"peer {victim.index} did not restart: {e}")

    async def killer() -> None:
        # Kills on a fixed cadence; the restart runs alongside, so with a slow restart
        # several killable peers can be down at once. A victim still restarting from
        # its previous kill is waited for (killing a half-started peer tests nothing).
        await warm.wait()
        victims = itertools.cycle(peers[1:] if args.kill_entry else peers[STABLE:])
        restarts: dict[int, asyncio.Task[None]] = {}
        try:
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), args.kill_every)
                    return
                except TimeoutError:
                    pass
                victim = next(victims)
                pending = restarts.get(victim.index)
                if pending is not None:
                    await pending
                if done.is_set():
                    return
                victim.kill()
                tally.kills += 1
                progress()
                restarts[victim.index] = asyncio.ensure_future(restart(victim))
        finally:
            for task in restarts.values():
                await task

    async def sample_rss_after_warmup() -> float:
        await warm.wait()
        assert peers[0].proc is not None
        return vm_rss_mb(peers[0].proc.pid)

    rss_task = asyncio.ensure_future(sample_rss_after_warmup())
    kill_task = asyncio.ensure_future(killer()) if len(peers) > STABLE else None
    try:
        await asyncio.gather(*(client(ci) for ci in range(args.clients)))
    finally:
        done.set()
        if kill_task is not None:
            await kill_task
        warm.set()
    print(file=sys.stderr)
    rss_warm = await rss_task
    assert peers[0].proc is not None
    rss_end = vm_rss_mb(peers[0].proc.pid)
    return tally, rss_warm, rss_end


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=3.0)
    ap.add_argument(
        "--kill-entry",
        action="store_true",
        help="the clients' entry peers are killed too (all but peer 0); clients fail over",
    )
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.peers < STABLE:
        ap.error(f"--peers must be at least {STABLE}")

    peers: list[Peer] = []
    with tempfile.TemporaryDirectory(prefix="edgeci-soak-") as tmp:
        env = {"EDGECI_CACHE_DIR": f"{tmp}/cache"}
        peers = [
            Peer(i, f"{tmp}/peer{i}", args.model, env, args.kill_entry) for i in range(args.peers)
        ]
        try:
            # Peer 0 first: it profiles this machine once into the shared cache, and the
            # others then read it instead of measuring all at once on the same cores.
            _log(f"[soak] starting {args.peers} peers on 127.0.0.1...")
            peers[0].start()
            for p in peers[1:]:
                p.start()
            asyncio.run(wait_all_alive(f"127.0.0.1:{peers[0].port}", args.peers))
            first_victim = 1 if args.kill_entry else STABLE
            _log(
                f"[soak] {args.peers} peers alive; {args.clients} clients, {args.requests} "
                f"requests, killing one of peers {first_victim}..{args.peers - 1} every "
                f"{args.kill_every:g} s"
            )
            t0 = time.monotonic()
            tally, rss_warm, rss_end = asyncio.run(soak(args, peers))
            wall = time.monotonic() - t0
        finally:
            for p in peers:
                p.stop()
            for p in peers:
                p.reap()

    lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.array([np.nan])
    exact = tally.completed > 0 and tally.worst_excess <= 0
    out = {
        "completed": tally.completed,
        "lost": len(tally.lost),
        "exact": bool(exact),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "kills": tally.kills,
        "rss_growth_mb": round(rss_end - rss_warm, 1),
    }
    answered_once = sorted(tally.answers) == list(range(args.requests)) and all(
        n == 1 for n in tally.answers.values()
    )
    if args.kill_entry:
        out["resent"] = tally.resent
        out["answered_once"] = answered_once
    rows = [
        ("requests", f"{args.requests} ({args.clients} clients, {args.peers} peers, {args.model})"),
        ("completed", str(out["completed"])),
        ("lost", str(out["lost"])),
        ("all exact", f"{'yes' if exact else 'NO'} (worst max abs diff {tally.worst_diff:.3g})"),
        ("latency p50 / p95", f"{out['p50_ms']:.0f} / {out['p95_ms']:.0f} ms"),
        ("kills (SIGKILL + restart)", f"{tally.kills} (every {args.kill_every:g} s)"),
        (
            "restart to serving",
            f"median {np.median(tally.restart_s):.1f} s" if tally.restart_s else "-",
        ),
        ("peer 0 VmRSS after warm-up", f"{rss_warm:.1f} MB"),
        ("peer 0 VmRSS at end", f"{rss_end:.1f} MB"),
        ("peer 0 VmRSS by answers", ", ".join(f"{n}: {mb:.0f}" for n, mb in tally.rss_trail)),
        ("RSS growth", f"{out['rss_growth_mb']:+.1f} MB"),
        ("wall time", f"{wall:.0f} s"),
        ("client reconnects", str(tally.reconnects)),
    ]
    if args.kill_entry:
        rows += [
            ("re-sent after entry loss", str(tally.resent)),
            ("each answered once", "yes" if answered_once else "NO"),
        ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if tally.lost:
        errors = collections.Counter(msg for _, _, msg in tally.lost)
        print("lost requests by error:")
        for msg, n in errors.most_common():
            print(f"  {n:>4} x {msg}")
        by_strategy = collections.Counter(s for _, s, _ in tally.lost)
        print("lost by strategy: " + ", ".join(f"{s} {n}" for s, n in by_strategy.items()))
    for e in tally.kill_errors:
        print(e)
    if args.json:
        print(json.dumps(out))
    once = answered_once or not args.kill_entry
    return 0 if (not tally.lost and exact and once) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _log("\n[soak] interrupted; peers stopped")
        sys.exit(130)
