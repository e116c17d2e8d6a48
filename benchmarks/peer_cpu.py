"""Where each peer's CPU went, per request: its event loop, its compute worker, the rest.

A capped peer's event loop (messages in and out, TLS, zero suppression, the strip job's
bookkeeping) spends the same quota as its convolutions. ``benchmarks/cluster.py``
reads every peer's per-thread CPU times from ``/proc`` after each measured request and
charges the difference since the last one (that request and the unmeasured ones
before it, ``--settle``) to the request's strategy. Threads are told apart by name:

* ``loop``: the peer's main thread (its asyncio event loop);
* ``compute``: the worker thread that runs tiles, strips, folds and heads (named
  ``edgeci-tile`` in the OS by the daemon, ``aio/timed.py``);
* ``other``: every other thread of the peer (``asyncio.to_thread``, zeroconf...);
* ``children``: the peer's child processes (the planning child, ``aio/aside.py``),
  while they live.

``/proc/<pid>/task/<tid>/stat`` counts in clock ticks (10 ms here), so the report sums
a strategy's requests and divides (K = 10 with one settle request: 20 requests, half
a millisecond), and leaves out each arm's first request (model, strategy, transport):
the model's warm-up and the arm's first plan went before it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeci_p2p.aio.timed import WORKER_NAME

KINDS = ("loop", "compute", "other", "children")


def _stat_fields(text: str) -> tuple[str, list[str]]:
    """``(comm, fields after it)`` of a ``/proc/.../stat`` line (comm may hold spaces)."""
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def _ticks(fields: Sequence[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


@dataclass(frozen=True)
class PeerCPU:
    """CPU seconds one peer process has run, by kind (:data:`KINDS`)."""

    loop: float = 0.0
    compute: float = 0.0
    other: float = 0.0
    children: float = 0.0

    def minus(self, before: PeerCPU) -> PeerCPU:
        return PeerCPU(*(max(0.0, getattr(self, k) - getattr(before, k)) for k in KINDS))


def read_peer(
    pid: int,
    proc: Path = Path("/proc"),
    tick: float | None = None,
    by_parent: Mapping[str, int] | None = None,
) -> PeerCPU:
    """``pid``'s CPU by kind now (zeros when it is gone); ``by_parent``: the ticks of
    every live process by its parent's pid (:func:`_ticks_by_parent`), read here if not
    given."""
    tick = tick or 1.0 / os.sysconf("SC_CLK_TCK")
    out = {k: 0 for k in KINDS}
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return PeerCPU()
    for tid in tids:
        try:
            comm, fields = _stat_fields((proc / str(pid) / "task" / tid / "stat").read_text())
        except (OSError, ValueError):
            continue  # the thread ended between the listing and the read
        if tid == str(pid):
            kind = "loop"
        elif comm.startswith(WORKER_NAME):
            kind = "compute"
        else:
            kind = "other"
        out[kind] += _ticks(fields)
    if by_parent is None:
        by_parent = _ticks_by_parent(proc)
    out["children"] = by_parent.get(str(pid), 0)
    return PeerCPU(*(out[k] * tick for k in KINDS))


def _ticks_by_parent(proc: Path) -> dict[str, int]:
    """The CPU ticks of every live process, summed by its parent's pid: one pass over
    ``proc`` (it runs beside the next request, on the machine being measured)."""
    found: dict[str, int] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            _, fields = _stat_fields((proc / entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone between the listing and the read
        found[fields[1]] = found.get(fields[1], 0) + _ticks(fields)  # fields[1]: ppid
    return found


def read_peers(pids: Sequence[int], proc: Path = Path("/proc")) -> list[PeerCPU]:
    by_parent = _ticks_by_parent(proc)
    return [read_peer(p, proc, by_parent=by_parent) for p in pids]


def charge(
    before: Sequence[PeerCPU], after: Sequence[PeerCPU], requests: int
) -> list[dict[str, float]]:
    """Per peer, milliseconds of CPU by kind per request over ``requests`` requests."""
    return [
        {k: getattr(b.minus(a), k) * 1e3 / requests for k in KINDS}
        for a, b in zip(before, after, strict=True)
    ]


def where_the_cpu_went(
    results: Sequence[Mapping[str, Any]], group: Any
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Per model and strategy label (``group(result)`` gives ``(model, label)``), per
    peer: mean CPU milliseconds by kind per request, and the loop's share of the peer's
    CPU (``loop_share``), over the results that carry a ``cpu`` charge."""
    sums: dict[tuple[str, str], list[dict[str, float]]] = {}
    counts: dict[tuple[str, str], int] = {}
    for r in results:
        cpu = r.get("cpu")
        if not cpu:
            continue
        key = group(r)
        acc = sums.setdefault(key, [{k: 0.0 for k in KINDS} for _ in cpu])
        for peer, got in zip(acc, cpu, strict=True):
            for k in KINDS:
                peer[k] += got[k]
        counts[key] = counts.get(key, 0) + 1
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for (model, label), acc in sums.items():
        n = counts[(model, label)]
        peers = []
        for peer in acc:
            ms = {k: round(v / n, 1) for k, v in peer.items()}
            total = sum(ms.values())
            ms["loop_share"] = round(ms["loop"] / total, 2) if total > 0 else 0.0
            peers.append(ms)
        out.setdefault(model, {})[label] = peers
    return out


def cpu_table(where: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]) -> str:
    """:func:`where_the_cpu_went` as text: per peer ``loop + compute (+ rest)`` ms."""
    lines = [
        "where each peer's CPU went (ms of CPU per request: event loop + compute "
        "+ other threads and children; the loop's share)"
    ]
    for model, per in where.items():
        for label, peers in per.items():
            cells = [
                f"peer{i} {p['loop']:.0f}+{p['compute']:.0f}+{p['other'] + p['children']:.0f}"
                f" ({p['loop_share']:.0%})"
                for i, p in enumerate(peers)
            ]
            lines.append(f"{model:<9} {label:<11} " + "  ".join(cells))
    return "\n".join(lines)
