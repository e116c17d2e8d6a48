"""End-to-end benchmark on an emulated edge cluster: real peers, real sockets, shaped links.

As root, builds the cluster of benchmarks/emulation.py for a testbed (default
``emulated-4``: CPU quotas 0.6/0.4/0.3/0.2 of a core, 100 mbit links; below 8 cores
in the headroom layout, the same ratios within half the machine, which on 2 cores is
``emulated-4-headroom``: 0.4/0.2667/0.2/0.1333; CFS period 10 ms), starts one
``edgeci-peer`` per namespace (one torch thread, mDNS inside the namespaces, its
own state dir and profile cache so that each peer profiles itself under its own
CPU cap), and from inside the auctioneer's namespace sends K requests per
strategy and model through the client API. Peer 0, the entry peer and so the
auctioneer, is the fastest device; ``local`` there is the best single device.

Without root (or namespaces, tc, a cgroup v1 or v2 cpu controller) it says so and
runs the same peers on 127.0.0.1 without shaping or CPU caps; the results are marked
unshaped. ``--homogeneous N`` runs N uncapped peers instead, each pinned to a core of
its own (refused unless the machine has N + 1 cores).

After the cluster is torn down, the same invocation measures the compute ceiling of
the same layout (benchmarks/compute_ceiling.py: the same cgroups, period and pinning,
no network) for each model, and reports each strategy's efficiency as a fraction of
it (``ceiling_efficiency``; ``--no-ceiling`` skips it). With ``--traces DIR`` it then
replays, per model, the plan of the last traced request of the best of our strategies
(where it distributed) in the same cgroups with no network (benchmarks/plan_ceiling.py):
what that plan's own compute allows, so that the gap from the ceiling to the measured
efficiency splits into the plan's share and the runtime's (``plan_ceiling``).

    sudo .venv/bin/python benchmarks/cluster.py [--quick] [--k 10] [--json]
        [--testbed emulated-4] [--layout headroom|testbed] [--homogeneous N]
        [--cfs-period-ms 10] [--cgroup auto|v1|v2] [--no-ceiling]
        [--models vgg16,resnet34] [--strategies ...]
        [--chart docs/cluster-benchmark.png] [--unshaped] [--cleanup]
        [--transport tls|plaintext|tls,plaintext] [--profile-loops DIR]

``--transport tls,plaintext`` starts a second set of the same peers with
``--plaintext`` beside the TLS ones (same namespaces and cgroups, the next port,
static peers instead of mDNS so that the two never dial each other) and the client
interleaves requests to both; the report adds TLS / plaintext median ratios.

Table on stdout, progress on stderr, ``--json`` adds a last line
``{"rows": [{"model", "strategy", "median_ms", "speedup", "efficiency", "bytes",
"prediction_error", "ceiling_efficiency", "transport"}], "ceiling": {model: ...},
"tls_over_plaintext": [...], ...}``;
``bytes`` is the median per request through the auctioneer's own link (for
``edgeci-halo`` the halo rows peers send each other directly are not in it; the
auctioneer's own strip's halo rows are). The cluster is
always torn down (try/finally, SIGTERM/SIGHUP, atexit) and the run ends by checking
that nothing remains.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compute_ceiling import ceiling, layout_shares
from emulation import (
    DEFAULT_PERIOD_US,
    PREFIXES,
    Emulation,
    Layout,
    PeerSlot,
    SystemHost,
    Terminated,
    can_emulate,
    detect_cgroup,
    machine_cores,
    make_layout,
)
from free_loops import FreeLoops, FreePlanner
from peer_cpu import charge, cpu_table, read_peers, where_the_cpu_went
from plan_bound import summary as bound_summary
from plan_bound import trace_bounds
from plan_ceiling import replay

from edgeci_p2p import planners
from edgeci_p2p.aio.loop_profile import ENV as LOOP_PROFILE_ENV
from edgeci_p2p.core.cost import Testbed
from edgeci_p2p.planners.testbeds import load_testbed

STRATEGIES = ("edgeci", "edgeci-halo", "aofl", "edgeld", "modnn", "deepthings", "local")
"""Every strategy, in the table's order: ours first, then the baselines."""
if sorted(STRATEGIES) != sorted(planners.STRATEGIES):
    raise RuntimeError(f"STRATEGIES {STRATEGIES} is not an order of {planners.STRATEGIES}")
ISSUE_SHARES = (0.6, 0.4, 0.3, 0.2)
PEER_PORT = 7420
TRANSPORTS = ("tls", "plaintext")
"""TLS 1.3 (the default), or ``--plaintext`` at every peer and the client."""
ENTRY_FLAG = {"tls": "--peer", "plaintext": "--plaintext-peer"}
"""benchmarks/cluster_client.py's option for each transport's entry peer."""
HERE = Path(__file__).resolve().parent
CLIENT = HERE / "cluster_client.py"
PROBE_PORT = 7499


@dataclass(frozen=True)
class Row:
    model: str
    strategy: str
    median_ms: float
    speedup: float | None
    efficiency: float | None
    bytes: float
    prediction_error: float | None
    ceiling_efficiency: float | None = None
    """efficiency / the compute ceiling's efficiency measured in the same invocation."""
    transport: str = "tls"


def transport_of(x: dict[str, Any]) -> str:
    """A result's or diagnostic's transport (records from before ``--transport``: TLS)."""
    return str(x.get("transport", "tls"))


def arm(x: dict[str, Any]) -> tuple[str, str, str]:
    """What a result measured: model, strategy, transport."""
    return x["model"], x["strategy"], transport_of(x)


def label(strategy: str, transport: str) -> str:
    """A strategy's name in text, its transport added unless TLS."""
    return strategy if transport == "tls" else f"{strategy} ({transport})"


def testbed_shares(testbed: Testbed) -> list[float] | None:
    """CPU shares from device names like ``peer0-60pct``; None when a name has none."""
    shares = []
    for d in testbed.devices:
        m = re.search(r"(\d+(?:\.\d+)?)pct", d.name)
        if m is None:
            return None
        shares.append(float(m.group(1)) / 100)
    return shares


def testbed_rate_mbit(testbed: Testbed) -> float:
    """The tbf rate for the testbed's links. tbf at 100 mbit gives 11.5 MB/s here, so a
    link of ~11.5 MB/s is emulated at 100 mbit; others in proportion."""
    bw = max(link.bandwidth for link in testbed.links)
    return round(bw / 11.5e6 * 100, 1)


def exec_seconds(r: dict[str, Any]) -> float:
    """The time the plan itself took on the auctioneer: total minus the auction (bid round,
    planning, awards): what ``plan["predicted"]`` predicts."""
    return float(r["total_s"]) - float(r["auction_s"])


