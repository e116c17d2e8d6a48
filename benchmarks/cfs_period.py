"""Which CFS period makes a capped peer behave like a slower CPU, not a paused one.

A CFS quota of q cores over a period P lets a cgroup run q*P of every P at full speed
and then stops it until the period ends. With P = 100 ms and q = 0.2, a 5 ms
convolution either runs at full speed (it fits in what is left of the 20 ms) or
waits up to 80 ms: the peer is a fast CPU that is paused, and every short
measurement (a profile, a tile) sees one or the other. A slower CPU would take
5 / 0.2 = 25 ms every time. The shorter the period, the finer the pauses are
spread, the closer the capped peer comes to that; but each period costs the
scheduler a throttle and an unthrottle.

This measures it: one worker per peer of the layout (default: the headroom layout,
quotas 0.4/0.2667/0.2/0.1333 on a 2-core machine), in its cgroup, each running the
same fixed convolution back to back for ``--seconds`` while the others do too, for
each period in ``--periods`` (default 100, 20, 10 ms); and the same convolution
uncapped, alone, before and after. A perfectly slower CPU takes (uncapped median) /
share per operation, every time. Per period and peer it prints the median of
latency / that expectation, its 10th-90th percentile spread, the fractions of
operations that ran at burst speed (< 0.5x) or absorbed a pause (> 2x), and the mean
|log(latency / expectation)| (0 for a perfectly slower CPU); the period with the
smallest mean over the peers is the one closest to a slower CPU.

    sudo .venv/bin/python benchmarks/cfs_period.py [--periods 100,20,10] [--seconds 8]
        [--rows 28] [--layout headroom|testbed] [--json] [--quick]

Workers start uncapped (importing torch at 0.13 of a core would take a minute) and
are moved into their cgroups once warm. The cgroups are torn down on every exit, as
the cluster's (prefix ``edgeci-cfs``; ``benchmarks/cluster.py --cleanup`` removes a
killed run's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compute_ceiling import Worker  # noqa: E402
from emulation import (  # noqa: E402
    Emulation,
    SystemHost,
    default_layout,
    detect_cgroup,
    headroom_shares,
    machine_cores,
    make_layout,
)

ISSUE_SHARES = (0.6, 0.4, 0.3, 0.2)
CHANNELS, WIDTH = 256, 56
"""The fixed operation: a 3x3 convolution 256 -> 256 channels on ``rows`` x 56, i.e.
a row strip of VGG-16's conv3 block (224x224 input); 28 rows is ~0.9 GFLOP."""


# ---- worker --------------------------------------------------------------------------


def worker(rows: int) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
    x = torch.randn(1, CHANNELS, rows, WIDTH)
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                return
            seconds = float(cmd[1])
            lat, cpu = [], []
            t0, c0 = time.perf_counter(), time.thread_time()
            end = t0 + seconds
            while True:
                conv(x)
                # Each operation runs from the previous one's end: a throttle that falls
                # between two operations (reading the thread's CPU clock updates its
                # runtime, and that can be the moment the quota is found spent) counts.
                # Timed from the call alone, short operations read faster than the quota
                # allows: at 10 ms, rows=4 "got" 1.3-2.6x the share and rows=28 1.06-1.08
                # (timed from the previous end: 1.00-1.01 for both).
                t1, c1 = time.perf_counter(), time.thread_time()
                lat.append(1e3 * (t1 - t0))
                cpu.append(1e3 * (c1 - c0))
                t0, c0 = t1, c1
                if t1 >= end:
                    break
            print(json.dumps({"lat_ms": lat, "cpu_ms": cpu}), flush=True)


# ---- analysis (pure) -----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def analyse(
    lat_ms: Sequence[float],
    uncapped_ms: float,
    share: float,
    cpu_ms: Sequence[float] | None = None,
) -> dict[str, float]:
    """How far ``lat_ms`` (one capped worker's operations) is from a CPU ``share`` times
    as fast as the uncapped one, which would take ``uncapped_ms / share`` every time.

    With ``cpu_ms`` (each operation's own CPU time), also against the operation's own
    CPU time over the share: the same question without the uncapped reference, which a
    loaded machine moves between its two runs (``own_*``)."""
    expected = uncapped_ms / share
    ratios = [t / expected for t in lat_ms]
    own: dict[str, float] = {}
    if cpu_ms is not None:
        mine = [t * share / c for t, c in zip(lat_ms, cpu_ms, strict=True) if c > 0]
        own = {
            "own_ratio_median": round(statistics.median(mine), 3),
            "own_ratio_p10": round(percentile(mine, 10), 3),
            "own_ratio_p90": round(percentile(mine, 90), 3),
            "own_mean_abs_log": round(statistics.fmean(abs(math.log(r)) for r in mine), 3),
            # CPU time over wall time of the whole round, over the share: 1 when the quota
            # holds exactly, > 1 when the group got more (CFS slack, or a VM's stolen time
            # counted as the thread's).
            "got_over_share": round(sum(cpu_ms) / sum(lat_ms) / share, 3),
        }
    return {
        "n": len(ratios),
        "expected_ms": round(expected, 2),
        "median_ms": round(statistics.median(lat_ms), 2),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_p10": round(percentile(ratios, 10), 3),
        "ratio_p90": round(percentile(ratios, 90), 3),
        "ratio_p99": round(percentile(ratios, 99), 3),
        "burst_fraction": round(sum(r < 0.5 for r in ratios) / len(ratios), 3),
        "paused_fraction": round(sum(r > 2.0 for r in ratios) / len(ratios), 3),
        "mean_abs_log": round(statistics.fmean(abs(math.log(r)) for r in ratios), 3),
        "throughput_share": round(len(lat_ms) * uncapped_ms / sum(lat_ms), 3),
        **own,
    }


