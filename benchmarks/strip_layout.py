"""What a strip job's stage costs beyond its compute: the copies of its input rows,
before and after they stay channels-last (a benchmark: prints figures, asserts nothing).

A strip job (``aio/strips.py``) runs each stage on its own rows of the last stage's
output, joined with the halo rows its neighbours sent. With packed convs the executor
runs maps channels-last, so a stage's output is channels-last memory. Per stage of
VGG-16's halo plan (a 13 % strip, the 0.13-core peer's share, with two halo rows
received), on one thread and uncapped, this times:

* ``old``: the path before: the rows joined as NCHW (``np.concatenate``), copied again
  (``np.array(copy=True)``) and made channels-last by the executor: two transposing
  copies of the strip (``run_tile`` as now, its copy as it was);
* ``new``: the rows joined channels-last (``strip_inputs.join_rows``) and copied once into the
  executor's layout (``FusedExecutor.own_slab``);
* ``compute``: the units alone on a channels-last slab already in place.

and checks that both paths give the same output bits.

    .venv/bin/python benchmarks/strip_layout.py [--model vgg16] [--share 0.13] [--runs 9]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from edgeci_p2p.aio.strip_inputs import join_rows
from edgeci_p2p.core.geometry import Region, Span, trace
from edgeci_p2p.nn.runtime import ModelStore

STAGES = {
    "vgg16": [(0, 5), (5, 6), (6, 10), (10, 12), (12, 14), (14, 16), (16, 18)],
    "resnet34": [(0, 4), (4, 7), (7, 11), (11, 17), (17, 20)],
}
"""Stage extents like the halo plans the emulated cluster chose."""


def best_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def one_stage(
    store: ModelStore,
    model: str,
    start: int,
    stop: int,
    share: float,
    runs: int,
    rng: np.random.Generator,
) -> tuple[list[float], str]:
    """Milliseconds of the old path, the new one and the compute alone for units
    ``[start, stop)`` on a ``share`` strip; and the input's shape."""
    fp = store.get(model).fingerprint
    ex = store.executor(model, 224, 224)
    spec = ex.spec
    _, h_out, w_out = spec.shape_at(stop)
    rows = max(1, round(h_out * share))
    top = min(h_out - rows, h_out // 3)
    out = Region(Span(top, top + rows), Span(0, w_out))
    tr = trace(spec, start, stop, out)
    c, _, w_in = spec.shape_at(start)
    need = tr.need.rows
    halo = min(2, need.size - 1)
    prev = torch.randn(1, c, need.size - halo, w_in).contiguous(memory_format=torch.channels_last)
    own = prev.numpy()  # a stage's output: channels-last memory, an NCHW view
    got = rng.standard_normal((1, c, halo, w_in)).astype(np.float32)  # off the wire
    have = [(need.start, own), (need.start + own.shape[2], got)]
    whole = torch.from_numpy(np.concatenate([own, got], axis=2))
    slab_cl = whole.contiguous(memory_format=torch.channels_last)

    def old_copy(slab: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(slab, dtype=np.float32, copy=True))

    def old() -> np.ndarray:
        xin = np.concatenate([a for _, a in have], axis=2)
        ex.own_slab = old_copy  # type: ignore[method-assign]
        try:  # the same call as new(), with the copy as it was
            return store.run_tile(model, fp, (224, 224), start, stop, out, xin, tr.need)
        finally:
            del ex.own_slab

    def new() -> np.ndarray:
        xin = join_rows(have, need.start, need.stop)
        assert xin is not None
        return store.run_tile(model, fp, (224, 224), start, stop, out, xin, tr.need)

    def compute() -> object:
        return ex.run_trace(tr, slab_cl, tr.need)

    if not np.array_equal(old(), new()):
        raise SystemExit(f"units [{start}, {stop}): the two paths differ")
    return [best_ms(f, runs) for f in (old, new, compute)], f"{c}x{need.size}x{w_in}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg16", choices=sorted(STAGES))
    p.add_argument("--share", type=float, default=0.13, help="the strip's share of each map")
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(1)
    store = ModelStore([args.model])
    rng = np.random.default_rng(0)
    print(f"{args.model}, a {args.share:.0%} strip per stage, 1 thread, min of {args.runs}")
    print(f"{'units':>9} {'input':>16} {'old ms':>8} {'new ms':>8} {'compute':>8}")
    totals = [0.0, 0.0, 0.0]
    for start, stop in STAGES[args.model]:
        t, shape = one_stage(store, args.model, start, stop, args.share, args.runs, rng)
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        print(f"[{start:2},{stop:2}) {shape:>16} {t[0]:8.2f} {t[1]:8.2f} {t[2]:8.2f}")
    print(f"{'all':>9} {'':>16} {totals[0]:8.2f} {totals[1]:8.2f} {totals[2]:8.2f}")
    print(
        f"beyond compute: old {totals[0] - totals[2]:.2f} ms, new {totals[1] - totals[2]:.2f} ms "
        "per request on one core (a peer at share q waits 1/q times as long)"
    )


if __name__ == "__main__":
    main()
