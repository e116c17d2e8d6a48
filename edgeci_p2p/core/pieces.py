"""Edge-first pieces of a resident strip (pure): the rows neighbours read come first.

In a halo segment a neighbour's next stage waits for our edge rows, and our edge
rows wait for the neighbours' rows of this stage, but the middle of a strip waits
for no one. So a peer cuts its part of a stage into the edge pieces (the rows it
sends on) and the rest: it computes an edge piece as soon as its input is here,
sends it, and computes the middle while the rows travel; when the neighbours'
rows are late it computes the middle first. The daemon runs strips this way
(:func:`edgeci_p2p.aio.strips.run_strip_job`) and the simulator times them this
way (:func:`edgeci_p2p.core.sim.run_segment`), from the same cut.

The cut costs recomputation at the seams when the stage fuses several units: a
strip stays whole when that is more than :data:`MAX_SEAM_OVERHEAD`, or when the
edges are most of the strip (nothing would be left to overlap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from edgeci_p2p.core.workload import Workload

MAX_SEAM_OVERHEAD = 0.08
"""Most extra FLOPs (recomputed at the seams of a fused stage) a strip pays to have
the rows its neighbours read computed, and sent, before the rest of it."""


@dataclass(frozen=True)
class Piece:
    """Output rows of a stage's strip that are computed in one call."""

    rows: tuple[int, int]
    need: tuple[int, int]
    """The stage input rows they read."""
    sends: bool
    """Neighbours read these rows: computed first when they can be, then sent."""
    unit_flops: tuple[tuple[str, int], ...]
    """FLOPs per unit kind, one entry per unit (as :class:`RangeWork`)."""


_CACHE: dict[tuple[object, ...], tuple[Piece, ...]] = {}


def edge_first_pieces(
    work: Workload,
    start: int,
    stop: int,
    rows: tuple[int, int],
    sends: Sequence[tuple[int, int]],
) -> tuple[Piece, ...]:
    """Full-width output rows ``rows`` of units ``[start, stop)`` cut so that the
    rows in ``sends`` (what neighbours read, any order) are whole pieces of their
    own; one piece when the strip stays whole. Pieces are in row order and cover
    ``rows`` exactly once."""
    spec = work.spec
    key = (spec.name, spec.input_shape, start, stop, rows, tuple(sorted(sends)))
    got = _CACHE.get(key)
    if got is not None:
        return got
    _, _, w = spec.shape_at(stop)
    r0, r1 = rows

    def piece(a: int, b: int, sends: bool) -> Piece:
        rw = work.work(start, stop, (a, b, 0, w))
        return Piece((a, b), (rw.need[0], rw.need[1]), sends, tuple(rw.unit_flops))

    merged: list[tuple[int, int]] = []
    for a, b in sorted((max(s0, r0), min(s1, r1)) for s0, s1 in sends):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        elif a < b:
            merged.append((a, b))
    cuts = sorted({r0, r1, *(x for iv in merged for x in iv)})
    pieces = tuple(
        piece(a, b, any(m0 <= a and b <= m1 for m0, m1 in merged)) for a, b in pairwise(cuts)
    )
    sent = sum(p.rows[1] - p.rows[0] for p in pieces if p.sends)
    if len(pieces) > 1 and 2 * sent <= r1 - r0:
        whole = piece(r0, r1, False)
        split = sum(f for p in pieces for _, f in p.unit_flops)
        if split <= (1 + MAX_SEAM_OVERHEAD) * sum(f for _, f in whole.unit_flops):
            got = pieces
    if got is None:
        got = (piece(r0, r1, bool(merged)),)
    if len(_CACHE) > 50_000:
        _CACHE.clear()
    _CACHE[key] = got
    return got