def closest_to_a_slower_cpu(per_period: dict[float, list[dict[str, float]]]) -> float:
    """The period (ms) whose peers' mean |log(latency / expectation)| is smallest."""
    return min(per_period, key=lambda p: statistics.fmean(a["mean_abs_log"] for a in per_period[p]))


# ---- parent --------------------------------------------------------------------------


def start_worker(rows: int) -> Worker:
    """This script as a worker process (one thread), driven line by line."""
    return Worker(
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--rows", str(rows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
    )


def run_round(workers: Sequence[Worker], seconds: float) -> list[dict[str, list[float]]]:
    for w in workers:
        w.send(f"run {seconds}")
    return [json.loads(w.recv()) for w in workers]


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(
    shares: Sequence[float],
    periods_ms: Sequence[float],
    seconds: float,
    rows: int,
    cgroup: str = "auto",
    cpu_weight: int = 8192,
) -> dict[str, Any]:
    fs, why = detect_cgroup(cgroup)
    if fs is None or os.geteuid() != 0:
        raise SystemExit(f"cfs_period needs root and cgroup cpu quotas: {why}")
    periods_us = [round(p * 1000) for p in periods_ms]
    layout = make_layout(
        list(shares), None, prefix="edgeci-cfs", netns=False, cpu_weight=cpu_weight,
        period_us=periods_us[0], cgroup=fs,
    )  # fmt: skip
    for p in periods_us:  # refuse a period the kernel would refuse, before anything starts
        make_layout(list(shares), None, netns=False, period_us=p, cgroup=fs)
    emu = Emulation(layout, SystemHost())
    out: dict[str, Any] = {
        "shares": list(shares), "rows": rows, "seconds": seconds, "cgroup": str(fs),
        "periods_ms": list(periods_ms), "cores": len(machine_cores()),
    }  # fmt: skip
    workers: list[Worker] = []
    with emu.running():
        try:
            ref = start_worker(rows)
            workers.append(ref)
            emu.pids.append(ref.proc.pid)
            capped = []
            for _ in layout.peers:
                w = start_worker(rows)
                workers.append(w)
                emu.pids.append(w.proc.pid)
                capped.append(w)
            for w in workers:
                if w.recv() != "ready":
                    raise RuntimeError(f"worker pid {w.proc.pid} did not start")
            for slot, w in zip(layout.peers, capped, strict=True):
                emu.adopt(slot, w.proc.pid)
            progress(f"uncapped reference, {seconds:g} s")
            before = run_round([ref], seconds)[0]
            rounds: dict[int, Any] = {}
            for p_ms, p_us in zip(periods_ms, periods_us, strict=True):
                emu.retune(p_us)
                progress(f"period {p_ms:g} ms: {len(capped)} capped workers at once, {seconds:g} s")
                stat0 = [emu.cpu_stat(s) for s in layout.peers]
                res = run_round(capped, seconds)
                stat1 = [emu.cpu_stat(s) for s in layout.peers]
                rounds[p_us] = (res, stat0, stat1)
            progress(f"uncapped reference again, {seconds:g} s")
            after = run_round([ref], seconds)[0]
            for w in workers:
                w.send("quit")
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                w.proc.wait(timeout=10)
    ref_before = statistics.median(before["lat_ms"])
    ref_after = statistics.median(after["lat_ms"])
    uncapped = (ref_before + ref_after) / 2
    out["uncapped_ms"] = {"before": round(ref_before, 2), "after": round(ref_after, 2)}
    per_period: dict[float, list[dict[str, float]]] = {}
    for p_ms, p_us in zip(periods_ms, periods_us, strict=True):
        res, stat0, stat1 = rounds[p_us]
        rows_out = []
        for share, r, s0, s1 in zip(shares, res, stat0, stat1, strict=True):
            a: dict[str, Any] = analyse(r["lat_ms"], uncapped, share, r["cpu_ms"])
            a["share"] = share
            a["cpu_per_op_ms"] = round(statistics.median(r["cpu_ms"]), 2)
            periods = s1.get("nr_periods", 0) - s0.get("nr_periods", 0)
            throttled = s1.get("nr_throttled", 0) - s0.get("nr_throttled", 0)
            a["throttled_periods"] = round(throttled / periods, 3) if periods else None
            rows_out.append(a)
        per_period[p_ms] = rows_out
    out["periods"] = {f"{p:g}": v for p, v in per_period.items()}
    out["closest_ms"] = closest_to_a_slower_cpu(per_period)
    return out


