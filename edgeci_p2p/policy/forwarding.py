"""Which peer a busy entry peer passes a client's request on to.

A stream's frames spread over the cluster whole: while this node already answers
a request, the next one goes to the peer that would finish it first, judged by the
requests in flight from here to it times its measured seconds for the conv probe
item of its last bid, if that beats this node's own queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edgeci_p2p.planners import OURS


def may_forward(hops: int, strategy: str, running_here: int) -> bool:
    """Only first-hop requests of our strategies, and only while this node is busy."""
    return hops == 0 and strategy in OURS and running_here > 0


def forward_target(
    running_here: int,
    own_probe_s: float | None,
    candidates: Iterable[str],
    probe_s: Mapping[str, float],
    in_flight: Mapping[str, int],
) -> str | None:
    """The candidate (alive, connected, unbanned, same weights) whose queue from here,
    ``(in_flight + 1) * probe_s``, ends first, if sooner than this node's own
    ``(running_here + 1) * own_probe_s``; None to run the request here. Peers never
    measured (no probe seconds) are not candidates, nor is anyone while this node's
    own speed is unknown."""
    if own_probe_s is None:
        return None
    best, best_t = None, (running_here + 1) * own_probe_s
    for node in candidates:
        probe = probe_s.get(node)
        if probe is None:
            continue
        t = (in_flight.get(node, 0) + 1) * probe
        if t < best_t:
            best, best_t = node, t
    return best
