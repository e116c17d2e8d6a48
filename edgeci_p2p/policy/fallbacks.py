"""Where a lost tile goes next."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edgeci_p2p.core.membership import Member


def fallback_order(
    first: str,
    serving: Iterable[Member],
    usable: Callable[[str], bool],
    retries: int,
    own: str,
) -> list[str]:
    """The peers a tile planned on ``first`` is tried on after it: up to ``retries``
    others among ``serving`` (alive, same weights) that are ``usable`` (connected,
    not banned), fastest measured compute first, then this node (``own``), which
    always can run it."""
    others = [m for m in serving if m.node_id != first and usable(m.node_id)]
    others.sort(key=lambda m: -(m.speed_gflops or 0.0))
    return [*[m.node_id for m in others][:retries], own]