def report(res: dict[str, Any]) -> str:
    u = res["uncapped_ms"]
    lines = [
        f"shares {res['shares']}, {res['cgroup']}, {res['cores']} cores; op: conv "
        f"{CHANNELS}->{CHANNELS} 3x3 on {res['rows']}x{WIDTH}; uncapped median "
        f"{u['before']:.2f} ms before, {u['after']:.2f} ms after; {res['seconds']:g} s per round",
        f"{'period':>6} {'share':>6} {'expect':>7} {'median':>7} {'ratio':>6} {'p10-p90':>12} "
        f"{'p99':>6} {'burst':>6} {'paused':>6} {'|log|':>6} {'thru':>5} {'thrott':>6} | "
        f"{'own ratio':>9} {'p10-p90':>12} {'|log|':>6} {'got':>5}",
    ]
    for p, rows in res["periods"].items():
        for a in rows:
            th = "-" if a["throttled_periods"] is None else f"{a['throttled_periods']:.2f}"
            lines.append(
                f"{p:>4}ms {a['share']:6.4f} {a['expected_ms']:7.1f} {a['median_ms']:7.1f} "
                f"{a['ratio_median']:6.2f} {a['ratio_p10']:5.2f}-{a['ratio_p90']:<6.2f} "
                f"{a['ratio_p99']:6.2f} {a['burst_fraction']:6.2f} {a['paused_fraction']:6.2f} "
                f"{a['mean_abs_log']:6.3f} {a['throughput_share'] / a['share']:5.2f} {th:>6} | "
                f"{a['own_ratio_median']:9.2f} "
                f"{a['own_ratio_p10']:5.2f}-{a['own_ratio_p90']:<6.2f} "
                f"{a['own_mean_abs_log']:6.3f} {a['got_over_share']:5.2f}"
            )
        mean = statistics.fmean(a["mean_abs_log"] for a in rows)
        own = statistics.fmean(a["own_mean_abs_log"] for a in rows)
        lines.append(
            f"{p:>4}ms mean |log(latency / expected)| over the peers: {mean:.3f} "
            f"(against each op's own CPU time / share: {own:.3f})"
        )
    lines.append(f"closest to a slower CPU: {res['closest_ms']:g} ms")
    lines.append(
        "ratio: latency / (uncapped / share), 1 = a slower CPU; burst: < 0.5x (ran at full "
        "speed); paused: > 2x (waited out a throttle); thru: throughput / share; thrott: "
        "fraction of periods throttled; own ratio: latency * share / the op's own CPU time "
        "(no uncapped reference needed); got: CPU time / wall time over the round / share"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=28, help="rows of the 256x56 map per op")
    p.add_argument("--periods", default="100,20,10", help="CFS periods to compare, ms")
    p.add_argument("--seconds", type=float, default=8.0, help="per round (per period)")
    p.add_argument("--quick", action="store_true", help="2 s rounds: a check of the code path")
    p.add_argument("--layout", choices=["auto", "headroom", "testbed"], default="auto")
    p.add_argument("--shares", help="explicit shares, e.g. 0.4,0.2667,0.2,0.1333")
    p.add_argument("--cgroup", choices=["auto", "v1", "v2"], default="auto")
    p.add_argument("--cpu-weight", type=int, default=8192)
    p.add_argument("--json", action="store_true", help="last line: the results as JSON")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.rows)
        return 0
    if args.quick:
        args.seconds = 2.0
    cores = len(machine_cores())
    if args.shares:
        shares = [float(s) for s in args.shares.split(",")]
    else:
        layout = default_layout(cores) if args.layout == "auto" else args.layout
        shares = list(ISSUE_SHARES)
        if layout == "headroom":
            shares = headroom_shares(shares, cores)
    periods = [float(x) for x in args.periods.split(",") if x]
    t0 = time.monotonic()
    res = measure(shares, periods, args.seconds, args.rows, args.cgroup, args.cpu_weight)
    print(report(res))
    progress(f"{time.monotonic() - t0:.0f} s in all")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
