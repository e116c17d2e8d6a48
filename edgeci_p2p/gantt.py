"""Gantt charts (matplotlib, Agg backend). ``draw_gantt``: a simulated plan, one band per
device with three lanes (compute, send, receive); stage boundaries as dotted lines.
``draw_timeline``: a traced request's measured timeline per node over its plan's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import SimResult
from edgeci_p2p.core.timeline import Timeline

LANES = ("compute", "send", "recv")
COLOURS = {"compute": "#2b7bba", "send": "#e6862e", "recv": "#52a852"}


def draw_gantt(plan: Plan, result: SimResult, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(plan.devices)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.9 * n), dpi=110)
    scale = 1e3  # ms
    yticks, ylabels = [], []
    for d in range(n):
        base = (n - 1 - d) * 4
        for k, lane in enumerate(LANES):
            y = base + 2 - k
            spans = [
                (e.start * scale, (e.stop - e.start) * scale)
                for e in result.events
                if e.device == d and e.lane == lane and e.stop > e.start
            ]
            if spans:
                ax.broken_barh(
                    spans,
                    (y - 0.4, 0.8),
                    facecolors=COLOURS[lane],
                    edgecolor="white",
                    linewidth=0.6,
                )
        name = plan.devices[d] + (" (auctioneer)" if d == plan.auctioneer else "")
        yticks.append(base + 1)
        ylabels.append(name)
    for t in result.stage_ends:
        ax.axvline(t * scale, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yticks(yticks, ylabels)
    ax.set_xlabel("time (ms)")
    ax.set_xlim(0, result.latency * scale * 1.01)
    ax.set_ylim(-1, 4 * n - 0.5)
    ax.set_title(
        loc="right",
        label=title
        or f"{plan.model} on {plan.testbed}, {plan.strategy}: {result.latency * scale:.0f} ms, "
        f"{len(plan.stages)} stages, {result.bytes_moved / 1e6:.1f} MB moved",
    )
    ax.legend(
        handles=[Patch(color=COLOURS[k], label=k) for k in LANES],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        fontsize=8,
        ncol=3,
        frameon=False,
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


# ---- a measured request timeline over its plan ----------------------------------------------

ROWS = ("compute", "link", "wait", "control")
"""A node's rows in a timeline chart: its CPU, its link (send and receive), waiting,
and bookkeeping (cut, stitch, the auction...)."""
ROW_OF_LANE = {"compute": "compute", "send": "link", "recv": "link", "wait": "wait"}
NAME_COLOURS = {
    "compute": COLOURS["compute"],
    "strip": COLOURS["compute"],
    "head": "#173f6e",
    "decode": "#8c6d31",
    "send": COLOURS["send"],
    "recv": COLOURS["recv"],
    "queue": "#d4a017",
    "wait": "#b8b8b8",
    "halo-wait": "#d77fb3",
    "auction": "#7b4fa0",
}
CONTROL_COLOUR = "#5f5f5f"
"""Cut, stitch, counting zeros, the result: the entry peer's bookkeeping."""


def _colour(name: str, lane: str) -> str:
    return NAME_COLOURS.get(name, COLOURS.get(lane, CONTROL_COLOUR))


