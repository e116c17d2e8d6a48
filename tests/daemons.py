"""Clusters of peers for the daemon tests, and what those tests share.

``cluster(n)`` starts ``n`` in-process daemons on 127.0.0.1, waits until each sees
every other alive, and always stops them all; ``peer_processes`` starts and stops
``edgeci-peer`` subprocesses. Waits poll a condition up to a generous deadline.

Only the daemon's public face is used here (``PeerConfig``, ``start``/``stop``,
``cluster_view()``, ``node_id``, ``port``): its internals are free to move.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeci_p2p.aio.auctioneer import Decision
from edgeci_p2p.aio.client import Client
from edgeci_p2p.aio.daemon import PeerConfig, PeerDaemon
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.demo import MODEL, ready_port, start_peer, stop_peers
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.runtime import shared_model
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import InferRequest

HOST = "127.0.0.1"
WAIT_S = 30.0
"""How long a condition may take to come true before the wait fails."""
STOP_S = 15.0
"""How long one daemon may take to stop."""
EVERY_BID = {"bid_window": WAIT_S / 6}
"""An auctioneer's config for a test that needs every live peer in its plan. A round
closes as soon as every called peer has bid, so a long window costs nothing; with the
default 0.1 s, a loaded machine can hold a peer's bid past the window (the round then
plans without that peer, and a test of what happens to its tiles has none to watch)."""

IMAGE = sample_image_path().read_bytes()
"""The sample photo, as a client sends it."""


# ---- waiting ------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], object | Awaitable[object]],
    what: str,
    *,
    timeout: float = WAIT_S,
    poll: float = 0.05,
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:g} s")
        await asyncio.sleep(poll)


def sees_all_alive(d: PeerDaemon, others: set[str]) -> bool:
    """Whether ``d``'s cluster view holds exactly ``others`` alive besides itself."""
    alive = {p["id"] for p in d.cluster_view() if p["alive"] and p["id"] != d.node_id}
    return alive == others


async def wait_connected(daemons: Sequence[PeerDaemon], timeout: float = WAIT_S) -> None:
    """Until every one of ``daemons`` sees all the others, and only them, alive."""
    ids = {d.node_id for d in daemons}
    await wait_until(
        lambda: all(sees_all_alive(d, ids - {d.node_id}) for d in daemons),
        "daemons see each other alive",
        timeout=timeout,
    )


# ---- in-process daemons --------------------------------------------------------------------


def address(d: PeerDaemon) -> str:
    return f"{HOST}:{d.port}"


def client(d: PeerDaemon, key: bytes | None = None) -> Client:
    """A client of ``d`` (use as ``async with client(d) as c``), over TLS unless ``d``
    runs ``--plaintext``."""
    return Client(address(d), key=key, plaintext=d.config.plaintext)


async def stop_all(daemons: Sequence[PeerDaemon]) -> None:
    """Stop every daemon, even when one fails to; then raise the first failure."""
    failures: list[BaseException] = []
    for d in daemons:
        try:
            await asyncio.wait_for(d.stop(), STOP_S)
        except Exception as e:
            failures.append(e)
    if failures:
        raise failures[0]


async def start_daemons(
    n: int,
    *,
    per_peer: Mapping[int, Mapping[str, Any]] | None = None,
    node_ids: Sequence[str | None] | None = None,
    identities: Sequence[Identity | None] | None = None,
    mdns: bool = False,
    **config: Any,
) -> list[PeerDaemon]:
    """Start ``n`` daemons on 127.0.0.1, any free port, serving ResNet-34 unless
    ``models=`` says otherwise. ``config`` holds ``PeerConfig`` fields for all of them,
    ``per_peer[i]`` fields for daemon ``i`` only.

    Each daemon bids as a machine of its own (``host_id``) unless ``config`` says
    otherwise. Without mDNS each daemon after the first knows only the first as a static peer
    (gossip finds the rest); with ``mdns=True`` they have no static peers and find
    each other over mDNS bound to 127.0.0.1. Those started are stopped if one fails."""
    daemons: list[PeerDaemon] = []
    try:
        for i in range(n):
            fields: dict[str, Any] = {
                "host": HOST,
                "port": 0,
                "models": ["resnet34"],
                "no_mdns": not mdns,
                "mdns_interfaces": [HOST] if mdns else [],
                # Planned as separate machines (the tests exercise distribution); peers
                # that share one are pooled (tests/test_hosts.py).
                "host_id": f"test-host-{i}",
                # Tests set speeds and plans on purpose, and a loaded machine's timings
                # must not move bids in the middle of one (tests/test_calibration.py
                # turns it on).
                "calibrate_speed": False,
            }
            if i > 0 and not mdns:
                fields["peers"] = [(HOST, daemons[0].port)]
            fields.update(config)
            fields.update((per_peer or {}).get(i, {}))
            d = PeerDaemon(
                PeerConfig(**fields),
                node_id=node_ids[i] if node_ids else None,
                identity=identities[i] if identities else None,
            )
            daemons.append(d)
            await d.start()
    except BaseException:
        await stop_all(daemons)
        raise
    return daemons


