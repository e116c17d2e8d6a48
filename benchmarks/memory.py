"""Resident memory of a peer serving VGG-16, ResNet-34, both, and both under a memory
limit: at idle, after convolution tiles only, after running heads, and its start-up
peak (issue 24).

For each configuration, starts one ``edgeci-peer --threads 1`` (the measured peer, P)
and, in this process, an auctioneer daemon connected to it. Forced plans (no auction)
put every unit of a request on P, the models alternating: first with the head kept
on the auctioneer (P serves only convolution tiles), then with the head on P (a head
P refuses for memory runs on the auctioneer and is reported as refused). P's VmRSS
and VmHWM (the peak) are read from ``/proc/<pid>/status`` at idle (VmHWM there is the
start-up peak), and 3 s after the tiles and after the heads (once P has trimmed its
heap, as it does after 2 s idle), with what P holds by its own accounting
(``peers``). In the same run two more processes import what a peer imports and
report their VmRSS: ``torch`` + ``torchvision`` alone, and those with the peer's own
modules; the *weights part* is P's VmRSS less the latter.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/memory.py [--requests 2] [--json]
        [--configs vgg16,resnet34,both,limit] [--limit 100M]

Prints a table per configuration and a closing note with every figure; ``--json``
adds a last line. Each peer is always stopped (try/finally).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeci_p2p.aio.client import Client
from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.daemon import Decision, PeerDaemon
from edgeci_p2p.core.plan import Plan, single_stage, validate
from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.meminfo import parse_size, vm_rss
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.weights import ModelWeights
from edgeci_p2p.wire.messages import InferRequest

MODELS = ("vgg16", "resnet34")
MB = 1e6

IMPORTS = {
    "torch+torchvision": "import torch, torchvision",
    "peer imports": "import torch, torchvision; import edgeci_p2p.peer_cli, "
    "edgeci_p2p.aio.daemon, edgeci_p2p.nn.runtime",
}


def imported_rss(code: str) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a fresh interpreter after ``code`` (one torch
    thread, like the peer)."""
    probe = (
        f"{code}; import torch; torch.set_num_threads(1); print(open('/proc/self/status').read())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return _fields(out.stdout)


def _fields(text: str) -> dict[str, int]:
    got = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            got[key] = int(rest.split()[0]) * 1024
    return got


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (the peak), RssAnon (heap, weights) and RssFile (code and files
    mapped) of process ``pid``, bytes."""
    return _fields(Path(f"/proc/{pid}/status").read_text())


async def connected(d: PeerDaemon, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.parts.mesh.conns:
            return next(iter(d.parts.mesh.conns))
        await asyncio.sleep(0.1)
    raise RuntimeError("the auctioneer never connected to the measured peer")


async def run_on_peer(d: PeerDaemon, peer: str, model: str, head_there: bool, rid: str) -> bool:
    """Every unit of one request on ``peer``; the head there too or here. Returns
    whether the head ran where it was sent (a peer may refuse it: "memory")."""
    x = to_input(decode(sample_image_path().read_bytes()), "224")
    spec = d.store.spec(model, 224, 224)
    stages = (single_stage(spec, 0, spec.n_units, 1),)
    plan = Plan(
        spec.name,
        "edgeci",
        "bench",
        (d.node_id, peer),
        stages,
        0,
        head_device=1 if head_there else None,
    )
    validate(plan, spec)
    assert d.auctioneer is not None
    decision = Decision(plan, d.auctioneer.local_decision(spec, None).testbed, None)
    req = InferRequest(rid, model, tensor=x.numpy(), strategy="edgeci")
    res = await d.execute(req, decision, {}, x, d.store.get(model).fingerprint, time.perf_counter())
    assert len(res.plan["nodes"]) == 2
    return not float(res.timing["retries"])


async def held(port: int) -> tuple[float, dict[str, list[str]]]:
    """What the peer on ``port`` says it holds: MB of weights, parts by model."""
    async with Client(f"127.0.0.1:{port}") as c:
        me = next(p for p in await c.peers() if p.get("self"))
    return float(me["weights_mb"]), dict(me["holds"])


SETTLE_S = 3.0
"""Seconds between a phase's last request and reading VmRSS: a peer gives its heap's
free pages back after 2 s idle (``meminfo.trim_heap``), as it would between bursts."""

CONFIGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "vgg16": (("vgg16",), False),
    "resnet34": (("resnet34",), False),
    "both": (MODELS, False),
    "limit": (MODELS, True),
}
"""Name -> (models served, whether under --limit)."""


def _phase(fig: dict[str, Any], phase: str, st: dict[str, int]) -> None:
    fig[phase], fig[f"{phase} peak"] = st["VmRSS"] / MB, st["VmHWM"] / MB
    fig[f"{phase} anon"], fig[f"{phase} file"] = st["RssAnon"] / MB, st["RssFile"] / MB


async def measure_one(models: tuple[str, ...], limit: str | None, requests: int) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    # Off mDNS: the auctioneer below connects to it directly, and a peer announced on
    # loopback would be seen by any other cluster (a test suite) on this machine.
    extra = ["--no-mdns", *(["--memory-limit", limit] if limit else [])]
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_peer(str(Path(tmp) / "p"), "measured", models=",".join(models), extra=extra)
        d: PeerDaemon | None = None
        try:
            port = ready_port(proc)
            await asyncio.sleep(2.0)  # let start-up settle (profile, first heartbeats)
            _phase(fig, "idle", status(proc.pid))
            fig["startup peak"] = fig["idle peak"]
            fig["idle held"], fig["idle holds"] = await held(port)
            d = PeerDaemon(
                PeerConfig(
                    host="127.0.0.1",
                    port=0,
                    models=list(models),
                    no_mdns=True,
                    peers=[("127.0.0.1", port)],
                    host_id="bench-auctioneer",
                )
            )
            await d.start()
            peer = await connected(d)
            for k in range(requests):
                for m in models:  # alternating: under a limit the peer swaps models
                    await run_on_peer(d, peer, m, False, f"tiles-{m}-{k}")
            await asyncio.sleep(SETTLE_S)
            _phase(fig, "after tiles", status(proc.pid))
            fig["after tiles held"], fig["after tiles holds"] = await held(port)
            refused: set[str] = set()
            for k in range(requests):
                for m in models:
                    if not await run_on_peer(d, peer, m, True, f"head-{m}-{k}"):
                        refused.add(m)
                        # The auctioneer bans a peer whose head failed for 1 s: the next
                        # head would not even be sent to it.
                        await asyncio.sleep(1.5)
            fig["heads refused"] = sorted(refused)
            await asyncio.sleep(SETTLE_S)
            _phase(fig, "after heads", status(proc.pid))
            fig["after heads held"], fig["after heads holds"] = await held(port)
        finally:
            if d is not None:
                await d.stop()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return fig


async def measure(requests: int, configs: list[str], limit: str) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    for label, code in IMPORTS.items():
        got = imported_rss(code)
        fig[f"import {label}"] = got["VmRSS"] / MB
        fig[f"import {label} anon"] = got["RssAnon"] / MB
        fig[f"import {label} file"] = got["RssFile"] / MB
    for m in MODELS:
        w = ModelWeights(m)
        fig[f"{m} features"] = w.nbytes(w.feature_parts) / MB
        fig[f"{m} head"] = w.part_bytes["head"] / MB
    base = fig["import peer imports"]
    for name in configs:
        models, limited = CONFIGS[name]
        one = await measure_one(models, limit if limited else None, requests)
        for k in PHASES:
            one[f"{k} weights part"] = one[k] - base
            # Of it: the heap (weights, activations kept, Python objects) and the code
            # and files the work paged in beyond what the imports had (torch's kernels).
            one[f"{k} anon part"] = one[f"{k} anon"] - fig["import peer imports anon"]
            one[f"{k} file part"] = one[f"{k} file"] - fig["import peer imports file"]
        fig[name] = one
    fig["bench process"] = (vm_rss() or 0) / MB
    return fig


PHASES = ("idle", "after tiles", "after heads")


def _holds(h: dict[str, list[str]]) -> str:
    return "; ".join(f"{m}: {'+'.join(p) or '-'}" for m, p in h.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2, help="requests per model and phase")
    ap.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"configurations to measure, of {', '.join(CONFIGS)}",
    )
    ap.add_argument(
        "--limit",
        default="100M",
        help="--memory-limit of the 'limit' configuration (default 100M: either model's "
        "features, not both)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; of {', '.join(CONFIGS)}")
    fig = asyncio.run(measure(args.requests, configs, args.limit))
    for name in configs:
        one = fig[name]
        models, limited = CONFIGS[name]
        title = f"peer serving {'+'.join(models)}" + (
            f", --memory-limit {args.limit}" if limited else ""
        )
        print(
            f"{title:<44} {'VmRSS MB':>9} {'peak MB':>8} {'less imports':>13} "
            f"{'heap+code':>10} {'held MB':>8}  holds"
        )
        for k in PHASES:
            split = f"{one[k + ' anon part']:.0f}+{one[k + ' file part']:.0f}"
            print(
                f"  {k:<42} {one[k]:>9.0f} {one[k + ' peak']:>8.0f} "
                f"{one[k + ' weights part']:>13.0f} {split:>10} {one[k + ' held']:>8.0f}  "
                f"{_holds(one[k + ' holds'])}"
            )
        refused = one["heads refused"]
        print(
            f"  start-up peak (VmHWM at idle) {one['startup peak']:.0f} MB"
            + (f"; heads refused ('memory'): {', '.join(refused)}" if refused else "")
        )
        print()
    print(
        f"Imports, in fresh interpreters of this run: torch+torchvision "
        f"{fig['import torch+torchvision']:.0f} MB, with the peer's modules "
        f"{fig['import peer imports']:.0f} MB (subtracted above; heap+code splits the rest: "
        "RssAnon, where weights live, and RssFile, code paged in beyond the imports). "
        "Weights (float32, "
        "parameter counts x 4 bytes): "
        + ", ".join(
            f"{m} features {fig[m + ' features']:.0f} MB + head {fig[m + ' head']:.0f} MB"
            for m in MODELS
        )
        + ". "
        + " ".join(_verdict(name, fig[name], args.limit) for name in configs)
    )
    if args.json:
        print(json.dumps(_rounded(fig)))
    return 0


def _verdict(name: str, one: dict[str, Any], limit: str) -> str:
    """The after-tiles weights part against 100 MB and, under a limit, against it."""
    part = one["after tiles weights part"]
    out = f"{name}: after tiles {part:.0f} MB ({'within' if part <= 100 else 'OVER'} 100"
    if CONFIGS[name][1]:
        cap = parse_size(limit) / MB
        out += f"; {'within' if part <= cap else 'OVER'} its limit, {cap:.1f} MB"
    return out + f"), start-up peak {one['startup peak']:.0f} MB."


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 1)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


if __name__ == "__main__":
    sys.exit(main())
