"""Packed conv weights against plain ones, side by side in one process (a benchmark:
prints figures, asserts nothing; ``nn/packed.py`` says why packing matters).

Two executors of the same seeded model, one with its convs packed as every loader
now packs them, one plain as before. Alternating between the two (1 torch thread,
the minimum of ``--runs`` passes), it times:

1. the whole model (what ``--strategy local`` runs);
2. every conv unit of VGG-16 on strips of 1, 2 and 4 output rows, and the sum over
   the units: the per-call cost a thin strip pays;
3. one peer's thin strip of the whole feature extractor, stage by stage: the rows a
   0.13-core peer of the headroom layout gets (13 %), as three edge-first pieces
   per stage when ``--pieces 3``.

and checks what packing does to the numbers: the largest difference of the logits
(packed against plain), and whether tiles of the packed model equal its unsplit
maps bit for bit.

    .venv/bin/python benchmarks/packed_conv.py [--models vgg16,resnet34] [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torchvision

from edgeci_p2p.core.geometry import (
    Region,
    Span,
    full_region,
    proportional_strips,
    row_strips,
    trace,
)
from edgeci_p2p.nn.executor import FusedExecutor, crop
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import load_model
from edgeci_p2p.nn.packed import available


def best_pair(a: Callable[[], object], b: Callable[[], object], runs: int) -> tuple[float, float]:
    """Minimum seconds of ``a`` and of ``b``, alternated so both see the same machine."""
    ta, tb = [], []
    a(), b()  # warm: kernels created, pages touched
    for _ in range(runs):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def executors(name: str) -> tuple[FusedExecutor, FusedExecutor]:
    packed = load_model(name, use_hub_cache=False)
    plain = torchvision.models.get_model(name, weights=None).eval()
    plain.load_state_dict(packed.module.state_dict())  # the plain weights, bit for bit
    spec = describe(packed.module, name, 224, 224, packed.fingerprint)
    return FusedExecutor(packed.module, spec), FusedExecutor(plain, spec)


def strip_of(h: int, w: int, share: float) -> list:  # type: ignore[type-arg]
    """The first strip of a split giving ``share`` of the rows to one peer."""
    parts = proportional_strips(h, [share, 1.0 - share])
    return row_strips(h, w, [parts[0].stop])[:1]


@torch.no_grad()
def measure(name: str, runs: int, share: float, pieces: int) -> dict[str, object]:
    pk, pl = executors(name)
    spec = pk.spec
    x = torch.randn(1, *spec.input_shape, generator=torch.Generator().manual_seed(7))
    out: dict[str, object] = {"model": name}
    a, b = best_pair(lambda: pk.model(x), lambda: pl.model(x), runs)
    out["whole_ms"] = {"packed": a * 1e3, "plain": b * 1e3}
    ref_pk, ref_pl = pk.model(x), pl.model(x)
    out["logits_max_abs_diff"] = float((ref_pk - ref_pl).abs().max())
    out["logits_max_abs"] = float(ref_pl.abs().max())
    maps = pk.activations(x)
    exact = True
    for u in range(spec.n_units):
        _, h, w = spec.shape_at(u + 1)
        for r in strip_of(h, w, 0.37) + row_strips(h, w, [h // 2]):
            tr = trace(spec, u, u + 1, r)
            whole = full_region(*spec.shape_at(u)[1:])
            got = pk.run_trace(tr, crop(maps[u], whole, tr.need), tr.need)
            exact &= torch.equal(got, crop(maps[u + 1], full_region(h, w), r))
    out["tiles_equal_unsplit_bitwise"] = exact
    # Per unit, thin strips.
    units: list[dict[str, object]] = []
    if name.startswith("vgg"):
        for u, unit in enumerate(spec.units):
            if not any(op.kind == "conv" for op in unit.ops):
                continue
            _, h, w = spec.shape_at(u + 1)
            row: dict[str, object] = {"unit": unit.name, "shape": list(spec.shape_at(u + 1))}
            for rows in (1, 2, 4):
                r = row_strips(h, w, [rows])[0]
                tr = trace(spec, u, u + 1, r)
                slab = maps[u][:, :, tr.need.rows.start : tr.need.rows.stop].contiguous()
                ta, tb = best_pair(
                    lambda ex=pk, tr=tr, s=slab: ex.run_trace(tr, s, tr.need),  # type: ignore[misc]
                    lambda ex=pl, tr=tr, s=slab: ex.run_trace(tr, s, tr.need),  # type: ignore[misc]
                    runs,
                )
                row[f"{rows}_rows_ms"] = {"packed": ta * 1e3, "plain": tb * 1e3}
            units.append(row)
        out["units"] = units
    # One thin peer's strip through every unit, each unit cut into ``pieces`` calls.
    calls: list[tuple[object, torch.Tensor]] = []
    for u in range(spec.n_units):
        _, h, w = spec.shape_at(u + 1)
        (r,) = strip_of(h, w, share)
        cuts = [max(1, r.rows.size * k // pieces) for k in range(1, pieces)]
        sub = row_strips(r.rows.size, w, sorted(set(c for c in cuts if 0 < c < r.rows.size)))
        for s in sub:
            piece = Region(Span(r.rows.start + s.rows.start, r.rows.start + s.rows.stop), r.cols)
            tr = trace(spec, u, u + 1, piece)
            calls.append((tr, maps[u][:, :, tr.need.rows.start : tr.need.rows.stop].contiguous()))

    def run_all(ex: FusedExecutor) -> None:
        for tr, slab in calls:
            ex.run_trace(tr, slab, tr.need)  # type: ignore[arg-type]

    a, b = best_pair(lambda: run_all(pk), lambda: run_all(pl), runs)
    out["thin_strip"] = {
        "share": share,
        "calls": len(calls),
        "packed_ms": a * 1e3,
        "plain_ms": b * 1e3,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vgg16,resnet34")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--share", type=float, default=0.13, help="the thin peer's share of rows")
    ap.add_argument("--pieces", type=int, default=3, help="calls per unit (edge-first pieces)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not available():
        print("packed convolutions are not available here (EDGECI_PACKED_CONV=0?)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results = []
    for name in args.models.split(","):
        print(f"{name}: measuring ({args.runs} alternating passes)...", file=sys.stderr)
        res = measure(name, args.runs, args.share, args.pieces)
        results.append(res)
        if args.json:
            continue
        w = res["whole_ms"]
        assert isinstance(w, dict)
        print(
            f"\n{name}: whole model  packed {w['packed']:.1f} ms  plain {w['plain']:.1f} ms "
            f"(x{w['plain'] / w['packed']:.2f})"
        )
        print(
            f"  logits: max |packed - plain| {res['logits_max_abs_diff']:.2e} "
            f"(largest |logit| {res['logits_max_abs']:.2f}); tiles equal the unsplit "
            f"packed maps bit for bit: {res['tiles_equal_unsplit_bitwise']}"
        )
        t = res["thin_strip"]
        assert isinstance(t, dict)
        print(
            f"  a {t['share']:.0%} strip of every unit in {t['calls']} calls: packed "
            f"{t['packed_ms']:.1f} ms  plain {t['plain_ms']:.1f} ms "
            f"(x{t['plain_ms'] / t['packed_ms']:.2f})"
        )
        for row in res.get("units", []):  # type: ignore[attr-defined]
            cells = "  ".join(
                f"{k[:-8]} rows {v['packed']:.2f}/{v['plain']:.2f}"
                for k, v in row.items()
                if k.endswith("_rows_ms")
            )
            print(f"  {row['unit']:<22} {row['shape']!s:<16} {cells}  (ms packed/plain)")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
