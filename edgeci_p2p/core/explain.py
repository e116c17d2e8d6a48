"""Where a traced request's time went, measured against its plan (pure).

A request's latency is its critical path (``core/timeline.critical_path``): a chain
of steps from its arrival to its answer, with gaps between them. Each step and each
gap falls in one category (:data:`CATEGORIES`), so that the categories add up to the
measured latency. The plan's side is the same walk over its predicted spans (the
simulator's intervals that the spans carry), from when the plan began to run; the
plan predicts neither the auction nor decoding (None), and assumes no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeci_p2p.core.timeline import Span, Timeline, critical_path

CATEGORIES = ("planning", "decode", "compute", "transfer", "waiting", "event_loop", "head")
"""Where time goes on the critical path:

- ``planning``: the auction (bids, planning, awards);
- ``decode``: decoding and preprocessing the input on the entry peer;
- ``compute``: running the model's units (tiles, strips), and where fc1 is folded into
  the last strips (``Plan.fold_head``) each strip's share of it (``fold``), as the plan
  predicts it: inside the last stage's compute;
- ``transfer``: sending (``send``/``recv`` lanes), and the gap between a step on one
  node and the next step on another (the bytes on the wire, and the receiving event
  loop);
- ``waiting``: for a worker thread (``queue``), for a neighbour's halo rows
  (``halo-wait``), or for a peer that reported none of its steps (``wait``);
- ``event_loop``: the entry peer's bookkeeping (cut, stitch, counting zeros, the
  result) and the gaps between steps on one node;