def summarise(
    results: Sequence[dict[str, Any]], ideal: float, baseline: str = "local"
) -> list[Row]:
    """Per (model, strategy, transport): medians; speedup over ``baseline`` on the same
    model and transport."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(arm(r), []).append(r)
    base = {
        (model, transport): statistics.median(x["latency_s"] for x in rs)
        for (model, strategy, transport), rs in groups.items()
        if strategy == baseline
    }
    rows = []
    for (model, strategy, transport), rs in groups.items():
        med = statistics.median(x["latency_s"] for x in rs)
        errors = [
            abs(float(x["predicted_s"]) - exec_seconds(x)) / exec_seconds(x)
            for x in rs
            if x.get("predicted_s") is not None and exec_seconds(x) > 0
        ]
        b = base.get((model, transport))
        speedup = None if b is None else b / med
        rows.append(
            Row(
                model,
                strategy,
                round(med * 1e3, 1),
                None if speedup is None else round(speedup, 3),
                None if speedup is None else round(speedup / ideal, 3),
                statistics.median(float(x["bytes"]) for x in rs),
                round(statistics.median(errors), 3) if errors else None,
                transport=transport,
            )
        )
    return rows


def with_ceiling(rows: Sequence[Row], ceilings: dict[str, dict[str, Any]]) -> list[Row]:
    """Each row's efficiency as a fraction of its model's compute ceiling (the best
    efficiency the CPUs reached with no network, same layout, same invocation)."""
    out = []
    for r in rows:
        c = ceilings.get(r.model, {}).get("ceiling")
        frac = None if c is None or r.efficiency is None else round(r.efficiency / c, 3)
        out.append(replace(r, ceiling_efficiency=frac))
    return out


def best_of_ours(rows: Sequence[Row], model: str) -> Row | None:
    """The fastest of our strategies (``edgeci*``) for ``model``, if any ran."""
    ours = [r for r in rows if r.model == model and r.strategy.startswith("edgeci")]
    return min(ours, key=lambda r: r.median_ms) if ours else None


def closing_note(
    rows: Sequence[Row],
    diag: Sequence[dict[str, Any]],
    ceilings: dict[str, dict[str, Any]],
    plans: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Per model: the compute ceiling, the fastest strategy, the best of ours (edgeci*)
    with its efficiency, fraction of the ceiling and prediction error, and whether its
    quartiles overlap those of the best baseline (rows of one transport); then what its
    last plan's compute allowed, replayed with no network (``plans``, per model)."""
    d = {arm(x): x for x in diag}
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        c = ceilings.get(model)
        if c is not None:
            modes = ", ".join(f"{m} {v['efficiency']:.2f}" for m, v in c["modes"].items())
            lines.append(
                f"{model}: compute ceiling (same run, K={c['k']}, fastest peer alone "
                f"{c['local_ms']:.0f} ms): {modes}; ceiling {c['ceiling']:.2f} "
                f"({c['ceiling_mode']})"
            )
        rs = [r for r in rows if r.model == model]
        fastest = min(rs, key=lambda r: r.median_ms)
        theirs = [r for r in rs if not r.strategy.startswith("edgeci") and r.strategy != "local"]
        best = best_of_ours(rs, model)
        if best is None:
            continue
        text = (
            f"{model}: fastest {fastest.strategy} {fastest.median_ms:.0f} ms; ours best "
            f"{best.strategy} {best.median_ms:.0f} ms, efficiency {_fmt(best.efficiency, '.2f')}"
        )
        if best.ceiling_efficiency is not None:
            text += f" = {best.ceiling_efficiency:.2f} of the ceiling"
        if best.prediction_error is not None:
            text += f", prediction error {best.prediction_error:.1%}"
        mine = d.get((model, best.strategy, best.transport), {})
        if len(mine.get("devices") or []) <= 1 and mine.get("decision"):
            text += f"; it ran on one peer ({mine['decision']})"
        if theirs:
            rival = min(theirs, key=lambda r: r.median_ms)
            a = d[(model, best.strategy, best.transport)]
            b = d[(model, rival.strategy, rival.transport)]
            apart = a["p75_ms"] < b["p25_ms"] or b["p75_ms"] < a["p25_ms"]
            text += (
                f"; best baseline {rival.strategy} {rival.median_ms:.0f} ms, quartiles "
                f"{'apart' if apart else 'overlap'} ({a['p25_ms']:.0f}-{a['p75_ms']:.0f} vs "
                f"{b['p25_ms']:.0f}-{b['p75_ms']:.0f})"
            )
        lines.append(text)
        replayed = (plans or {}).get(model)
        if replayed is not None and best.efficiency is not None:
            lines.append(
                f"{model}: {replayed['strategy']}'s last plan replayed with no network in the "
                f"same cgroups (benchmarks/plan_ceiling.py, K={replayed['k']}): "
                f"{replayed['plan_ms']:.0f} ms against {replayed['alone_ms']:.0f} ms alone, "
                f"efficiency {replayed['efficiency']:.2f}: of the way from the ceiling to the "
                f"measured {best.efficiency:.2f}, the plan's compute is "
                f"{_share_of_gap(ceilings.get(model), replayed, best.efficiency)}, "
                "the runtime (loops, messages, waits for rows in flight) the rest"
            )
    return lines


def _share_of_gap(ceiling: dict[str, Any] | None, replayed: dict[str, Any], measured: float) -> str:
    """How much of the efficiency lost from the compute ceiling to ``measured`` the
    replayed plan already loses ("?" without a ceiling)."""
    if ceiling is None or ceiling["ceiling"] <= measured:
        return "?"
    share = (ceiling["ceiling"] - replayed["efficiency"]) / (ceiling["ceiling"] - measured)
    return f"{min(max(share, 0.0), 1.0):.0%}"


