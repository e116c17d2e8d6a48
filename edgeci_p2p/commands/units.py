"""``edgeci units``: the unit chain of a model with shapes, FLOPs, bytes and receptive field."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgeci_p2p.commands import MODELS_HELP


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "units", help="list a model's units (cut points) with shapes, FLOPs and bytes"
    )
    p.add_argument("--model", default="resnet34", help=MODELS_HELP)
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=(224, 224))
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeci_p2p.core.geometry import full_flops, head_flops, receptive_field, region_bytes
    from edgeci_p2p.core.geometry import full_region as whole
    from edgeci_p2p.nn.models import check_model_name
    from edgeci_p2p.nn.spec import spec_for

    check_model_name(args.model)
    h, w = args.size
    spec = spec_for(args.model, h, w)
    rows: list[dict[str, Any]] = []
    for u in spec.units:
        c, oh, ow = u.out_shape
        rows.append(
            {
                "index": u.index,
                "name": u.name,
                "kind": u.kind,
                "out_shape": [c, oh, ow],
                "flops": full_flops(spec, u.index, u.index + 1),
                "out_bytes": region_bytes(c, whole(oh, ow)),
                "receptive_field": list(receptive_field(spec, u.index + 1)),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{spec.name} at {h}x{w}: {spec.n_units} units + head")
    print(
        f"{'#':>3} {'unit':<24} {'kind':<6} {'output':>15} {'MFLOPs':>10} {'out KB':>9} {'RF':>9}"
    )
    for r in rows:
        shape = "x".join(str(v) for v in r["out_shape"])
        rf = "x".join(str(v) for v in r["receptive_field"])
        print(
            f"{r['index']:>3} {r['name']:<24} {r['kind']:<6} {shape:>15} "
            f"{r['flops'] / 1e6:>10.1f} {r['out_bytes'] / 1024:>9.1f} {rf:>9}"
        )
    total = sum(r["flops"] for r in rows) + head_flops(spec)
    print(f"    head: {head_flops(spec) / 1e6:.1f} MFLOPs; total {total / 1e9:.2f} GFLOPs")
    return 0
