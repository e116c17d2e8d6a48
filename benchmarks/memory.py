"""Resident memory of a peer serving VGG-16 and ResNet-34: idle, after convolution
tiles only, after running a head (issue 24).

Starts one ``edgeci-peer --threads 1 --models vgg16,resnet34`` (the measured peer,
P) and, in this process, an auctioneer daemon connected to it. Forced plans (no
auction) put every unit of a request on P: first with the head kept on the
auctioneer (P serves only convolution tiles), then with the head on P. P's VmRSS
(and VmHWM, the peak) is read from ``/proc/<pid>/status`` at idle, after the tiles
and after the heads. In the same run two more processes import what a peer imports
and report their VmRSS: ``torch`` + ``torchvision`` alone, and those with the
peer's own modules; the *weights part* is P's VmRSS less the latter.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/memory.py [--requests 2] [--json]

Prints a table and a closing note with every figure; ``--json`` adds a last line.
The peer is always stopped (try/finally).
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

from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.daemon import Decision, PeerDaemon
from edgeci_p2p.core.plan import Plan, single_stage, validate
from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.meminfo import vm_rss
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


def imported_rss(code: str) -> int:
    """VmRSS of a fresh interpreter after ``code`` (one torch thread, like the peer)."""
    probe = (
        f"{code}; import torch; torch.set_num_threads(1); "
        "from edgeci_p2p.meminfo import vm_rss; print(vm_rss())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid``, bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    got = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(rest.split()[0]) * 1024
    return got["VmRSS"], got["VmHWM"]


async def connected(d: PeerDaemon, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.parts.mesh.conns:
            return next(iter(d.parts.mesh.conns))
        await asyncio.sleep(0.1)
    raise RuntimeError("the auctioneer never connected to the measured peer")


async def run_on_peer(d: PeerDaemon, peer: str, model: str, head_there: bool, rid: str) -> None:
    """Every unit of one request on ``peer``; the head there too or here."""
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
    nodes = res.plan["nodes"]
    if head_there and float(res.timing["retries"]):
        raise RuntimeError(f"{rid}: the head did not run on the measured peer")
    assert len(nodes) == 2


async def measure(requests: int, models: tuple[str, ...] = MODELS) -> dict[str, float]:
    fig: dict[str, float] = {}
    for label, code in IMPORTS.items():
        fig[f"import {label}"] = imported_rss(code) / MB
    for m in models:
        w = ModelWeights(m)
        fig[f"{m} features"] = w.nbytes(w.feature_parts) / MB
        fig[f"{m} head"] = w.part_bytes["head"] / MB
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_peer(str(Path(tmp) / "p"), "measured", models=",".join(models))
        d: PeerDaemon | None = None
        try:
            port = ready_port(proc)
            await asyncio.sleep(2.0)  # let start-up settle (profile, first heartbeats)
            fig["idle"], fig["idle peak"] = (v / MB for v in status(proc.pid))
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
            for m in models:
                for k in range(requests):
                    await run_on_peer(d, peer, m, False, f"tiles-{m}-{k}")
            fig["after tiles"], fig["after tiles peak"] = (v / MB for v in status(proc.pid))
            for m in models:
                for k in range(requests):
                    await run_on_peer(d, peer, m, True, f"head-{m}-{k}")
            fig["after heads"], fig["after heads peak"] = (v / MB for v in status(proc.pid))
        finally:
            if d is not None:
                await d.stop()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = fig["import peer imports"]
    for k in ("idle", "after tiles", "after heads"):
        fig[f"{k} weights part"] = fig[k] - base
    fig["bench process"] = (vm_rss() or 0) / MB
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2, help="requests per model and phase")
    ap.add_argument("--models", default=",".join(MODELS), help="models the peer serves")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    fig = asyncio.run(measure(args.requests, tuple(args.models)))
    title = f"peer serving {','.join(args.models)} (--threads 1)"
    print(f"{title:<44} {'VmRSS MB':>9} {'peak MB':>8} {'less imports MB':>16}")
    for k in ("idle", "after tiles", "after heads"):
        print(f"{k:<44} {fig[k]:>9.0f} {fig[k + ' peak']:>8.0f} {fig[k + ' weights part']:>16.0f}")
    print()
    print(
        f"Imports, in fresh interpreters of this run: torch+torchvision "
        f"{fig['import torch+torchvision']:.0f} MB, with the peer's modules "
        f"{fig['import peer imports']:.0f} MB (subtracted above). Weights: "
        + ", ".join(
            f"{m} features {fig[m + ' features']:.0f} MB + head {fig[m + ' head']:.0f} MB"
            for m in args.models
        )
        + f". A peer that ran no head: weights part {fig['after tiles weights part']:.0f} MB "
        f"({'within' if fig['after tiles weights part'] <= 100 else 'OVER'} the 100 MB goal); "
        f"after heads {fig['after heads weights part']:.0f} MB. The peak at idle "
        f"({fig['idle peak']:.0f} MB) includes drawing every weight once at start to hash "
        "the fingerprint."
    )
    if args.json:
        print(json.dumps({k: round(v, 1) for k, v in fig.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
