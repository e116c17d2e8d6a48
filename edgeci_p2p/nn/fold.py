"""VGG's fc1 folded into the last map's row strips (``Plan.fold_head``).

VGG's head pools the last map to its own size (an identity at 224 pixels) and
flattens it, in (channel, row, column) order, straight into fc1: 25088 -> 4096,
most of the head's time, all of it serial on the auctioneer. fc1 is linear, so a
peer holding rows ``[a, b)`` of the last map can multiply them by fc1's matching
columns itself and send 4096 partial sums instead of its rows; the auctioneer adds
the parts' sums, fc1's bias, and runs the rest of the head.

The matching columns of a row block are scattered through fc1's weight (one run
per channel), so the weight is kept a second time, laid out (row, channel, column,
out): a row block is then one contiguous matrix and its product one
matrix-vector multiply. That copy (411 MB for VGG-16) is made at start
(``ModelStore.prepare_folds``), else on a peer's first fold, and kept as long as the
weight it was made from is held.

Sums of parts are the unsplit layer's sums in another order: equal to float
rounding, as every tiled result here is.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor, fx, nn

from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.graph import run_nodes


class NotFoldable(ValueError):
    """The model's head does not flatten its last map straight into a linear layer."""


def _fc1(ex: FusedExecutor) -> tuple[str, nn.Linear]:
    """The head's first linear layer (its graph node's name and module), checking that
    only an identity pool, a flatten and dropouts come before it."""
    g = ex.graph
    nodes = {n.name: n for n in g.graph.nodes}
    modules = dict(ex.model.named_modules())
    _, h, w = ex.spec.head.in_shape
    for name in g.head_nodes:
        n: fx.Node = nodes[name]
        if n.op == "call_module":
            m = modules[str(n.target)]
            if isinstance(m, nn.Linear):
                return name, m
            if isinstance(m, nn.AdaptiveAvgPool2d) and ex.spec.head.pool_size == (h, w):
                continue
            if isinstance(m, nn.Dropout | nn.Identity | nn.Flatten):
                continue
        elif (n.op, n.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
            continue
        raise NotFoldable(f"{ex.spec.name}: head node {name} ({n.op} {n.target}) comes before fc1")
    raise NotFoldable(f"{ex.spec.name}: no linear layer in the head")


def _forget_weakly(ref: weakref.ref[Fold]) -> None:
    fold = ref()
    if fold is not None:
        fold._forget()


class Fold:
    """One model's fc1, laid out for row blocks; thread-safe (worker threads)."""

    def __init__(self, ex: FusedExecutor) -> None:
        self.ex = ex
        self.node, lin = _fc1(ex)
        self._target = next(n for n, m in ex.model.named_modules() if m is lin)
        self._lock = threading.Lock()
        self._made_from: weakref.ref[Tensor] | None = None
        self._blocks: Tensor | None = None

    def _linear(self) -> nn.Linear:
        # Looked up at call time: a budget-bound store may have loaded the head again.
        lin = self.ex.model.get_submodule(self._target)
        assert isinstance(lin, nn.Linear)
        return lin

    def blocks(self) -> Tensor:
        """fc1's weight as (rows, channels, columns, out), contiguous."""
        weight = self._linear().weight
        with self._lock:
            if self._blocks is None or self._made_from is None or self._made_from() is not weight:
                c, h, w = self.ex.spec.head.in_shape
                out = weight.shape[0]
                w4 = weight.detach().reshape(out, c, h, w)
                self._blocks = w4.permute(2, 1, 3, 0).contiguous()
                self._made_from = weakref.ref(weight)
                # Dropped with the weight (a budget-bound store unloading the head). The
                # finalizer holds this fold weakly: weights are shared by every store of
                # the process (nn/weights.py), and a strong reference from them kept each
                # dropped store's 411 MB copy of VGG-16's fc1 alive (1.2 GB a test cluster).
                weakref.finalize(weight, _forget_weakly, weakref.ref(self))
            return self._blocks

    def _forget(self) -> None:
        with self._lock:
            self._blocks = self._made_from = None

    @torch.no_grad()
    def partial(self, x: Tensor, rows: tuple[int, int]) -> Tensor:
        """Rows ``rows`` of the last map (``x``: N x C x rows x W) times fc1's matching
        columns: N x out x 1 x 1 partial sums, without the bias."""
        c, h, w = self.ex.spec.head.in_shape
        a, b = rows
        if not 0 <= a < b <= h or tuple(x.shape[1:]) != (c, b - a, w):
            raise ValueError(f"fold: a strip of shape {list(x.shape)} is not rows {a}:{b}")
        blocks = self.blocks()
        n = x.shape[0]
        flat = x.permute(0, 2, 1, 3).reshape(n, -1)
        y = flat @ blocks[a:b].reshape(-1, blocks.shape[-1])
        return y.reshape(n, -1, 1, 1)

    @torch.no_grad()
    def head(self, sums: Tensor) -> Tensor:
        """The logits from the parts' partial sums added up (N x out, no bias yet)."""
        lin = self._linear()
        y = sums.reshape(sums.shape[0], -1) + lin.bias
        g = self.ex.graph
        out, _ = run_nodes(self.ex.model, g.graph, {self.node: y}, g.head_nodes[-1])
        return out
