"""``edgeci infer --verify`` for every graph-described model through a 3-peer loopback
cluster (issue 23): exact at 224 and at a native non-square size?

Starts three ``edgeci-peer`` processes on 127.0.0.1 (as ``make demo`` does, a fresh
cluster key, one torch thread each, each its own ``--host-id`` so the planner treats
them as three machines and really distributes), then per model, size and strategy runs
``edgeci infer --verify --json`` and prints one row: the largest logit difference
from the unsplit model against ``assert_close``'s float32 tolerance scaled to the
model's largest logit (``1e-5 + 1.3e-6 * max|logit|``), the plan's nodes and stages.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/verify_models.py [--models a,b] [--json]

A check, not a timing benchmark: the latencies it prints are those of three peers
sharing one machine's cores.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from edgeci_p2p.demo import _edgeci, ready, start_peer, stop_peers
from edgeci_p2p.nn.images import sample_image_path

MODELS = (
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
)
NATIVE = (320, 240)
"""A camera's 4:3 frame (width, height): the native non-square size."""


def tolerance(max_ref: float) -> float:
    return 1e-5 + 1.3e-6 * max_ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--strategies", default="edgeci,modnn")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.models.split(",")
    rows: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="edgeci-verify-") as tmp:
        native = Path(tmp) / "native.png"
        Image.open(sample_image_path()).convert("RGB").resize(NATIVE).save(native)
        images = {"224": str(sample_image_path()), "native": str(native)}
        key = f"{tmp}/cluster.key"
        Path(key).write_text(secrets.token_hex(16))
        try:
            for i in range(3):
                extra = ["--cluster-key-file", key, "--host-id", f"verify-host-{i}"]
                served = ",".join(models)
                procs.append(start_peer(f"{tmp}/p{i}", f"verify-{i}", served, None, extra))
            ports = [ready(p, 600)[0] for p in procs]
            entry = f"127.0.0.1:{ports[0]}"
            deadline = time.monotonic() + 60
            while True:
                r = _edgeci("peers", "--peer", entry, "--json", key=key)
                view = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []
                if sum(1 for p in view if p.get("alive")) == 3:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"peers did not find each other: {r.stderr or view}")
                time.sleep(0.5)
            for model in models:
                for size, image in images.items():
                    for strategy in args.strategies.split(","):
                        r = _edgeci(
                            "infer", "--peer", entry, "--model", model, "--strategy", strategy,
                            "--size", size, "--verify", "--json", image, key=key,
                        )  # fmt: skip
                        if r.returncode != 0:
                            rows.append({"model": model, "size": size, "strategy": strategy,
                                         "error": r.stderr.strip()[-300:]})  # fmt: skip
                            print(rows[-1], flush=True)
                            continue
                        out = json.loads(r.stdout.strip().splitlines()[-1])
                        plan = out["plan"]
                        row = {
                            "model": model,
                            "size": size,
                            "strategy": strategy,
                            "max_abs_diff": out["max_abs_diff"],
                            "max_abs_ref": out["max_abs_ref"],
                            "exact": out["max_abs_diff"] <= tolerance(out["max_abs_ref"]),
                            "nodes": len(set(plan.get("nodes", []))),
                            "stages": len(plan.get("stages", [])),
                            "ms": round(out["timing"]["total"] * 1000),
                        }
                        rows.append(row)
                        print(
                            f"{model:<19} {size:<6} {strategy:<8} diff {row['max_abs_diff']:.2e}"
                            f" (tol {tolerance(row['max_abs_ref']):.2e}, max|logit| "
                            f"{row['max_abs_ref']:.3g}) {'EXACT' if row['exact'] else 'MISMATCH'}"
                            f"  {row['nodes']} nodes, {row['stages']} stages, {row['ms']} ms",
                            flush=True,
                        )
        finally:
            stop_peers(procs, timeout=30)
    if args.json:
        print(json.dumps(rows))
    return 0 if rows and all(r.get("exact") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
