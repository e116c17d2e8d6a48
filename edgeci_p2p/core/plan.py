"""Execution plans: which devices compute which regions of which unit ranges (pure).

A :class:`Plan` is an ordered chain of :class:`Stage` objects. Stage ``k`` runs the
unit range ``[start, stop)`` (boundaries as in :mod:`edgeci_p2p.core.geometry`)
and splits the map it produces at boundary ``stop`` into :class:`Part` objects,
each an output region (a full-width row strip or a 2-D tile) computed by one
device. A stage run wholly on one device is a single part covering the map.
The last map is always assembled on the auctioneer. The head (global pool +
classifier) runs there too, unless ``Plan.head_device`` names another device: the
auctioneer then sends that device the whole last map and gets the logits back
(a slow entry device, a camera say, would otherwise run VGG's 124M-weight
classifier itself). With ``Plan.fold_head`` the last stage's parts send, instead
of their rows, their product with VGG's fc1's matching columns, and the
auctioneer adds those up and runs the rest of the head.

How data moves between stages is explicit, per boundary, in ``Stage.transfer``
(how the stage's output leaves it) and ``Stage.schedule`` (how its inputs are
handed out):

* ``transfer="gather"``: every part's output goes to the auctioneer, which
  assembles the whole map; the next stage's parts get their input slabs
  (including halo rows) scattered from there. The last stage must gather,
  because the head needs the whole map on the auctioneer.
* ``transfer="halo"`` (strip-resident execution): every part's output stays on
  its device. Each part ``q`` of the next stage needs the input rows
  ``trace(spec, nxt.start, nxt.stop, q.region).need``; every part ``p`` of the
  halo stage holding some of them sends exactly those rows (full width) from
  ``p.device`` straight to ``q.device``, peer to peer (:func:`row_moves`); rows
  already on ``q.device`` do not move. With the same strip boundaries only the
  halo rows travel; where the boundaries differ between the two stages a peer
  also hands whole rows over to rebalance. So that the exchange stays a plain
  set of row moves, a halo stage and the stage after it are full-width row
  strips with at most one part per device, and push their inputs.

A *segment* (:func:`segments`) is a maximal run of stages linked by halo
boundaries: its first stage gets its input slabs from the auctioneer (stage 0
and every stage after a gathering stage do), its last stage gathers.

``schedule="push"`` scatters every input slab at the start of the stage (in part
order); ``schedule="pull"`` hands a device its next part's input only when it asks
for it (DeepThings' work stealing). Either way the assignment in the plan is
static: a pull planner records which device its work-stealing run gave each tile.

Devices are indices into ``Plan.devices`` (the testbed's device names, in order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeci_p2p.core.geometry import Region, Span, fold_flops, full_region, trace
from edgeci_p2p.core.units import ModelSpec

Transfer = Literal["gather", "halo"]
TRANSFERS: tuple[str, ...] = ("gather", "halo")
Schedule = Literal["push", "pull"]
SCHEDULES: tuple[str, ...] = ("push", "pull")


class PlanError(ValueError):
    """A plan breaks an invariant (the message names the stage and part)."""


@dataclass(frozen=True)
class Part:
    """One device's share of a stage: the output ``region`` it computes."""

    region: Region
    """Output region at the stage's ``stop`` boundary."""
    device: int
    """Index into ``Plan.devices``."""


@dataclass(frozen=True)
class Stage:
    """Units ``[start, stop)`` with their output split into parts."""

    start: int
    stop: int
    parts: tuple[Part, ...]
    transfer: Transfer = "gather"
    """How this stage's output reaches the next consumer (see the module docstring)."""
    schedule: Schedule = "push"
    """How input slabs are handed out: all at once (push) or on request (pull)."""

    @property
    def devices(self) -> tuple[int, ...]:
        """Distinct devices of this stage, in order of first appearance."""
        return tuple(dict.fromkeys(p.device for p in self.parts))

    @property
    def is_single(self) -> bool:
        return len(self.devices) == 1


