"""Gantt chart of a simulated plan (matplotlib, Agg backend): one band per device with
three lanes (compute, send, receive); stage boundaries as dotted lines."""

from __future__ import annotations

from pathlib import Path

from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.sim import SimResult

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