- ``head``: the pool and classifier (what a fold leaves of them), where they ran.
"""

LABELS = {
    "planning": "planning (auction)",
    "decode": "decoding the input",
    "compute": "compute",
    "transfer": "transfer",
    "waiting": "waiting",
    "event_loop": "event loop, bookkeeping",
    "head": "head",
}


def category(span: Span, head: int | None = None) -> str:
    """The category of one step (``head``: the stage number of the head's spans,
    :func:`head_stage`, so that a head job's compute on another peer counts as head)."""
    if span.name == "auction":
        return "planning"
    if span.name == "decode":
        return "decode"
    if span.name == "head":
        return "head"
    if head is not None and span.lane == "compute" and span.stage == head:
        return "head"
    if span.lane == "compute":
        return "compute"
    if span.lane in ("send", "recv"):
        return "transfer"
    if span.lane == "wait":
        return "waiting"
    return "event_loop"


def gap_category(before: Span | None, after: Span, predicted: bool = False) -> str:
    """The category of the time between two consecutive steps of a path."""
    if before is not None and before.node != after.node:
        return "transfer"
    return "waiting" if predicted else "event_loop"


@dataclass(frozen=True)
class Step:
    """One step of a critical path as it counts: ``seconds`` is the part of it not
    already covered by the steps before it; ``gap`` the time since they ended."""

    span: Span
    seconds: float
    gap: float
    gap_category: str
    category: str


def steps(
    path: Sequence[Span], start: float = 0.0, head: int | None = None, predicted: bool = False
) -> list[Step]:
    """A path's steps with what each adds to the latency from ``start``: they add up to
    the path's end less ``start``."""
    out: list[Step] = []
    at, prev = start, None
    for s in path:
        gap = max(0.0, s.start - at)
        seconds = max(0.0, s.stop - max(s.start, at))
        out.append(Step(s, seconds, gap, gap_category(prev, s, predicted), category(s, head)))
        at, prev = max(at, s.stop), s
    return out


def head_stage(timeline: Timeline) -> int | None:
    """The stage number the head's spans carry (``len(plan.stages)``): a ``head``
    span's; else, for a head job on another peer, the last stage when the entry peer
    sent something in it but cut and stitched no tiles there."""
    for s in timeline.spans:
        if s.name == "head" and s.stage is not None:
            return s.stage
    stages = [s.stage for s in timeline.spans if s.stage is not None]
    if not stages:
        return None
    last = max(stages)
    mine = [s for s in timeline.spans if s.stage == last and s.node == timeline.origin]
    if any(s.name in ("cut", "stitch") for s in mine) or not any(s.lane == "send" for s in mine):
        return None
    return last


def tally(path_steps: Sequence[Step]) -> dict[str, float]:
    """Seconds per category over some steps (gaps included)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for st in path_steps:
        out[st.gap_category] += st.gap
        out[st.category] += st.seconds
    return out


def predicted_window(timeline: Timeline) -> tuple[float, float] | None:
    """When the plan's predictions begin and end (seconds since the request arrived),
    or None for a timeline without predictions."""
    pred = [s.predicted for s in timeline.spans if s.predicted is not None]
    if not pred:
        return None
    return min(a for a, _ in pred), max(b for _, b in pred)


def predicted_path(timeline: Timeline) -> list[Span]:
    """The critical path of the plan's own timeline (its predicted spans)."""
    return critical_path(timeline.predicted_spans(), causal=False)


def where_the_time_went(timeline: Timeline) -> dict[str, tuple[float, float | None]]:
    """Per category (:data:`CATEGORIES`, in that order): (measured seconds on the
    critical path, the plan's predicted seconds or None where it predicts nothing).
    The measured seconds add up to the timeline's end (the request's latency on its
    entry peer); the predicted ones to the plan's predicted latency."""
    head = head_stage(timeline)
    measured = tally(steps(timeline.critical_path(), 0.0, head))
    window = predicted_window(timeline)
    if window is None:
        return {c: (measured[c], None) for c in CATEGORIES}
    plan = tally(steps(predicted_path(timeline), window[0], head, predicted=True))
    return {c: (measured[c], None if c in ("planning", "decode") else plan[c]) for c in CATEGORIES}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def explain(
    timeline: Timeline, names: Mapping[str, str] | None = None, min_gap: float = 5e-4
) -> list[str]:
    """The critical path, a line per step (when it started, what it added, the plan's
    prediction for it, node and step; gaps of at least ``min_gap`` seconds as lines
    of their own), then where the time went against the plan."""
    names = names or {}
    path = timeline.critical_path()
    window = predicted_window(timeline)
    head = head_stage(timeline)
    lines = [f"critical path: {len(path)} steps, {_ms(timeline.end)} ms"]
    if window is not None:
        p0, p1 = window
        lines[0] += (
            f"; the plan's part from {_ms(p0)} ms: {_ms(timeline.end - p0)} ms measured, "
            f"{_ms(p1 - p0)} ms predicted"
        )
    width = max([len(names.get(n, n)) for n in timeline.nodes] + [4])
    lines.append(f"  {'at ms':>8} {'ms':>7} {'pred ms':>7}  {'node':<{width}}  step")
    shown: set[tuple[str, tuple[float, float] | None]] = set()
    for st in steps(path, 0.0, head):
        s = st.span
        if st.gap >= min_gap:
            what = "transfer" if st.gap_category == "transfer" else "event loop"
            lines.append(
                f"  {_ms(s.start - st.gap):>8} {_ms(st.gap):>7} {'':>7}  {'':<{width}}  ({what})"
            )
        pred = "-" if s.predicted is None else _ms(s.predicted[1] - s.predicted[0])
        if s.predicted is not None and (s.node, s.predicted) in shown:
            pred = "same"  # one prediction for several steps (a strip's pieces, say)
        shown.add((s.node, s.predicted))
        where = ", ".join(
            f"{k} {v}" for k, v in (("stage", s.stage), ("tile", s.tile)) if v is not None
        )
        step = f"{s.name} ({where})" if where else s.name
        lines.append(
            f"  {_ms(s.start):>8} {_ms(st.seconds):>7} {pred:>7}  "
            f"{names.get(s.node, s.node):<{width}}  {step}"
        )
    lines += ["", f"where the time went on the critical path  {'measured':>10} {'predicted':>10}"]
    summary = where_the_time_went(timeline)
    for c, (m, p) in summary.items():
        lines.append(
            f"  {LABELS[c]:<39} {_ms(m):>7} ms {_ms(p):>7}{' ms' if p is not None else ''}"
        )
    total_p = None if window is None else sum(p or 0.0 for _, p in summary.values())
    lines.append(
        f"  {'total':<39} {_ms(sum(m for m, _ in summary.values())):>7} ms "
        f"{_ms(total_p):>7}{' ms' if total_p is not None else ''}"
    )
    offsets = [
        f"{names.get(n, n)} {o.offset * 1e3:+.2f} ms +/- {o.error * 1e3:.2f} ms"
        for n, o in timeline.offsets.items()
        if n != timeline.origin
    ]
    if offsets:
        lines.append("clock offsets: " + "; ".join(offsets))
    return lines