@dataclass(frozen=True)
class Plan:
    """A whole inference: stages, then the head (on the auctioneer or ``head_device``)."""

    model: str
    strategy: str
    testbed: str
    devices: tuple[str, ...]
    stages: tuple[Stage, ...]
    auctioneer: int = 0
    """The device that holds the input, assembles gathered maps and runs the head."""
    predicted: float | None = None
    """The planner's own latency prediction in seconds (None when it has none)."""
    notes: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form planner facts (chosen parameters), kept in the dict form."""
    head_device: int | None = None
    """The device that runs the head on the last map, if not the auctioneer."""
    fold_head: bool = False
    """The head's first linear layer is folded into the last stage
    (:func:`~edgeci_p2p.core.geometry.fold_flops`): each of its parts sends the
    product of its rows with the matching columns instead of the rows, and the
    auctioneer sums them and runs the rest of the head. Needs the head on the
    auctioneer and a last stage of full-width row strips, one per device."""

    def folds_after(self, last: int) -> bool:
        """Whether the segment ending at stage ``last`` folds fc1 in (the last one, in a
        plan with ``fold_head``)."""
        return self.fold_head and last == len(self.stages) - 1

    @property
    def head_at(self) -> int:
        """The device that runs the head."""
        return self.auctioneer if self.head_device is None else self.head_device

    # ---- human-readable form ------------------------------------------------------------

    def __str__(self) -> str:
        pred = "" if self.predicted is None else f", predicted {self.predicted * 1e3:.1f} ms"
        lines = [
            f"{self.strategy} plan for {self.model} on {self.testbed}: "
            f"{len(self.stages)} stage(s){pred}"
        ]
        for st in self.stages:
            tiles = len({p.region.cols for p in st.parts}) > 1
            parts = " ".join(_part_str(p, self.devices, tiles) for p in st.parts)
            sched = "" if st.schedule == "push" else f" ({st.schedule})"
            lines.append(f"  units [{st.start:>2},{st.stop:>2}){sched}: {parts} -> {st.transfer}")
        via = "" if self.head_at == self.auctioneer else " (the last map sent there)"
        if self.fold_head:
            via = " (fc1 folded into the last strips: their partial sums sent there)"
        lines.append(f"  head @ {self.devices[self.head_at]}{via}")
        return "\n".join(lines)

    # ---- plain-dict form (CBOR / JSON) ---------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "strategy": self.strategy,
            "testbed": self.testbed,
            "devices": list(self.devices),
            "auctioneer": self.auctioneer,
            **({} if self.head_device is None else {"head_device": self.head_device}),
            **({"fold_head": True} if self.fold_head else {}),
            "predicted": self.predicted,
            "notes": dict(self.notes),
            "stages": [
                {
                    "start": st.start,
                    "stop": st.stop,
                    "transfer": st.transfer,
                    "schedule": st.schedule,
                    "parts": [
                        [
                            p.device,
                            p.region.rows.start,
                            p.region.rows.stop,
                            p.region.cols.start,
                            p.region.cols.stop,
                        ]
                        for p in st.parts
                    ],
                }
                for st in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        stages = []
        for s in d["stages"]:
            transfer, schedule = str(s.get("transfer", "gather")), str(s.get("schedule", "push"))
            if transfer not in TRANSFERS or schedule not in SCHEDULES:
                raise PlanError(f"unknown transfer {transfer!r} or schedule {schedule!r}")
            stages.append(
                Stage(
                    start=int(s["start"]),
                    stop=int(s["stop"]),
                    parts=tuple(
                        Part(Region(Span(int(r0), int(r1)), Span(int(c0), int(c1))), int(dev))
                        for dev, r0, r1, c0, c1 in s["parts"]
                    ),
                    transfer="halo" if transfer == "halo" else "gather",
                    schedule="pull" if schedule == "pull" else "push",
                )
            )
        pred = d.get("predicted")
        head = d.get("head_device")
        return cls(
            model=str(d["model"]),
            strategy=str(d["strategy"]),
            testbed=str(d["testbed"]),
            devices=tuple(str(x) for x in d["devices"]),
            stages=tuple(stages),
            auctioneer=int(d.get("auctioneer", 0)),
            predicted=None if pred is None else float(pred),
            notes=dict(d.get("notes", {})),
            head_device=None if head is None else int(head),
            fold_head=bool(d.get("fold_head", False)),
        )


def _part_str(p: Part, names: Sequence[str], tiles: bool) -> str:
    r = p.region
    where = f"{r.rows.start}:{r.rows.stop}"
    if tiles:
        where += f"x{r.cols.start}:{r.cols.stop}"
    return f"{where}@{names[p.device]}"


# ---- building helpers ------------------------------------------------------------------------


def single_stage(spec: ModelSpec, start: int, stop: int, device: int) -> Stage:
    """Units ``[start, stop)`` wholly on ``device``."""
    _, h, w = spec.shape_at(stop)
    return Stage(start, stop, (Part(full_region(h, w), device),))


def strip_stage(
    spec: ModelSpec, start: int, stop: int, cuts: Sequence[int], devices: Sequence[int]
) -> Stage:
    """Full-width row strips split at ``cuts`` (interior rows), strip k on ``devices[k]``."""
    _, h, w = spec.shape_at(stop)
    edges = [0, *cuts, h]
    if len(devices) != len(edges) - 1:
        raise PlanError(f"{len(edges) - 1} strips but {len(devices)} devices")
    parts = tuple(
        Part(Region(Span(a, b), Span(0, w)), d)
        for a, b, d in zip(edges, edges[1:], devices, strict=False)
        if b > a
    )
    return Stage(start, stop, parts)


# ---- the validator ---------------------------------------------------------------------------


def covers_exactly(regions: Sequence[Region], height: int, width: int) -> bool:
    """True when ``regions`` tile an ``height x width`` map exactly once.

    All inside, pairwise disjoint and areas summing to the map's area is the same
    as exact cover, and costs O(n^2) in the number of regions, not O(H*W).
    """
    whole = full_region(height, width)
    if any(r.area == 0 or not whole.contains(r) for r in regions):
        return False
    if sum(r.area for r in regions) != height * width:
        return False
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            if (
                a.rows.start < b.rows.stop
                and b.rows.start < a.rows.stop
                and a.cols.start < b.cols.stop
                and b.cols.start < a.cols.stop
            ):
                return False
    return True


def same_work(old: Plan | None, plan: Plan) -> bool:
    """Whether ``plan`` does what ``old`` does: it is ``old``, or ``old`` priced anew (a
    decision for moved bids answers with its remembered plan, its prediction replaced:
    a new object each request with the same stages, devices and head). A check of
    ``old`` holds for it."""
    if old is None:
        return False
    return old is plan or (
        old.stages is plan.stages
        and (old.model, old.devices, old.auctioneer, old.head_device, old.fold_head)
        == (plan.model, plan.devices, plan.auctioneer, plan.head_device, plan.fold_head)
    )


def validate(plan: Plan, spec: ModelSpec) -> None:
    """Raise :class:`PlanError` unless ``plan`` computes ``spec`` completely and consistently.

    Checks: the stages chain the unit ranges 0..n without gap or overlap; each
    stage's output is produced exactly once (its parts tile the output map);
    every device index exists; each stage's input is available where it is
    consumed (the auctioneer holds the whole input map at boundary 0 and after
    every gathering stage; after a halo stage the previous parts, which tile the
    map, hold it; each part's input slab lies inside the map); a halo stage and
    the stage after it are full-width row strips, one per device, pushed; the
    last stage gathers, so the head's input (the whole last map) is on the
    auctioneer.
    """
    n_dev = len(plan.devices)
    if plan.model != spec.name:
        raise PlanError(f"plan is for model {plan.model!r}, spec is {spec.name!r}")
    if not 0 <= plan.auctioneer < n_dev:
        raise PlanError(f"auctioneer index {plan.auctioneer} outside 0..{n_dev - 1}")
    if not 0 <= plan.head_at < n_dev:
        raise PlanError(f"head device index {plan.head_device} outside 0..{n_dev - 1}")
    if not plan.stages:
        raise PlanError("plan has no stages")
    expect = 0
    after_halo = False
    for k, st in enumerate(plan.stages):
        where = f"stage {k} (units [{st.start}, {st.stop}))"
        if st.start != expect:
            raise PlanError(f"{where} starts at boundary {st.start}, expected {expect}")
        if not st.start < st.stop <= spec.n_units:
            raise PlanError(f"{where} is empty or runs past unit {spec.n_units}")
        if st.transfer not in TRANSFERS:
            raise PlanError(f"{where}: unknown transfer {st.transfer!r}")
        if st.schedule not in SCHEDULES:
            raise PlanError(f"{where}: unknown schedule {st.schedule!r}")
        if not st.parts:
            raise PlanError(f"{where} has no parts")
        for p in st.parts:
            if not 0 <= p.device < n_dev:
                raise PlanError(f"{where}: part {p.region} on unknown device {p.device}")
        _, h, w = spec.shape_at(st.stop)
        if not covers_exactly([p.region for p in st.parts], h, w):
            raise PlanError(f"{where}: parts do not produce the {h}x{w} output exactly once")
        if st.transfer == "halo" and k == len(plan.stages) - 1:
            raise PlanError(
                f"{where} is the last stage but keeps its output on the peers (halo); "
                "the last stage must gather: the head needs the whole map on the auctioneer"
            )
        if st.transfer == "halo" or after_halo:
            _check_resident(st, w, where, "halo stage" if st.transfer == "halo" else "stage")
        if spec.units[st.start].needs_scale and (after_halo or st.transfer == "halo"):
            # A synchronisation point: the auctioneer makes the scale vector from the
            # whole map at this boundary and sends it with the slabs (tile requests).
            raise PlanError(
                f"{where} starts with a squeeze-and-excitation scale: boundary {st.start} "
                "must gather, and a halo segment may not start there"
            )
        _, hi, wi = spec.shape_at(st.start)
        whole_in = full_region(hi, wi)
        for p in st.parts:
            need = trace(spec, st.start, st.stop, p.region).need
            if not whole_in.contains(need):
                raise PlanError(f"{where}: part {p.region} needs {need}, outside the input map")
        after_halo = st.transfer == "halo"
        expect = st.stop
    if expect != spec.n_units:
        raise PlanError(f"stages end at boundary {expect}, the model has {spec.n_units} units")
    if plan.fold_head:
        why = why_not_fold(plan, spec)
        if why is not None:
            raise PlanError(f"the head is folded into the last stage, but {why}")


def why_not_fold(plan: Plan, spec: ModelSpec) -> str | None:
    """Why the head's first linear layer cannot be folded into ``plan``'s last stage
    (:attr:`Plan.fold_head`), or None when it can."""
    if fold_flops(spec) == 0:
        return f"{spec.name}'s head does not flatten the last map straight into a linear layer"
    if plan.head_at != plan.auctioneer:
        return "the head runs on another device than the auctioneer"
    last = plan.stages[-1]
    _, _, w = spec.shape_at(last.stop)
    if any(p.region.cols != Span(0, w) for p in last.parts) or len(last.devices) != len(last.parts):
        return "the last stage is not full-width row strips, one per device"
    if last.schedule != "push":
        return "the last stage pulls its inputs"
    return None


def _check_resident(st: Stage, width: int, where: str, what: str) -> None:
    """A stage on either side of a halo boundary: full-width strips, one per device, push."""
    why = f"{what} on a halo boundary" if what == "stage" else what
    for p in st.parts:
        if p.region.cols != Span(0, width):
            raise PlanError(
                f"{where}: part {p.region} is not a full-width row strip; a {why} "
                "must be split into full-width row strips"
            )
    if len(st.devices) != len(st.parts):
        dup = next(d for d in st.devices if sum(p.device == d for p in st.parts) > 1)
        raise PlanError(
            f"{where}: device {dup} holds more than one part; a {why} allows one part per device"
        )
    if st.schedule != "push":
        raise PlanError(f"{where}: a {why} must push its inputs (schedule {st.schedule!r})")


# ---- strip-resident execution: the row moves of a halo boundary ---------------------------------


@dataclass(frozen=True)
class RowMove:
    """Rows ``rows`` (full width) of the map at ``boundary``, sent from device ``src``
    to ``dst``."""

    src: int
    dst: int
    boundary: int
    rows: Span


def moves_between(
    prev: Sequence[Part], nxt: Sequence[Part], needs: Sequence[tuple[int, int]], boundary: int
) -> tuple[RowMove, ...]:
    """:func:`row_moves` given each next part's needed rows ``needs[k] = (lo, hi)``.

    The planner and the simulator pass rows from their fast tables; the result is
    the same as :func:`row_moves` (tests check it).
    """
    out: list[RowMove] = []
    for q, (lo, hi) in zip(nxt, needs, strict=True):
        for p in prev:
            if p.device == q.device:
                continue
            a = max(lo, p.region.rows.start)
            b = min(hi, p.region.rows.stop)
            if b > a:
                out.append(RowMove(p.device, q.device, boundary, Span(a, b)))
    out.sort(key=lambda m: (m.dst, m.rows.start))
    return tuple(out)


def row_moves(spec: ModelSpec, prev: Stage, nxt: Stage) -> tuple[RowMove, ...]:
    """The transfers of a halo boundary (prev.transfer == "halo"), src != dst, sorted by
    (dst, rows.start).

    For each part ``q`` of ``nxt``, every part ``p`` of ``prev`` on another device
    sends ``p.region.rows`` intersected with the rows ``q`` needs. One part per
    device on each side (what :func:`validate` demands) makes it one move per pair.
    """
    if prev.stop != nxt.start:
        raise PlanError(
            f"stages [{prev.start},{prev.stop}) and [{nxt.start},{nxt.stop}) do not chain"
        )
    needs = []
    for q in nxt.parts:
        need = trace(spec, nxt.start, nxt.stop, q.region).need.rows
        needs.append((need.start, need.stop))
    return moves_between(prev.parts, nxt.parts, needs, nxt.start)


def segments(plan: Plan) -> tuple[tuple[int, int], ...]:
    """Maximal runs [first, last] (inclusive stage indices) linked by halo boundaries; a
    gather-only plan gives ((0,0),(1,1),...)."""
    out: list[tuple[int, int]] = []
    first = 0
    for k, st in enumerate(plan.stages):
        if st.transfer != "halo" or k == len(plan.stages) - 1:
            out.append((first, k))
            first = k + 1
    return tuple(out)
