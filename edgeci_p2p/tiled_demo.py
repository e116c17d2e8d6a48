"""The fused executor on a real photo, checked against the unsplit model.

Run it with ``python -m edgeci_p2p.tiled_demo`` (it was ``make demo`` before the daemon).
Runs ResNet-34 and VGG-16 as two fused blocks, each block's output cut into 4
uneven row strips (as 4 devices of uneven speed would get), stitches the strips,
runs the head, and compares the logits with the unsplit model's.
"""

from __future__ import annotations

import os
import sys

import torch

from edgeci_p2p.core.geometry import halo_overhead, proportional_strips, row_strips, trace
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.images import load_input, sample_image_path, top_k
from edgeci_p2p.nn.models import categories, load_model

SHARES = (0.4, 0.3, 0.2, 0.1)
"""Relative speeds of four imaginary devices: strip heights follow them."""


def _stages(spec: ModelSpec) -> list[tuple[int, int]]:
    """Two fused blocks: up to the first 28-row map, then the rest (fusing all 18 units
    in one block would recompute ~3x the FLOPs in halos; the planner picks real cuts)."""
    n = spec.n_units
    mid = next(b for b in range(1, n) if spec.shape_at(b)[1] <= 28)
    return [(0, mid), (mid, n)]


def run_model(name: str, x: torch.Tensor) -> tuple[float, bool]:
    lm = load_model(name, os.environ.get(f"EDGECI_WEIGHTS_{name}"))
    _, _, h, w = x.shape
    spec = describe(lm.module, name, h, w, lm.fingerprint)
    ex = FusedExecutor(lm.module, spec)
    weights = "pretrained " + lm.source if lm.pretrained else "seeded random weights"
    print(f"\n== {name} ({weights}; fingerprint {lm.fingerprint[:12]})")

    y = x
    for start, stop in _stages(spec):
        _, oh, ow = spec.shape_at(stop)
        cuts = [s.stop for s in proportional_strips(oh, SHARES)[:-1]]
        regions = row_strips(oh, ow, cuts)
        strips = ", ".join(
            f"[{r.rows.start},{r.rows.stop})<-[{t.need.rows.start},{t.need.rows.stop})"
            for r in regions
            for t in [trace(spec, start, stop, r)]
        )
        print(
            f"   units {spec.units[start].name}..{spec.units[stop - 1].name}: "
            f"{oh} output rows in 4 strips (out<-in rows) {strips}; "
            f"halo overhead {100 * halo_overhead(spec, start, stop, regions):.1f}%"
        )
        y = ex.run_tiled(start, stop, regions, y)
    logits = ex.head(y)
    with torch.no_grad():
        ref = lm.module(x)

    for i, (idx, label, p) in enumerate(top_k(logits, categories(name)), 1):
        print(f"   top{i}: {label:<28} p={p:.4f} (class {idx})")
    diff = (logits - ref).abs().max().item()
    print(
        f"   max |tiled - unsplit| over the logits: {diff:.3g} "
        f"(largest logit {ref.abs().max().item():.3g})"
    )
    return diff, lm.pretrained


def main() -> int:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    photo = sample_image_path()
    print(f"edgeci-p2p demo: fused-tile execution on {photo.name} (224x224 centre crop)")
    x = load_input(photo)
    results = [run_model(name, x) for name in ("resnet34", "vgg16")]
    worst = max(d for d, _ in results)
    if not all(pretrained for _, pretrained in results):
        print(
            "\nNote: without a weights file the weights are seeded random ones, identical on "
            "every peer,\nso the class names above are meaningless. To use ImageNet weights, "
            "put torchvision's files\nin the torch hub cache (resnet34-b627a593.pth, "
            "vgg16-397923af.pth) or set\nEDGECI_WEIGHTS_resnet34=/path/to/file.pth."
        )
    ok = worst < 1e-3
    print(
        f"\n{'VERIFIED' if ok else 'MISMATCH'}: tiled output equals the unsplit model "
        f"(max abs diff {worst:.3g})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
