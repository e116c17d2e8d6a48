"""A strip job's stage input: rows received from neighbours and rows its own pieces of
the stage before computed, joined into the slab a piece reads (``aio/strips.py``).

A piece of the next stage may be handed to the worker before the pieces it reads are
back on the event loop; their rows are then a :class:`PieceRows` the worker fills in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

__all__ = ["PieceRows", "Source", "covered", "join_rows", "resolve"]


@dataclass
class PieceRows:
    """A piece's output rows, filled in on the worker thread when it is done. A piece of
    the next stage handed over behind it reads them there: the worker runs pieces in
    the order they were handed over, so they are in before it starts."""

    start: int
    stop: int
    value: Array | None = None


Source = tuple[int, int, "Array | PieceRows"]
"""Input rows ``[start, stop)`` of a stage: received, or a piece of the stage before."""


def resolve(have: list[Source]) -> list[tuple[int, Array]]:
    """Worker thread: the rows of ``have`` that are in (a failed piece's are not)."""
    got = [(a, v.value if isinstance(v, PieceRows) else v) for a, _, v in have]
    return [(a, v) for a, v in got if v is not None]


def covered(have: list[Source], a: int, b: int) -> bool:
    """Whether input rows ``[a, b)`` are all here or on the worker (without joining them)."""
    at = a
    for start, stop, _ in sorted(have, key=lambda h: h[0]):
        if start <= at < stop:
            at = stop
            if at >= b:
                return True
    return at >= b


def join_rows(have: list[tuple[int, Array]], a: int, b: int) -> Array | None:
    """Input rows ``[a, b)`` from what is here (own and received pieces), or None."""
    out: list[Array] = []
    at = a
    for start, arr in sorted(have, key=lambda h: h[0]):
        stop = start + arr.shape[2]
        if start <= at < stop:
            take = min(stop, b)
            out.append(arr[:, :, at - start : take - start])
            at = take
            if at >= b:
                break
    if at < b:
        return None
    if len(out) == 1:
        return out[0]
    if not max(out, key=lambda a: a.shape[2]).transpose(0, 2, 3, 1).flags.c_contiguous:
        return np.concatenate(out, axis=2)
    # The own rows are channels-last (a packed model's stage output): join in that
    # layout, so that only the few received halo rows are transposed, and the worker's
    # copy (FusedExecutor.own_slab) is a straight one.
    nhwc = np.concatenate([a.transpose(0, 2, 3, 1) for a in out], axis=1)
    return nhwc.transpose(0, 3, 1, 2)
