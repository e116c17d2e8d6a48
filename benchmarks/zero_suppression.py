"""Zero suppression on real maps: bytes, CPU and link time per cut point.

For every cut point of the model (the maps a plan may send), on the bundled sample
image with this peer's weights (seeded unless ``--weights``): the share of zeros,
the bytes a session sends (``payload_nbytes``) against the plain float32 bytes,
the time to send it through a ``Session`` pair and decode it (best of
``--repeat``, one thread), and the link time at ``--mbit`` both ways. The
decoded map is checked bit for bit against the original.

    .venv/bin/python benchmarks/zero_suppression.py [--model vgg16] [--mbit 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from edgeci_p2p.core.geometry import full_region, trace
from edgeci_p2p.nn.images import decode, sample_image_path, to_input
from edgeci_p2p.nn.runtime import ModelStore
from edgeci_p2p.wire.messages import TileResult
from edgeci_p2p.wire.session import Established, Session, SessionConfig
from edgeci_p2p.wire.tensors import payload_nbytes


def open_pair(suppress: bool) -> tuple[Session, Session]:
    cfg = {} if suppress else {"zero_suppress_bytes": None}
    a, b = Session(SessionConfig("A", **cfg)), Session(SessionConfig("B"))  # type: ignore[arg-type]
    b.receive_data(a.start())
    a.receive_data(b.start())
    assert isinstance(a.next_event(), Established) and isinstance(b.next_event(), Established)
    return a, b


def round_trip_s(x: np.ndarray, suppress: bool, repeat: int) -> float:
    """Best seconds for send + receive + decode of ``x`` as a tile result."""
    a, b = open_pair(suppress)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        b.receive_data(a.send(TileResult("r", 0, x, 0.0)))
        msg = b.next_event()
        best = min(best, time.perf_counter() - t0)
        assert isinstance(msg, TileResult) and msg.output.tobytes() == x.tobytes()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--weights", help="torchvision weights file (default: seeded weights)")
    ap.add_argument("--mbit", type=float, default=100.0, help="link rate for the link times")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = ModelStore([args.model], {args.model: args.weights} if args.weights else None)
    x = to_input(decode(sample_image_path().read_bytes()), "224")
    ex = store.executor(args.model, 224, 224)
    spec = ex.spec
    rate = args.mbit * 1e6 / 8
    rows = []
    cur = x
    print(f"{args.model} ({store.get(args.model).source}), sample image, {args.mbit:g} Mbit/s")
    print(
        f"{'cut':>4} {'unit':<14} {'shape':<16} {'zeros':>6} {'plain KB':>9} {'sent KB':>8} "
        f"{'plain ms':>9} {'supp ms':>8} {'link ms':>8} {'->':>2} {'ms':>6}"
    )
    for k in range(1, spec.n_units + 1):
        unit = spec.units[k - 1]
        _, h_in, w_in = spec.shape_at(k - 1)
        _, h_out, w_out = spec.shape_at(k)
        step = trace(spec, k - 1, k, full_region(h_out, w_out))
        with torch.no_grad():
            cur = ex.run_trace(step, cur, full_region(h_in, w_in))
        m = np.ascontiguousarray(cur.numpy())
        sent = payload_nbytes(m)
        row = {
            "cut": k,
            "unit": unit.name,
            "shape": list(m.shape[1:]),
            "zeros": round(1 - np.count_nonzero(m.view(np.uint32)) / m.size, 3),
            "plain_bytes": int(m.nbytes),
            "sent_bytes": sent,
            "plain_cpu_ms": round(1e3 * round_trip_s(m, False, args.repeat), 3),
            "suppressed_cpu_ms": round(1e3 * round_trip_s(m, True, args.repeat), 3),
            "plain_link_ms": round(1e3 * m.nbytes / rate, 2),
            "sent_link_ms": round(1e3 * sent / rate, 2),
        }
        rows.append(row)
        print(
            f"{k:>4} {unit.name:<14} {'x'.join(map(str, m.shape[1:])):<16} {row['zeros']:>6.2f} "
            f"{m.nbytes / 1e3:>9.1f} {sent / 1e3:>8.1f} {row['plain_cpu_ms']:>9.2f} "
            f"{row['suppressed_cpu_ms']:>8.2f} {row['plain_link_ms']:>8.2f} {'':>2} "
            f"{row['sent_link_ms']:>6.2f}"
        )
    plain = sum(int(r["plain_bytes"]) for r in rows)
    sent_all = sum(int(r["sent_bytes"]) for r in rows)
    print(f"all cut points: {sent_all / plain:.2f} of the plain bytes")
    if args.json:
        print(json.dumps({"model": args.model, "mbit": args.mbit, "rows": rows}))


if __name__ == "__main__":
    main()