@asynccontextmanager
async def cluster(
    n: int,
    *,
    wait: bool = True,
    timeout: float = WAIT_S,
    per_peer: Mapping[int, Mapping[str, Any]] | None = None,
    node_ids: Sequence[str | None] | None = None,
    identities: Sequence[Identity | None] | None = None,
    mdns: bool = False,
    **config: Any,
) -> AsyncIterator[list[PeerDaemon]]:
    """``start_daemons(n, ...)``, then (unless ``wait=False``) until all see each other
    alive; yields the daemons and stops them all however the block ends."""
    daemons = await start_daemons(
        n, per_peer=per_peer, node_ids=node_ids, identities=identities, mdns=mdns, **config
    )
    try:
        if wait:
            await wait_connected(daemons, timeout)
        yield daemons
    finally:
        await stop_all(daemons)


LOOPBACK_MDNS = pytest.mark.xdist_group("loopback-mdns")
"""The mark of a test whose peers announce or browse mDNS on 127.0.0.1. ``make test``
runs the suite on two workers (pytest-xdist, ``--dist loadgroup``); two such tests side
by side see each other's peers (a cluster of three found seven), so this group runs
them one after another on one worker."""

# ---- driving a daemon from a test ------------------------------------------------------------


async def crash(d: PeerDaemon, *, then: Callable[[], object] = lambda: None) -> None:
    """Stop ``d`` as a SIGKILL would: every connection reset at once, no goodbye; then
    ``then()`` (e.g. release its held worker: what it finishes now reaches no one) and
    ``d`` stopped, so that nothing of it runs on. Stopping it again later is harmless."""
    for conn in list(d.parts.mesh.open.values()):
        conn.writer.transport.abort()
    then()
    await asyncio.wait_for(d.stop(), STOP_S)


@dataclass
class HeldWorker:
    held: threading.Event
    """Set once the worker is held."""
    release: Callable[[], None]


@contextmanager
def blocked_worker(d: PeerDaemon) -> Iterator[HeldWorker]:
    """``d``'s tile worker held (no tile or local run finishes there) until ``release()``
    or the block exits."""
    held, free = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        free.wait(STOP_S * 4)

    d.worker.submit(hold)
    try:
        yield HeldWorker(held, free.set)
    finally:
        free.set()


async def run_plan(
    d: PeerDaemon,
    plan: Plan,
    request_id: str,
    pixels: np.ndarray | None = None,
    model: str = "resnet34",
) -> tuple[np.ndarray, dict[str, object]]:
    """The auctioneer's execution path with a forced plan (no auction)."""
    assert d.store is not None and d.auctioneer is not None
    x = to_input(decode(IMAGE), "224")
    spec = d.store.spec(model, 224, 224)
    local = d.auctioneer.local_decision(spec, None)
    decision = Decision(plan, local.testbed, None)
    req = InferRequest(request_id, model, tensor=x.numpy(), strategy="edgeci-halo")
    res = await d.execute(
        req, decision, {}, x, d.store.get(model).fingerprint, time.perf_counter(), pixels
    )
    return np.asarray(res.logits, dtype=np.float32), dict(res.timing)


# ---- edgeci-peer subprocesses --------------------------------------------------------------


@dataclass(frozen=True)
class PeerProcess:
    proc: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


stop_processes = stop_peers
"""SIGTERM the peers still running; kill any that has not exited after ``timeout``."""


def seed_profile(cache: Path, threads: int = 1) -> Path:
    """``cache`` holding this machine's profile for ``threads`` (the one the in-process
    daemons use, measured once and kept in the default cache), so that peers started
    together with it load one profile: they neither measure at the same moment on a
    loaded machine (each slowed by the others, their speeds at random) nor race to
    write the file. ``edgeci-peer`` is started with one thread."""
    from edgeci_p2p.nn import profiler

    prof, _ = profiler.load_or_measure(threads, progress=None)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / profiler.cache_path(threads).name).write_text(json.dumps(prof.to_dict()))
    return cache


@contextmanager
def peer_processes(
    tmp_path: Path,
    n: int,
    *,
    models: str = MODEL,
    ready_timeout: float = 120.0,
    one_machine: bool = False,
) -> Iterator[list[PeerProcess]]:
    """``n`` ``edgeci-peer`` processes named p0, p1, ... (mDNS on 127.0.0.1, no static
    peers, one profile cache under ``tmp_path`` seeded by :func:`seed_profile`), once
    each serves; stopped on exit.

    Each bids as a machine of its own (``--host-id``), as :func:`cluster`'s daemons
    do, unless ``one_machine``: on a 2-core runner the auctioneer otherwise keeps the
    cores for itself and declines every co-located peer, and a test of work on the
    other peers would find none there."""
    env = {"EDGECI_CACHE_DIR": str(seed_profile(tmp_path / "cache"))}
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(n):
            extra = [] if one_machine else ["--host-id", f"test-host-{i}"]
            procs.append(
                start_peer(str(tmp_path / f"p{i}"), f"p{i}", models=models, env=env, extra=extra)
            )
        yield [PeerProcess(p, ready_port(p, ready_timeout)) for p in procs]
    finally:
        stop_processes(procs)


# ---- answers ------------------------------------------------------------------------------


def reference(model: str = "resnet34", image: bytes = IMAGE, size: str = "224") -> torch.Tensor:
    """The unsplit model's logits for ``image``."""
    with torch.no_grad():
        return shared_model(model).module(to_input(decode(image), size))  # type: ignore[no-any-return]


def assert_exact(logits: object, ref: torch.Tensor) -> None:
    got = torch.from_numpy(np.array(logits, dtype=np.float32)).reshape(ref.shape)
    torch.testing.assert_close(got, ref)