def draw_timeline(
    timeline: Timeline,
    path: str | Path,
    names: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """A traced request's measured timeline, per node, over its plan's (the planner's
    Gantt style): for each node a row per kind of step (compute, link, wait, control),
    the plan's predicted steps as faint wide bars, the measured ones solid over them;
    stage ends measured (dotted) and predicted (dashed); when the plan began and ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = names or {}
    nodes = timeline.nodes
    n = max(1, len(nodes))
    band = len(ROWS) + 1
    scale = 1e3  # ms
    fig, ax = plt.subplots(figsize=(12, 1.6 + 1.15 * n), dpi=110)
    row_y: dict[tuple[str, str], float] = {}
    major, major_labels, minor, minor_labels = [], [], [], []
    for i, node in enumerate(nodes):
        base = (n - 1 - i) * band
        for k, row in enumerate(ROWS):
            row_y[(node, row)] = base + len(ROWS) - 1 - k
            minor.append(base + len(ROWS) - 1 - k)
            minor_labels.append(row)
        label = names.get(node, node)
        if node == timeline.origin:
            label += "\n(auctioneer)"
        elif node in timeline.offsets:
            label += f"\n(clock +/- {timeline.offsets[node].error * scale:.2f} ms)"
        major.append(base + (len(ROWS) - 1) / 2)
        major_labels.append(label)
        if i:
            ax.axhline(base + len(ROWS) - 0.3, color="#dddddd", linewidth=0.8)
    # The plan: faint, wide, behind.
    for s in timeline.predicted_spans():
        y = row_y.get((s.node, ROW_OF_LANE.get(s.lane, "control")))
        if y is not None and s.stop > s.start:
            colour = _colour(s.name, s.lane)
            ax.broken_barh(
                [(s.start * scale, s.seconds * scale)],
                (y - 0.42, 0.84),
                facecolors=to_rgba(colour, 0.22),
                edgecolor="white",  # consecutive predicted stages stay apart
                linewidth=1.0,
            )
    # What was measured: solid, narrower, in front.
    seen: dict[str, str] = {}
    for s in timeline.spans:
        row = ROW_OF_LANE.get(s.lane, "control")
        colour = _colour(s.name, s.lane)
        seen.setdefault(s.name if s.name in NAME_COLOURS else "control", colour)
        ax.broken_barh(
            [(s.start * scale, max(s.seconds, 0.0) * scale)],
            (row_y[(s.node, row)] - 0.27, 0.54),
            facecolors=colour,
            edgecolor="white",
            linewidth=0.3,
        )
    top = n * band - 1
    measured_ends: dict[int, float] = {}
    predicted_ends: dict[int, float] = {}
    for s in timeline.spans:
        if s.stage is None:
            continue
        if s.node == timeline.origin:
            measured_ends[s.stage] = max(measured_ends.get(s.stage, 0.0), s.stop)
        if s.predicted is not None:
            predicted_ends[s.stage] = max(predicted_ends.get(s.stage, 0.0), s.predicted[1])
    for stage, t in sorted(measured_ends.items()):
        ax.axvline(t * scale, color="grey", linestyle=":", linewidth=0.8)
        ax.text(t * scale, top - 0.35, f"s{stage}", fontsize=6, color="grey", ha="right")
    for t in predicted_ends.values():
        ax.axvline(t * scale, color="#9ecae1", linestyle="--", linewidth=0.6)
    pred = [s.predicted for s in timeline.spans if s.predicted is not None]
    xmax = timeline.end
    if pred:
        p0, p1 = min(a for a, _ in pred), max(b for _, b in pred)
        ax.axvline(p0 * scale, color="black", linewidth=0.8)
        ax.axvline(p1 * scale, color="#c0392b", linestyle="--", linewidth=1.0)
        xmax = max(xmax, p1)
    ax.axvline(timeline.end * scale, color="#c0392b", linewidth=1.0)
    ax.set_yticks(major, major_labels)
    ax.set_yticks(minor, minor_labels, minor=True)
    ax.tick_params(axis="y", which="major", pad=46, length=0, labelsize=8)
    ax.tick_params(axis="y", which="minor", labelsize=6, length=2)
    ax.set_xlabel("time since the request arrived (ms)")
    ax.set_xlim(0, xmax * scale * 1.01)
    ax.set_ylim(-0.8, top + 0.2)
    handles: list[Patch | Line2D] = [Patch(color=c, label=k) for k, c in seen.items()]
    handles += [
        Patch(facecolor=to_rgba(COLOURS["compute"], 0.22), label="predicted (plan)"),
        Line2D([], [], color="grey", linestyle=":", label="stage end"),
        Line2D([], [], color="#9ecae1", linestyle="--", label="predicted stage end"),
        Line2D([], [], color="black", label="plan starts"),
        Line2D([], [], color="#c0392b", linestyle="--", label="predicted end"),
        Line2D([], [], color="#c0392b", label="measured end"),
    ]
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        fontsize=7,
        ncol=min(8, len(handles)),
        frameon=False,
    )
    if title is None:
        title = f"measured {timeline.end * scale:.0f} ms"
        if pred:
            title += (
                f"; from the plan's start {(timeline.end - p0) * scale:.0f} ms, "
                f"predicted {(p1 - p0) * scale:.0f} ms"
            )
    fig.suptitle(title, x=0.99, ha="right", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