def transport_ratios(diag: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and strategy measured over both transports: the TLS median over the
    plaintext one (issue 20 asks for at most 1.05), with each arm's quartiles."""
    d = {arm(x): x for x in diag}
    out = []
    for (model, strategy, transport), tls in d.items():
        plain = d.get((model, strategy, "plaintext"))
        if transport != "tls" or plain is None:
            continue
        out.append(
            {
                "model": model,
                "strategy": strategy,
                "n": min(tls["n"], plain["n"]),
                **{f"tls_{k}": tls[k] for k in ("latency_ms", "p25_ms", "p75_ms")},
                **{f"plaintext_{k}": plain[k] for k in ("latency_ms", "p25_ms", "p75_ms")},
                "ratio": round(tls["latency_ms"] / plain["latency_ms"], 4),
            }
        )
    return out


def ratio_lines(ratios: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"TLS / plaintext, {r['model']} {r['strategy']} (K={r['n']}): "
        f"{r['tls_latency_ms']:.1f} ms ({r['tls_p25_ms']:.0f}-{r['tls_p75_ms']:.0f}) / "
        f"{r['plaintext_latency_ms']:.1f} ms "
        f"({r['plaintext_p25_ms']:.0f}-{r['plaintext_p75_ms']:.0f}) = {r['ratio']:.3f} "
        f"(target <= 1.05)"
        for r in ratios
    ]


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """25th and 75th percentile (inclusive method; both equal the value when n = 1).

    Under CFS quotas the same plan's latency spreads by a third from one request to the
    next, so two medians closer than this spread do not rank two strategies."""
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def diagnostics(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the time went, per (model, strategy, transport): medians of the daemon's
    timing, and the latency's quartiles."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(arm(r), []).append(r)
    out = []
    for (model, strategy, transport), rs in groups.items():

        def med(f: Any, rs: list[dict[str, Any]] = rs) -> float | None:
            values = [v for v in map(f, rs) if v is not None]
            return round(statistics.median(values) * 1e3, 1) if values else None

        p25, p75 = quartiles([float(x["latency_s"]) for x in rs])
        out.append(
            {
                "model": model,
                "strategy": strategy,
                "transport": transport,
                "n": len(rs),
                "latency_ms": med(lambda x: x["latency_s"]),
                "p25_ms": round(p25 * 1e3, 1),
                "p75_ms": round(p75 * 1e3, 1),
                "auction_ms": med(lambda x: x["auction_s"]),
                "exec_ms": med(exec_seconds),
                "predicted_ms": med(lambda x: x["predicted_s"]),
                "transfer_ms": med(lambda x: x["transfer_s"]),
                "head_ms": med(lambda x: x["head_s"]),
                "devices": rs[-1]["devices"],
                "stages": rs[-1]["stages"],
                "decision": _most_common([x.get("decision") for x in rs]),
                "older_plans": plan_ages(rs),
            }
        )
    return out


_PLAN_ROUND = re.compile(r" on (bids:[0-9a-f]+)")


def plan_round(r: dict[str, Any]) -> tuple[str | None, str | None]:
    """The round whose bids a request's plan was made for (from its text) and the
    request's own round (its testbed's name); None where a record has no such names.

    A round whose bids moved only in speed runs the plan at hand, repriced, while the
    new one is made off the requests' path: on another peer (``aio/plan_peers.py``), or
    in the auctioneer's own planning child (``auction/aside.py``), which waits up to
    30 s for the daemon to fall idle."""
    m = _PLAN_ROUND.search(str(r.get("plan_text") or ""))
    believed = r.get("believed")
    own = believed.get("name") if isinstance(believed, dict) else None
    return (m.group(1) if m else None), (own if isinstance(own, str) else None)


def plan_ages(rs: Sequence[dict[str, Any]]) -> tuple[int, int, int]:
    """(requests whose plan was made for an earlier round's bids, requests with both
    names, distinct plans among them)."""
    pairs = [plan_round(r) for r in rs]
    known = [(made, own) for made, own in pairs if made is not None and own is not None]
    return sum(made != own for made, own in known), len(known), len({m for m, _ in known})


def plan_age_lines(diag: Sequence[dict[str, Any]]) -> list[str]:
    """One line per distributed arm whose requests ran plans made for earlier rounds."""
    out = []
    for x in diag:
        older, known, plans = x.get("older_plans") or (0, 0, 0)
        if known and older and len(x["devices"]) > 1:
            out.append(
                f"{x['model']} {label(x['strategy'], x['transport'])}: {older} of {known} "
                f"requests ran a plan made for an earlier round's bids ({plans} plan(s) "
                "in all; each new one is made off the requests' path, on a peer or when "
                "this one idles)"
            )
    return out


def _most_common(values: Sequence[Any]) -> Any:
    """The value most requests of a group share (None when none has one)."""
    present = [v for v in values if v is not None]
    return max(dict.fromkeys(present), key=present.count) if present else None


def where_the_time_went(
    results: Sequence[dict[str, Any]],
) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """From traced results (``--traces``): per model and strategy, per category of
    ``core/explain`` (compute, transfer, waiting, event loop, planning, head...), the
    median milliseconds on the critical path, measured and as the plan predicted
    (strategies of a transport other than TLS are named with it: ``label``)."""
    from edgeci_p2p.core.explain import CATEGORIES

    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("where"):
            key = (r["model"], label(r["strategy"], transport_of(r)))
            groups.setdefault(key, []).append(r["where"])
    for (model, strategy), wheres in groups.items():
        cats: dict[str, list[float | None]] = {}
        for c in CATEGORIES:
            meas = [w[c][0] for w in wheres if c in w]
            pred = [w[c][1] for w in wheres if c in w and w[c][1] is not None]
            cats[c] = [
                round(statistics.median(meas) * 1e3, 1) if meas else None,
                round(statistics.median(pred) * 1e3, 1) if pred else None,
            ]
        out.setdefault(model, {})[strategy] = cats
    return out


def time_table(where: dict[str, dict[str, dict[str, list[float | None]]]]) -> str:
    """The ``where_the_time_went`` medians as text: measured / predicted ms."""
    from edgeci_p2p.core.explain import CATEGORIES

    head = f"{'model':<9} {'strategy':<11} " + " ".join(f"{c[:10]:>13}" for c in CATEGORIES)
    lines = ["where the time went (critical path, median ms: measured/predicted)", head]
    for model, per in where.items():
        for strategy, cats in per.items():
            cells = []
            for c in CATEGORIES:
                m, p = cats[c]
                cells.append(f"{_fmt(m, '.0f')}/{_fmt(p, '.0f')}".rjust(13))
            lines.append(f"{model:<9} {strategy:<11} " + " ".join(cells))
    return "\n".join(lines)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[Row], diag: Sequence[dict[str, Any]], shaped: bool) -> str:
    # A transport column only where a row is not TLS (--transport).
    tcol = any(r.transport != "tls" for r in rows)
    head = (
        f"{'model':<9} {'strategy':<11} {'transport':<9} "[: 22 + 10 * tcol]
        + f"{'median ms':>10} {'p25-p75 ms':>13} {'speedup':>8} "
        f"{'effic.':>7} {'of ceil':>7} "
        f"{'MB@auct':>8} {'pred.err':>8} | {'exec ms':>8} {'pred ms':>8} {'auction':>8} "
        f"{'devices':<10}"
    )
    lines = [head, "-" * len(head)]
    d = {arm(x): x for x in diag}
    for r in rows:
        x = d[(r.model, r.strategy, r.transport)]
        lines.append(
            f"{r.model:<9} {r.strategy:<11} "
            + (f"{r.transport:<9} " if tcol else "")
            + f"{r.median_ms:>10.1f} "
            f"{x['p25_ms']:>6.0f}-{x['p75_ms']:<6.0f} {_fmt(r.speedup, '.2f'):>8} "
            f"{_fmt(r.efficiency, '.2f'):>7} {_fmt(r.ceiling_efficiency, '.2f'):>7} "
            f"{r.bytes / 1e6:>8.2f} "
            f"{_fmt(r.prediction_error, '.1%'):>8} | {x['exec_ms']:>8.1f} "
            f"{_fmt(x['predicted_ms'], '.1f'):>8} {x['auction_ms']:>8.1f} "
            f"{','.join(map(str, x['devices'])):<10}"
        )
    if not shaped:
        lines.append("UNSHAPED: plain loopback, no tbf links, no CPU caps")
    return "\n".join(lines)


def chart(rows: Sequence[Row], diag: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    d = {arm(x): x for x in diag}
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rs = [r for r in rows if r.model == model]
        xs = range(len(rs))
        meas = [r.median_ms for r in rs]
        ds = [d[(r.model, r.strategy, r.transport)] for r in rs]
        pred = [x["predicted_ms"] or float("nan") for x in ds]
        colors = ["tab:green" if r.strategy.startswith("edgeci") else "tab:blue" for r in rs]
        spread = [
            [m - x["p25_ms"] for m, x in zip(meas, ds, strict=True)],
            [x["p75_ms"] - m for m, x in zip(meas, ds, strict=True)],
        ]
        ax.bar(
            xs,
            meas,
            color=colors,
            yerr=spread,
            error_kw={"elinewidth": 0.8, "capsize": 3},
            label="measured median (client), p25-p75",
        )
        # The share of the bar spent before any tile runs: bid round, planning, awards.
        over = [x["auction_ms"] for x in ds]
        ax.bar(
            xs,
            over,
            bottom=[m - o for m, o in zip(meas, over, strict=True)],
            color="none",
            edgecolor="black",
            linewidth=0.5,
            hatch="//",
            label="of which auction (bids + plan)",
        )
        ax.scatter(xs, pred, color="black", marker="_", s=400, zorder=3, label="predicted")
        for i, r in zip(xs, rs, strict=True):
            if r.speedup is not None:
                ax.annotate(
                    f"{r.speedup:.2f}x",
                    (i, max(r.median_ms, ds[i]["p75_ms"])),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(list(xs), [label(r.strategy, r.transport) for r in rs])
        ax.set_yscale("log")
        # Log-scale bars start at the axis bottom: keep it well below the shortest bar.
        low = min([m - o for m, o in zip(meas, over, strict=True) if m > o] + meas)
        ax.set_ylim(low * 0.5, max(meas) * 1.4)
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """One run: start peers in the emulation, drive the measuring client, collect results."""

    def __init__(self, args: argparse.Namespace, layout: Layout, emu: Emulation) -> None:
        self.args = args
        self.layout = layout
        self.emu = emu
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeci-bench-"))
        self.key_file = self.workdir / "cluster.key"
        self.key_file.write_text(secrets.token_hex(16))
        netns = layout.netns
        self.transports = transports(args.transport)
        # TLS peers on PEER_PORT, --plaintext ones beside them on the next port.
        self.ports = {
            t: [PEER_PORT + k if netns else _free_port() for _ in layout.peers]
            for k, t in enumerate(TRANSPORTS)
        }
        self.names: list[str] = []
        """Every peer process, in the order started (``peer_pids``, ``logs``)."""
        self.logs: list[Path] = []
        self.client: subprocess.Popen[str] | None = None
        self.link: dict[str, float] | None = None
        self.peer_pids: list[int] = []
        self.profile_gflops: float | None = None
        """The uncapped profile's conv speed (``--profile uncapped``)."""

    def address(self, i: int, transport: str = "tls") -> str:
        return f"{self.layout.peers[i].address}:{self.ports[transport][i]}"

    def probe_link(self) -> dict[str, float] | None:
        """RTT and TCP throughput from peer 0 to peer 1 over the shaped link (the estimate
        a daemon would need in place of its 1 GB/s assumption)."""
        lay = self.layout
        if not lay.netns or len(lay.peers) < 2:
            return None
        target = replace(lay.peers[1], cgroup=None)
        pid = self.emu.spawn(
            target,
            [sys.executable, str(HERE / "linkprobe.py"), "serve", target.address, str(PROBE_PORT)],
            dict(os.environ),
            str(self.workdir / "probe.log"),
        )
        out = subprocess.run(
            ["ip", "netns", "exec", lay.peers[0].namespace, sys.executable,
             str(HERE / "linkprobe.py"), "send", target.address, str(PROBE_PORT)],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        self.emu.host.kill(pid, signal.SIGKILL, group=True)
        self.link = json.loads(out.strip().splitlines()[-1])
        progress(
            f"link probe peer0 -> peer1: {self.link['bandwidth'] / 1e6:.2f} MB/s, "
            f"rtt {self.link['rtt'] * 1e3:.2f} ms"
        )
        return self.link

    def env(self, i: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EDGECI_CACHE_DIR=str(self.workdir / f"cache{i}"),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        if self.args.links == "measured" and self.link is not None:
            env["EDGECI_BENCH_LINK_BW"] = repr(self.link["bandwidth"])
        if self.args.profile_loops is not None:
            # Each peer writes DIR/loop.<its name> as it shuts down (aio/loop_profile.py).
            env[LOOP_PROFILE_ENV] = str(self.args.profile_loops.resolve() / "loop")
        return env

    def uncapped_profile(self) -> None:
        """One profile of this machine's CPU, measured uncapped (``edgeci profile
        --threads 1``, about 2 s) and put in every peer's profile cache.

        With a short CFS period a peer's own start-up profile is neither its capped nor
        its uncapped speed: runs shorter than the quota of one period (1.3-4 ms at 10 ms)
        run at full speed, longer ones at the capped speed, and the daemon then scales
        the mix by the quota it reads again. An uncapped profile scaled by the quota is
        exactly the slower CPU each capped peer emulates (what a real device of that
        speed would measure of itself). At nice -19: the capped peers' cgroups win
        their quotas from other work on the machine by weight (``--cpu-weight``), and
        this should too. It is still one short measurement: beside a load average of 5
        on 2 cores two consecutive profiles gave 122 and 56 GFLOP/s, and every bid is
        off by as much, so take it on a quiet machine (the JSON's
        ``profile_conv_gflops`` says what it was)."""
        t0 = time.monotonic()
        cache = self.workdir / "cache-uncapped"
        if self.args.profile_file is not None:
            # Given (--profile-file): two runs compared side by side plan on the same
            # figures, not on two measurements of a noisy machine.
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.args.profile_file, cache / self.args.profile_file.name)
        else:
            env = {**self.env(0), "EDGECI_CACHE_DIR": str(cache)}
            nice = ["nice", "-n", "-19"] if os.geteuid() == 0 else []
            out = subprocess.run(
                [*nice, sys.executable, "-m", "edgeci_p2p.cli", "profile", "--threads", "1",
                 "--refresh"],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(
                    f"uncapped profile failed ({out.returncode}):\n{out.stderr[-2000:]}"
                )
        files = list(cache.glob("profile-*.json"))
        if len(files) != 1:
            raise RuntimeError(f"no profile in {cache}: {[f.name for f in files]}")
        for slot in self.layout.peers:
            dest = self.workdir / f"cache{slot.index}"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[0], dest / files[0].name)
        try:
            conv = json.loads(files[0].read_text())["compute"]["conv"]
            self.profile_gflops = round(1e-9 / float(conv["a"]), 1)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            self.profile_gflops = None
        progress(
            f"uncapped profile for every peer's cache (conv {self.profile_gflops} GFLOP/s"
            f"{', from ' + str(self.args.profile_file) if self.args.profile_file else ''}): "
            f"{time.monotonic() - t0:.0f} s"
        )

    def sustained_profiles(self) -> None:
        """Each peer's profile measured in its own namespace and cgroup over CFS-period
        windows (benchmarks/sustained_profile.py), before the peers start."""
        pids = []
        t0 = time.monotonic()
        for slot in self.layout.peers:
            log = self.workdir / f"profile{slot.index}.log"
            argv = [sys.executable, str(HERE / "sustained_profile.py")]
            pids.append((slot.index, self.emu.spawn(slot, argv, self.env(slot.index), str(log))))
        for i, pid in pids:
            while self.emu.host.alive(pid):
                time.sleep(0.5)
            log = self.workdir / f"profile{i}.log"
            if not any((self.workdir / f"cache{i}").glob("profile-*.json")):
                raise RuntimeError(f"sustained profile of peer{i} failed:\n{_tail(log)}")
            progress(f"peer{i} sustained profile: {_tail(log, 1)}")
        progress(f"sustained profiles took {time.monotonic() - t0:.0f} s")

    def start_peers(self) -> None:
        """Every transport's peers, TLS first; each a full cluster of its own."""
        for transport in self.transports:
            for slot in self.layout.peers:
                self.start_peer(slot, transport)
                if not self.args.start_together:
                    # One at a time: a peer profiles itself at start, and beside others
                    # loading their models on the same two cores it once measured itself
                    # 1.65x slower than it is (real devices do not share cores).
                    self._wait_ready([len(self.names) - 1])
        self._wait_ready(range(len(self.names)))

    def peer_argv(self, slot: PeerSlot, transport: str) -> list[str]:
        lay, i = self.layout, slot.index
        plain = transport == "plaintext"
        pct = "" if slot.share is None else f"-{round(slot.share * 100)}pct"
        state = self.workdir / f"state{i}{'-plaintext' if plain else ''}"
        entry = ["-m", "edgeci_p2p.peer_cli"]
        if self.args.links == "measured":
            entry = [str(HERE / "peer_links.py")]
        argv = [
            sys.executable, *entry,
            "--host", slot.address, "--port", str(self.ports[transport][i]),
            "--name", f"peer{i}{pct}", "--state-dir", str(state),
            "--threads", "1", "--models", self.args.models,
            "--cluster-key-file", str(self.key_file), "--log-level", self.args.peer_log_level,
            # Each namespace emulates a device of its own: its CPU is its quota, not
            # a share of this machine's cores (edgeci-peer --host-id).
            "--host-id", f"emulated-{i}",
        ]  # fmt: skip
        if self.args.links == "testbed" and lay.rate_mbit is not None:
            argv += ["--link-mbit", str(lay.rate_mbit * 0.94)]  # tbf's payload rate here
        if self.args.no_zero_suppression:
            argv += ["--no-zero-suppression"]
        if self.args.no_speed_calibration:
            argv += ["--no-speed-calibration"]
        if self.args.no_piece_cost:
            argv += ["--no-piece-cost"]
        if self.args.no_plan_aside:
            argv += ["--no-plan-aside"]
        if self.args.plan_here:
            argv += ["--plan-here"]
        if self.args.plan_patience is not None:
            argv += ["--plan-patience", str(self.args.plan_patience)]
        if self.args.worker_nice is not None:
            argv += ["--worker-nice", str(self.args.worker_nice)]
        if self.args.no_fold:
            argv += ["--no-fold"]
        if self.args.no_gc_freeze:
            argv += ["--no-gc-freeze"]
        if not load_testbed(self.args.testbed).shared_medium:
            argv += ["--links", "switched"]  # every veth is its own link (the testbed says)
        if plain:
            # Static peers, every one before it: on mDNS the two transports' peers would
            # find and dial each other, and each such dial fails (TLS_REQUIRED).
            argv += ["--plaintext", "--no-mdns"]
            argv += [x for j in range(i) for x in ("--peer", self.address(j, transport))]
        elif lay.netns:
            # mDNS bound to the namespace's own address: it never leaves the namespaces.
            argv += ["--mdns-interface", slot.address]
        else:
            # Loopback is shared with other programs: no mDNS there, static peers only.
            argv += ["--no-mdns"] + (["--peer", self.address(0)] if i else [])
        if self.args.static_peers and lay.netns and i and not plain:
            argv += ["--peer", self.address(0)]
        return argv

    def start_peer(self, slot: PeerSlot, transport: str) -> None:
        name = f"peer{slot.index}" + ("" if transport == "tls" else f" ({transport})")
        log = self.workdir / f"peer{slot.index}{'' if transport == 'tls' else '-' + transport}.log"
        argv = self.peer_argv(slot, transport)
        self.names.append(name)
        self.logs.append(log)
        self.peer_pids.append(self.emu.spawn(slot, argv, self.env(slot.index), str(log)))

    def _wait_ready(self, peers: Sequence[int]) -> None:
        """Wait for the peers of these indices (into ``names``, ``logs``)."""
        t0 = time.monotonic()
        ready: set[int] = set()
        while len(ready) < len(peers):
            for i in peers:
                if i not in ready and "ready on port" in _tail(self.logs[i], 200):
                    ready.add(i)
                    progress(
                        f"{self.names[i]} ready after {time.monotonic() - t0:.0f} s (profiled)"
                    )
            for i, pid in enumerate(self.peer_pids):
                if not self.emu.host.alive(pid):
                    raise RuntimeError(
                        f"{self.names[i]} exited during start:\n{_tail(self.logs[i])}"
                    )
            if time.monotonic() - t0 > self.args.start_timeout:
                late = [self.names[i] for i in sorted(set(peers) - ready)]
                raise TimeoutError(f"peers {late} not ready")
            time.sleep(0.5)

    def measure(self) -> list[dict[str, Any]]:
        free = planner = None
        lay = self.layout
        if self.args.free_helper_loops:
            # main() refused the flag without v1 quotas. The TLS peers' helpers: every
            # peer but the entry one, peer 0.
            helpers = [pid for i, pid in enumerate(self.peer_pids) if i % len(lay.peers) != 0]
            free = FreeLoops(self.emu.host, lay.cgroup, lay.prefix, helpers, lay.cpu_weight or 1024)
            free.start()
        if self.args.free_planner:
            entries = [pid for i, pid in enumerate(self.peer_pids) if i % len(lay.peers) == 0]
            planner = FreePlanner(
                self.emu.host, lay.cgroup, lay.prefix, entries, lay.cpu_weight or 1024
            )
            planner.step()
            planner.start()
        try:
            return self._measure()
        finally:
            if free is not None:
                free.stop()
                progress(f"free helper loops: {len(free.moved)} moved, {len(free.waiting)} never")
            if planner is not None:
                planner.stop()
                progress(f"free planner: {len(planner.moved)} planning child(ren) moved")

    def _measure(self) -> list[dict[str, Any]]:
        lay, a = self.layout, self.args
        argv = [
            sys.executable, str(CLIENT), "--transports", ",".join(self.transports),
            *[x for t in self.transports for x in (ENTRY_FLAG[t], self.address(0, t))],
            "--key-file", str(self.key_file), "--expect-peers", str(len(lay.peers) - 1),
            "--k", str(a.k), "--models", a.models, "--strategies", a.strategies,
            "--gap", str(a.gap), "--settle", str(a.settle),
            "--warmup-rounds", str(a.warmup_rounds), "--quiet", str(a.quiet),
            *(["--traces", str(a.traces)] if a.traces is not None else []),
        ]  # fmt: skip
        if lay.netns:
            argv = ["ip", "netns", "exec", lay.peers[0].namespace, *argv]
        pinned = {p.cpu for p in lay.peers if p.cpu is not None}
        spare = [c for c in machine_cores() if c not in pinned]
        if pinned and spare:
            # The peers have their cores; the client stays off them. (`--pin packed` on
            # two cores leaves none spare: an empty list made taskset fail the run.)
            argv = ["taskset", "-c", ",".join(map(str, spare)), *argv]
        self.client = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        total = a.k * len(a.strategies.split(",")) * len(a.models.split(",")) * len(self.transports)
        results: list[dict[str, Any]] = []
        errors = 0
        # Each result is charged the peers' CPU since the last one (benchmarks/peer_cpu.py).
        cpu_before = read_peers(self.peer_pids)
        warmed: set[str] = set()
        assert self.client.stdout is not None
        for line in self.client.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev["event"] == "status":
                progress(f"  {ev['msg']}")
            elif ev["event"] == "error":
                errors += 1
                cpu_before = read_peers(self.peer_pids)
                progress(f"  error: {ev}")
            else:
                cpu_now = read_peers(self.peer_pids)
                # An arm's first result carries its first plan (1.3 s of a 0.4-core
                # auctioneer's CPU for edgeci-halo) and the model's warm-up.
                arm_key = f"{ev['model']}/{ev['strategy']}/{transport_of(ev)}"
                if arm_key in warmed:
                    ev["cpu"] = charge(cpu_before, cpu_now, 1 + a.settle)
                warmed.add(arm_key)
                cpu_before = cpu_now
                results.append(ev)
                progress(
                    f"  [{len(results) + errors}/{total}] {ev['model']} "
                    f"{label(ev['strategy'], transport_of(ev)):<10} "
                    f"{ev['latency_s'] * 1e3:8.1f} ms  predicted "
                    f"{(ev['predicted_s'] or 0) * 1e3:8.1f} ms  devices {ev['devices']}"
                )
        rc = self.client.wait()
        self.client = None
        if rc != 0 and not results:
            raise RuntimeError(f"measuring client failed ({rc}); peer0 log:\n{_tail(self.logs[0])}")
        return results

    def stop_client(self) -> None:
        if self.client is not None and self.client.poll() is None:
            os.killpg(self.client.pid, signal.SIGKILL)
            self.client.wait()


def transports(spec: str) -> list[str]:
    """``--transport`` (and the client's ``--transports``): a comma-separated list of
    TRANSPORTS, each once."""
    out = [t.strip() for t in spec.split(",") if t.strip()]
    if not out or len(set(out)) != len(out) or not set(out) <= set(TRANSPORTS):
        raise ValueError(f"transport {spec!r}: a list of {', '.join(TRANSPORTS)}, each once")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--testbed",
        default="emulated-4",
        help="the cluster's shape: shares from its device names (peer0-60pct ...), links "
        "from its bandwidth (default emulated-4; under the headroom layout the matching "
        "<testbed>-headroom description is reported where one is shipped)",
    )
    p.add_argument(
        "--layout",
        choices=["auto", "headroom", "testbed"],
        default="auto",
        help="testbed: the testbed's shares as they are; headroom: the same ratios scaled "
        "to add up to at most half the machine's cores (auto: headroom below 8 cores)",
    )
    p.add_argument(
        "--pin",
        choices=["none", "packed"],
        default="none",
        help="packed: each capped peer pinned to one core, the cores' quotas balanced "
        "(0.4 + 0.1333 and 0.2667 + 0.2 on 2 cores), so that it keeps that core's caches "
        "between its CFS slices; none: the peers float over every core",
    )
    p.add_argument(
        "--homogeneous",
        type=int,
        metavar="N",
        help="N uncapped peers, each pinned to a core of its own (needs N + 1 cores; the "
        "testbed gives only the links)",
    )
    p.add_argument(
        "--cfs-period-ms",
        type=float,
        default=DEFAULT_PERIOD_US / 1000,
        help="CFS period of the capped peers' cgroups (default %(default)g; "
        "benchmarks/cfs_period.py compares periods)",
    )
    p.add_argument("--cgroup", choices=["auto", "v1", "v2"], default="auto")
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the compute ceiling (measured after the cluster, same layout)",
    )
    p.add_argument(
        "--ceiling-k", type=int, help="requests per mode of the compute ceiling (default: --k)"
    )
    p.add_argument(
        "--traces",
        type=Path,
        metavar="DIR",
        help="trace every measured request and keep each one's Chrome trace and timeline "
        "in DIR (opens in Perfetto; `edgeci infer --trace` writes the same); the report gains "
        "a table of where the time went against the plan, per strategy",
    )
    p.add_argument("--k", type=int, default=10, help="requests per strategy and model")
    p.add_argument("--quick", action="store_true", help="K=2: a check in a few minutes")
    p.add_argument("--models", default="vgg16,resnet34")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--json", action="store_true", help="last line: JSON rows")
    p.add_argument("--chart", type=Path, default=Path("cluster-benchmark.png"))
    p.add_argument("--raw", type=Path, help="also write every request's record (JSON lines)")
    p.add_argument("--unshaped", action="store_true", help="force the loopback fallback")
    p.add_argument(
        "--profile",
        choices=["auto", "uncapped", "daemon", "sustained"],
        default="auto",
        help="uncapped: one profile of the machine measured uncapped before the peers start, "
        "in every peer's cache; each daemon scales it by the quota it reads (the default "
        "when peers are capped); daemon: each peer profiles itself at start, under its cap "
        "(the default for uncapped peers); sustained: benchmarks/sustained_profile.py "
        "measures each peer over CFS-period windows first",
    )
    p.add_argument(
        "--profile-file",
        type=Path,
        metavar="FILE",
        help="with --profile uncapped: this profile (an `edgeci profile` cache file, "
        "profile-*.json) in every peer's cache instead of one measured now, so that runs "
        "compared side by side plan on the same figures",
    )
    p.add_argument(
        "--links",
        choices=["assumed", "measured", "testbed"],
        default="assumed",
        help="assumed: as shipped (each link's rate from the peers' own link probes, "
        "else fitted from served tiles); measured: the fit's prior set to this benchmark's "
        "link probe (benchmarks/peer_links.py); testbed: peers plan every link at the "
        "testbed's rate (edgeci-peer --link-mbit)",
    )
    p.add_argument(
        "--cpu-weight",
        type=int,
        default=8192,
        help="cpu.shares of the peers' cgroups (0 = the kernel default 1024): high, so that "
        "other load on the machine does not flatten the quotas",
    )
    p.add_argument(
        "--settle",
        type=int,
        default=1,
        help="unmeasured requests of the same strategy before each measured one (default 1: "
        "each is measured in the CFS state its own kind leaves, not its predecessor's)",
    )
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=2,
        help="unmeasured rounds of every strategy before the measured ones, in which the "
        "peers calibrate their bids (default 2; 0 for none)",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=5.0,
        help="seconds with no request after the warm-up rounds, in which each auctioneer's "
        "planning child plans on the calibrated bids (default 5; 0 for none)",
    )
    p.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds of quiet before each request (default 0: back to back, the steady "
        "state of a loaded service; >= 0.2 refills every CFS quota first, which gives "
        "each request a burst no real device has)",
    )
    p.add_argument("--static-peers", action="store_true", help="also --peer the auctioneer")
    p.add_argument(
        "--no-zero-suppression",
        action="store_true",
        help="peers send every map whole (edgeci-peer --no-zero-suppression), for comparison",
    )
    p.add_argument(
        "--no-speed-calibration",
        action="store_true",
        help="peers bid their start-up profile as measured (edgeci-peer "
        "--no-speed-calibration), for comparison",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="peers never fold VGG's fc1 into the last strips (edgeci-peer --no-fold), "
        "for comparison",
    )
    p.add_argument(
        "--plan-patience",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long the peers' new plans wait for their daemon to fall idle "
        "(edgeci-peer --plan-patience; default: the peer's own), for comparison",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        metavar="N",
        help="the peers' compute worker niceness (edgeci-peer --worker-nice N; default: "
        "the peer's own default), for comparison",
    )
    p.add_argument(
        "--plan-here",
        action="store_true",
        help="every auctioneer makes its background plans in its own planning child "
        "(edgeci-peer --plan-here), not on another peer, for comparison",
    )
    p.add_argument(
        "--no-plan-aside",
        action="store_true",
        help="peers plan for new speed figures in a thread beside their requests "
        "(edgeci-peer --no-plan-aside), for comparison",
    )
    p.add_argument(
        "--no-piece-cost",
        action="store_true",
        help="peers neither learn nor bid a fixed cost per piece of work (edgeci-peer "
        "--no-piece-cost), for comparison",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="peers leave start-up's objects to the collector (edgeci-peer --no-gc-freeze), "
        "for comparison",
    )
    p.add_argument(
        "--transport",
        default="tls",
        help="tls (default), plaintext, or tls,plaintext: a second set of the same peers "
        "with --plaintext beside the TLS ones, requests to both interleaved, and the "
        "TLS / plaintext median ratio reported",
    )
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument(
        "--start-together",
        action="store_true",
        help="start every peer at once (faster; their start-up profiles then disturb "
        "each other) rather than each after the one before is ready",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the peers' logs")
    p.add_argument(
        "--free-helper-loops",
        action="store_true",
        help="a diagnostic, not a measurement of the cluster: each helper's event loop "
        "thread moves out of its CPU quota once its compute worker exists (cgroup v1; "
        "benchmarks/free_loops.py): what the cluster would do if the helpers' message "
        "handling cost them nothing",
    )
    p.add_argument(
        "--free-planner",
        action="store_true",
        help="a diagnostic, not a measurement of the cluster: the entry peer's planning "
        "child (the background plans) moves out of its CPU quota "
        "(benchmarks/free_loops.py); with --plan-patience 0, what plans made afresh "
        "for every move of the bids would give if planning cost the auctioneer nothing",
    )
    p.add_argument(
        "--profile-loops",
        type=Path,
        metavar="DIR",
        help="each peer writes a CPU-time profile of its event loop to DIR/loop.<name> "
        "(pstats; profiling multiplies the loops' CPU by 2-5, so read shares, not times)",
    )
    p.add_argument(
        "--peer-log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="the peers' log level (debug: strip jobs log their wait and compute per stage)",
    )
    p.add_argument("--cleanup", action="store_true", help="remove a left-over cluster and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.k = 2
    if args.k < 1:
        p.error("--k must be at least 1")
    if args.warmup_rounds < 0 or args.quiet < 0:
        p.error("--warmup-rounds and --quiet must be at least 0")
    try:
        transports(args.transport)
    except ValueError as e:
        p.error(str(e))
    if args.ceiling_k is None:
        args.ceiling_k = args.k
    return args


def headroom_testbed(name: str, shares: Sequence[float | None]) -> Testbed | None:
    """The shipped ``<name>-headroom`` testbed when its shares are ``shares``."""
    try:
        tb = load_testbed(f"{name}-headroom")
    except (ValueError, FileNotFoundError):
        return None
    return tb if testbed_shares(tb) == list(shares) else None


def same_layout(layout: Layout, k: int, ideal: float) -> dict[str, Any]:
    """The arguments that run the compute ceiling or a plan's replay on the cluster's
    own cgroups, period and pinning (``compute_ceiling.ceiling``, ``plan_ceiling.replay``)."""
    return {
        "shares": [p.share for p in layout.peers],
        "k": k,
        "period_us": layout.period_us,
        "cgroup": layout.cgroup,
        "cpus": [p.cpu for p in layout.peers],
        "cpu_weight": layout.cpu_weight,
        "ideal": ideal,
    }


def measure_ceilings(
    args: argparse.Namespace, layout: Layout, ideal: float
) -> dict[str, dict[str, Any]]:
    """The compute ceiling of every model that it supports, on the same layout."""
    out: dict[str, dict[str, Any]] = {}
    for model in args.models.split(","):
        t0 = time.monotonic()
        progress(f"compute ceiling of {model}, K={args.ceiling_k}")
        try:
            out[model] = ceiling(model, **same_layout(layout, args.ceiling_k, ideal))
        except (RuntimeError, ValueError, OSError) as e:
            progress(f"compute ceiling of {model} failed: {e}")
            continue
        c = out[model]
        progress(
            f"{model} ceiling {c['ceiling']:.2f} ({c['ceiling_mode']}) in "
            f"{time.monotonic() - t0:.0f} s"
        )
    return out


def last_distributed(traces: Path, model: str, strategy: str, transport: str) -> Path | None:
    """The kept trace of the last request of ``strategy`` that ran on more than one peer
    (one may have run alone), or None."""
    # Named as benchmarks/cluster_client.py names them (and "edgeci-*" would also
    # match edgeci-halo's).
    tag = strategy if transport == "tls" else f"{strategy}-{transport}"
    kept = [
        t
        for t in sorted(traces.glob(f"{model}-{tag}-[0-9][0-9].json"))
        if len(json.loads(t.read_text()).get("plan", {}).get("devices", ())) > 1
    ]
    return kept[-1] if kept else None


def measure_plan_bounds(
    traces: Path, ideal: float, rows: Sequence[Row]
) -> dict[str, list[dict[str, Any]]]:
    """Per model, for each of our strategies that distributed over TLS: the best plan on
    the bids of its last kept trace, and on them with each fixed cost taken away
    (``benchmarks/plan_bound.py``), speed-ups against the same run's ``local``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in dict.fromkeys(r.model for r in rows):
        local = [r.median_ms for r in rows if r.model == model and r.strategy == "local"]
        for strategy in planners.OURS:
            kept = last_distributed(traces, model, strategy, "tls")
            if kept is None:
                continue
            t0 = time.monotonic()
            try:
                found = trace_bounds(kept, min(local) if local else None, ideal)
            except (ValueError, KeyError, OSError) as e:
                progress(f"planning again on {kept.name}'s bids failed: {e}")
                continue
            progress(f"planned again on {kept.name}'s bids in {time.monotonic() - t0:.0f} s")
            out.setdefault(model, []).append(found)
    return out


def measure_plan_ceilings(
    args: argparse.Namespace,
    layout: Layout,
    ideal: float,
    rows: Sequence[Row],
    diag: Sequence[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Per model, the last traced plan of the best of our strategies replayed with no
    network on the same layout (where it distributed and its traces were kept)."""
    out: dict[str, dict[str, Any]] = {}
    d = {arm(x): x for x in diag}
    for model in dict.fromkeys(r.model for r in rows):
        best = best_of_ours(rows, model)
        if (
            best is None
            or len(d.get((model, best.strategy, best.transport), {}).get("devices") or []) <= 1
        ):
            continue
        kept = last_distributed(args.traces, model, best.strategy, best.transport)
        if kept is None:
            continue
        t0 = time.monotonic()
        progress(f"replaying {kept.name}'s plan with no network, K={args.ceiling_k}")
        try:
            out[model] = replay(kept, **same_layout(layout, args.ceiling_k, ideal))
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            progress(f"replaying {kept.name} failed: {e}")
            continue
        progress(
            f"{model} {best.strategy}'s plan replayed: efficiency "
            f"{out[model]['efficiency']:.2f} in {time.monotonic() - t0:.0f} s"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    testbed = load_testbed(args.testbed)
    base = testbed_shares(testbed)
    if base is None:
        base = list(ISSUE_SHARES[: len(testbed.devices)])
        progress(f"testbed {testbed.name} names no cpu shares; using {base}")
    host = SystemHost()
    if args.cleanup:
        left_any = False
        for prefix in PREFIXES:
            emu = Emulation(make_layout([None], None, prefix=prefix), host)
            left = emu.teardown()
            left_any = left_any or bool(left)
            print(f"{prefix}: " + ("nothing remains" if not left else f"still there: {left}"))
        return 1 if left_any else 0
    cores = machine_cores()
    try:
        layout_name, shares, cpus = layout_shares(
            args.layout, base, len(cores), args.homogeneous, args.pin
        )
    except ValueError as e:
        progress(f"refused: {e}")
        return 2
    if layout_name.startswith("headroom") and shares != base:
        matching = headroom_testbed(args.testbed, shares)
        if matching is not None:
            testbed = matching  # the description of what is emulated, for the report
    ok, why = (False, "--unshaped given") if args.unshaped else can_emulate(host, args.cgroup)
    rate = testbed_rate_mbit(testbed)
    period_us = round(args.cfs_period_ms * 1000)
    try:
        if ok:
            layout = make_layout(
                shares,
                rate,
                cpu_weight=args.cpu_weight or None,
                period_us=period_us,
                cgroup=detect_cgroup(args.cgroup)[0],
                cpus=cpus,
            )
        else:
            layout = make_layout([None] * len(shares), None, netns=False, cpus=cpus)
    except ValueError as e:
        progress(f"refused: {e}")
        return 2
    capped = [s for s in shares if s is not None]
    if args.free_helper_loops and not (ok and capped and layout.cgroup.version == 1):
        progress("refused: --free-helper-loops needs peers under cgroup v1 CPU quotas")
        return 2
    if args.free_planner and not (ok and capped):
        progress("refused: --free-planner needs peers under CPU quotas")
        return 2
    if args.profile == "auto":
        args.profile = "uncapped" if ok and capped else "daemon"
    if ok and capped:
        ideal = sum(capped) / max(capped)
        progress(
            f"emulating {testbed.name} ({layout_name} layout, {len(cores)} cores): {why}; "
            f"cpu {shares} of a core, CFS period {period_us / 1000:g} ms "
            f"(cpu.shares {args.cpu_weight or 'default'}), links {rate} mbit"
        )
    elif ok:
        ideal = float(len(shares))
        progress(
            f"emulating {layout_name} ({len(cores)} cores): {why}; {len(shares)} uncapped "
            f"peers pinned to cores {cpus}, links {rate} mbit ({testbed.name})"
        )
    else:
        ideal = float(len(shares)) if cpus else float(min(len(shares), len(cores)))
        pins = f", pinned to cores {cpus}" if cpus else ""
        progress(f"NOT EMULATING ({why}): {len(shares)} peers on plain loopback{pins}, UNSHAPED")
    emu = Emulation(layout, host)
    bench: Bench | None = None
    started = time.monotonic()
    try:
        with emu.running():
            bench = Bench(args, layout, emu)
            progress(f"work dir {bench.workdir}")
            try:
                bench.probe_link()
                if args.profile == "sustained":
                    bench.sustained_profiles()
                elif args.profile == "uncapped":
                    bench.uncapped_profile()
                bench.start_peers()
                results = bench.measure()
            finally:
                bench.stop_client()
        left = emu.leftovers()
    except (KeyboardInterrupt, Terminated) as e:
        left = emu.leftovers()
        progress(
            f"interrupted ({e or 'Ctrl-C'}); cluster torn down: "
            f"{'nothing remains' if not left else f'LEFT: {left}'}"
        )
        return 130
    finally:
        if bench is not None and not args.keep_logs:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    progress(f"cluster torn down: {'nothing remains' if not left else f'LEFT: {left}'}")
    if not results:
        progress("no results")
        return 1
    ceilings: dict[str, dict[str, Any]] = {}
    if not args.no_ceiling:
        try:
            ceilings = measure_ceilings(args, layout, ideal)
        except (KeyboardInterrupt, Terminated) as e:
            progress(f"compute ceiling interrupted ({e or 'Ctrl-C'}); reporting without it")
    if args.raw is not None:
        args.raw.write_text("".join(json.dumps(r) + "\n" for r in results))
    # Report in the order asked for (requests went in a shuffled order each round).
    order = [s for s in args.strategies.split(",") if s]
    models = list(dict.fromkeys(r["model"] for r in results))
    kinds = transports(args.transport)
    results = sorted(
        results,
        key=lambda r: (
            models.index(r["model"]),
            order.index(r["strategy"]),
            kinds.index(transport_of(r)),
        ),
    )
    rows = with_ceiling(summarise(results, ideal), ceilings)
    diag = diagnostics(results)
    plans: dict[str, dict[str, Any]] = {}
    if ceilings and args.traces is not None and layout.netns:
        try:
            plans = measure_plan_ceilings(args, layout, ideal, rows, diag)
        except (KeyboardInterrupt, Terminated) as e:
            progress(f"plan replay interrupted ({e or 'Ctrl-C'}); reporting without it")
    bounds = measure_plan_bounds(args.traces, ideal, rows) if args.traces is not None else {}
    shaped = layout.netns
    if shaped and capped:
        cpu = f"cpu {shares} of a core ({layout_name}), CFS period {period_us / 1000:g} ms"
    elif shaped:
        cpu = f"{len(shares)} uncapped peers pinned to cores {cpus}"
    title = (
        f"{testbed.name}: {cpu}, {rate:g} mbit tbf links, K={args.k}"
        if shaped
        else f"UNSHAPED loopback ({len(shares)} peers, no caps), K={args.k}"
    ) + f"; settle {args.settle}; profile: {args.profile}, links: {args.links}"
    if kinds != ["tls"]:
        title += f"; transport: {', '.join(kinds)}"
    print(title)
    print(table(rows, diag, shaped))
    where = where_the_time_went(results)
    if where:
        print(time_table(where))
    cpu_where = where_the_cpu_went(
        results, lambda r: (r["model"], label(r["strategy"], transport_of(r)))
    )
    if cpu_where:
        print(cpu_table(cpu_where))
    # The closing note ranks strategies within one transport: TLS, as shipped.
    note_rows = [r for r in rows if r.transport == kinds[0]]
    for line in closing_note(note_rows, diag, ceilings, plans):
        print(line)
    for line in plan_age_lines(diag):
        print(line)
    for found in (b for per_model in bounds.values() for b in per_model):
        print(bound_summary(found))
    ratios = transport_ratios(diag)
    for line in ratio_lines(ratios):
        print(line)
    chart(rows, diag, args.chart, title)
    progress(f"chart: {args.chart}; {time.monotonic() - started:.0f} s in all")
    if args.json:
        print(
            json.dumps(
                {
                    "where_the_time_went": where or None,
                    "where_the_cpu_went": cpu_where or None,
                    "rows": [asdict(r) for r in rows],
                    "shaped": shaped,
                    "testbed": testbed.name,
                    "shares": shares if shaped else None,
                    "rate_mbit": rate if shaped else None,
                    "k": args.k,
                    "transports": kinds,
                    "tls_over_plaintext": ratios or None,
                    "settle": args.settle,
                    "gap": args.gap,
                    "profile": args.profile,
                    "profile_conv_gflops": bench.profile_gflops if bench is not None else None,
                    "links": args.links,
                    "link_probe": bench.link if bench is not None else None,
                    "ideal_speedup": ideal,
                    "layout": layout_name if shaped else "unshaped",
                    "cfs_period_ms": period_us / 1000 if shaped and capped else None,
                    "cgroup": str(layout.cgroup) if shaped and capped else None,
                    "cores": len(cores),
                    "pinned_cores": cpus,
                    "ceiling": ceilings,
                    "plan_ceiling": plans or None,
                    "plan_bounds": bounds or None,
                    "diagnostics": diag,
                    "leftovers": str(left) if left else None,
                }
            )
        )
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
