"""Convolution weights packed once into oneDNN's layout, not on every call.

``F.conv2d`` on CPU hands oneDNN plain OIHW weights, and oneDNN reorders them into
its blocked layout on *every* call: for VGG-16's 512-channel 3x3 convs that is
9.4 MB read and written, ~0.7 ms of one core per call, whatever the tile's height.
A peer running a thin strip (one or two rows of a 14x14 map) spent more time
reordering weights than convolving, and a strip-resident stage split edge-first
into pieces paid it per piece. :func:`pack_convs` reorders each conv's weight once
(at load) and swaps the module's class for :class:`PackedConv2d`, which calls the
packed-weight kernel (``mkldnn::_convolution_pointwise``, the one torch's own
inductor freezing uses). The activations it returns are channels-last; the ops
after it take either layout, and converting back would cost more than the reorder.

Exactness: the packed kernel (oneDNN's brgemm convolution) sums in another order
than the unpacked one, so its outputs differ from ``F.conv2d``'s in the last bits
(relative ~2e-6 per layer). It computes every output row the same way whatever the
slab's height, so a tile of a packed model equals the unsplit packed model's rows;
every loader packs (peers' weights by part, whole models, the profiler), so what a
peer computes is what ``--verify`` computes. ``EDGECI_PACKED_CONV=0`` turns packing
off (for measuring it against its absence, or a torch build whose oneDNN lacks it).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor, nn

ENV = "EDGECI_PACKED_CONV"


@functools.cache
def available() -> bool:
    """Whether this torch can run packed convolutions here (and agrees with F.conv2d).

    Checked once per process on a small conv; off if ``EDGECI_PACKED_CONV=0``."""
    if os.environ.get(ENV, "1") == "0" or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            w = torch.randn(16, 8, 3, 3, generator=g)
            b = torch.randn(16, generator=g)
            x = torch.randn(1, 8, 5, 6, generator=g)
            got = _packed_conv(x, _pack(w, (1, 1), (1, 1), (1, 1), 1), b, (1, 1), (1, 1), (1, 1), 1)
            want = torch.nn.functional.conv2d(x, w, b, 1, 1)
            return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _pack(
    w: Tensor,
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> Tensor:
    # The input-size hint only steers the choice of layout; a 56 x 56 map's suits
    # every slab height and padding tried (ONEDNN_VERBOSE shows no reorder on a call).
    hint = [1, w.shape[1] * groups, 56, 56]
    packed: Tensor = torch.ops.mkldnn._reorder_convolution_weight(
        w.contiguous(), list(padding), list(stride), list(dilation), groups, hint
    )
    return packed


def _packed_conv(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> Tensor:
    y: Tensor = torch.ops.mkldnn._convolution_pointwise(
        x, w, b, list(padding), list(stride), list(dilation), groups, "none", [], ""
    )
    return y


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose weight, once packed (:func:`pack_weight`), is an
    oneDNN-layout tensor; ``weight.to_dense()`` gives the plain weight back, bit for bit.
    Before packing (or after its part is unloaded) it is an ordinary conv."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv2d(self, input, self.padding)  # type: ignore[arg-type]

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        # A state_dict (torch.save, fingerprints, comparisons) holds the plain weight.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        if key in destination:
            destination[key] = dense(destination[key])


def packable(m: nn.Module) -> bool:
    """Convs packing helps and that the packed kernel runs as the module would:
    plain 2-D, zero padding given in numbers, float32, no groups (a depthwise conv's
    weight is a few KB: nothing to save)."""
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and m.weight.dtype == torch.float32
    )


def mark(model: nn.Module) -> nn.Module:
    """Make every packable conv of ``model`` a :class:`PackedConv2d` (if packing is on),
    weights loaded or not: a model built on the meta device and loaded by part
    (``nn/weights.py``) is marked when it is built, so that an executor made before
    a part loads already knows its maps run channels-last. Returns ``model``."""
    for m in model.modules():
        _mark(m)
    return model


def _mark(m: nn.Module) -> bool:
    """Make ``m`` a :class:`PackedConv2d` if packing is on and it is :func:`packable`;
    whether it is one now."""
    if not (available() and packable(m)):
        return False
    if type(m) is nn.Conv2d:
        m.__class__ = PackedConv2d
    return True


def pack_weight(m: nn.Conv2d, weight: Tensor) -> Tensor:
    """``weight`` (plain, for conv ``m``) in oneDNN's layout if packing is on and
    ``m`` is :func:`packable`, else as it is; ``m`` becomes a :class:`PackedConv2d`."""
    if weight.is_meta or weight.is_mkldnn or not _mark(m):
        return weight
    return _pack(weight, m.padding, m.stride, m.dilation, m.groups)  # type: ignore[arg-type]


@torch.no_grad()
def pack_convs(model: nn.Module) -> nn.Module:
    """Pack every packable conv's loaded weight of ``model`` in place; returns it."""
    mark(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            packed = pack_weight(m, m.weight)
            if packed is not m.weight:
                m._parameters["weight"] = nn.Parameter(packed, requires_grad=False)
    return model


def dense(t: Tensor) -> Tensor:
    """A weight as plain OIHW (a packed one reordered back, bit for bit)."""
    return t.to_dense() if t.is_mkldnn else t


def conv2d(m: nn.Conv2d, x: Tensor, padding: tuple[int, int]) -> Tensor:
    """Conv ``m`` on ``x`` with symmetric zero ``padding``: the packed kernel if ``m``'s
    weight is packed, else ``F.conv2d``."""
    if m.weight.is_mkldnn:
        return _packed_conv(x, m.weight, m.bias, padding, m.stride, m.dilation, m.groups)
    return torch.nn.functional.conv2d(x, m.weight, m.bias, m.stride, padding, m.dilation, m.groups)
