"""Running a fused range of units on a slab, exactly as the unsplit model would.

The executor follows a :class:`~edgeci_p2p.core.geometry.Trace` op by op: slice
the slab to the region the op reads, pad only at real borders (zeros for convs,
-inf for max-pools), then run the op with padding 0. Element-wise ops run their
torch module as it is (they see only pixels of their own region); a
squeeze-and-excitation runs on the whole map it reads and its output is cropped.
A squeeze-and-excitation cut at its input (``sescale``, a synchronisation point)
multiplies by its scale vector: given with the work when the unit starts the range
(:meth:`FusedExecutor.scales` makes it from the whole map at that boundary, as the
unsplit module does), else made here from the whole map the tile then reads.
Branches merged by a concatenation are run each and concatenated along channels.
The result is exactly the requested output region of the unsplit network's map.

``split`` and ``stitch`` are inverses: for regions that tile a map exactly once,
``stitch(split(x, regions), regions, h, w)`` is ``x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import SqueezeExcitation

from edgeci_p2p.core.geometry import OpStep, Region, Trace, UnitTrace, full_region, trace
from edgeci_p2p.core.units import SCALED, ModelSpec
from edgeci_p2p.nn.graph import Extracted, extract, run_nodes
from edgeci_p2p.nn.packed import PackedConv2d, conv2d


def crop(x: Tensor, x_region: Region, want: Region) -> Tensor:
    """The part of slab ``x`` (holding ``x_region`` of its map) that covers ``want``."""
    if want == x_region:
        return x
    rel = want.relative_to(x_region)
    return x[:, :, rel.rows.start : rel.rows.stop, rel.cols.start : rel.cols.stop]


def split(x: Tensor, regions: Sequence[Region]) -> list[Tensor]:
    """Cut a whole map ``x`` (N, C, H, W) into the given regions (views, no copy)."""
    whole = full_region(x.shape[2], x.shape[3])
    return [crop(x, whole, r) for r in regions]


def stitch(pieces: Sequence[Tensor], regions: Sequence[Region], height: int, width: int) -> Tensor:
    """Place each piece at its region of an ``height x width`` map; the inverse of split."""
    if not pieces or len(pieces) != len(regions):
        raise ValueError(f"stitch needs one piece per region ({len(pieces)} vs {len(regions)})")
    n, c = pieces[0].shape[:2]
    out = pieces[0].new_empty((n, c, height, width))
    for piece, r in zip(pieces, regions, strict=True):
        want = (n, c, r.rows.size, r.cols.size)
        if tuple(piece.shape) != want:
            raise ValueError(f"piece of shape {tuple(piece.shape)} does not fit {r} ({want})")
        out[:, :, r.rows.start : r.rows.stop, r.cols.start : r.cols.stop] = piece
    return out


class FusedExecutor:
    """Runs unit ranges of one model on slabs. Holds the model; stateless otherwise."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        self.model = model
        self.spec = spec
        self._modules: dict[str, nn.Module] = dict(model.named_modules())
        self._graph: Extracted | None = spec.extra.get("graph")
        self.channels_last = any(isinstance(m, PackedConv2d) for m in self._modules.values())
        """Whether maps run channels-last: where convs are packed (nn/packed.py), whose
        kernel takes and gives that layout."""

    @property
    def graph(self) -> Extracted:
        """The traced graph (for the unsplit reference and the head)."""
        if self._graph is None:
            _, h, w = self.spec.input_shape
            self._graph = extract(self.model, self.spec.name, h, w, self.spec.fingerprint)
        return self._graph

    # ---- one op ---------------------------------------------------------------------------

    def _op(self, step: OpStep, x: Tensor, fresh: bool, scales: Mapping[str, Tensor]) -> Tensor:
        """Run one op on ``x``, which holds exactly ``step.need``."""
        op, p = step.op, step.pad
        if op.kind == "scale":  # a parameter, not a module
            return x * self.model.get_parameter(op.module)
        if op.kind == "slice":
            return x[:, op.offset : op.offset + op.out_channels]
        if op.kind in SCALED:
            scale = scales.get(op.module)
            if scale is None:
                if step.need != full_region(*step.in_hw):
                    raise ValueError(
                        f"{op.module}: a tile of this squeeze-and-excitation needs its scale "
                        "vector, made from the whole map at the unit's input"
                    )
                return crop(self._scale(op.module, x) * x, step.need, step.out)
            if tuple(scale.shape) != (x.shape[0], op.in_channels, 1, 1):
                raise ValueError(
                    f"{op.module}: scale vector of shape {tuple(scale.shape)}, "
                    f"need {(x.shape[0], op.in_channels, 1, 1)}"
                )
            return scale * x  # as SqueezeExcitation.forward: scale * input
        m = self._modules[op.module]
        if op.kind in ("conv", "maxpool"):
            # The symmetric part of the border padding is left to the op itself (no
            # copy); only an asymmetric remainder is padded explicitly.
            ph, pw = min(p.top, p.bottom), min(p.left, p.right)
            extra = (p.left - pw, p.right - pw, p.top - ph, p.bottom - ph)
            if op.kind == "conv":
                assert isinstance(m, nn.Conv2d)
                if any(extra):
                    x = F.pad(x, extra)
                return conv2d(m, x, (ph, pw))
            assert op.window is not None
            if any(extra):
                x = F.pad(x, extra, value=float("-inf"))
            w = op.window
            return F.max_pool2d(x, w.kernel, w.stride, (ph, pw), w.dilation, ceil_mode=False)
        if op.kind == "bn":
            assert isinstance(m, nn.BatchNorm2d)
            return F.batch_norm(
                x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps
            )
        if op.kind == "relu":
            return F.relu(x, inplace=fresh)
        if op.kind == "se":
            # It read the whole map (``step.need``); only ``step.out`` is wanted.
            return crop(m(x), step.need, step.out)
        if getattr(m, "inplace", False) and not fresh:
            x = x.clone()  # torchvision's activations run in place: not on the caller's slab
        return m(x)  # type: ignore[no-any-return]

    def _scale(self, module: str, x: Tensor) -> Tensor:
        m = self._modules[module]
        assert isinstance(m, SqueezeExcitation)
        return m._scale(x)

    def _chain(
        self,
        steps: Sequence[OpStep],
        x: Tensor,
        x_region: Region,
        scales: Mapping[str, Tensor],
        out: Region | None = None,
    ) -> Tensor:
        """Run ``steps`` on ``x`` (holding ``x_region``); an empty chain (an identity
        branch) hands back ``out`` of ``x``."""
        if not steps:
            assert out is not None
            return crop(x, x_region, out)
        fresh = False  # never modify the caller's slab in place
        for step in steps:
            x = self._op(step, crop(x, x_region, step.need), fresh, scales)
            # Identities, permutes and slices hand back their input (or a view of it).
            x_region = step.out
            fresh = fresh or step.op.kind not in ("identity", "permute", "slice")
        return x

    def _unit(
        self, ut: UnitTrace, x: Tensor, x_region: Region, scales: Mapping[str, Tensor]
    ) -> Tensor:
        joined = ut.post[0].need if ut.post else ut.out
        y = self._chain(ut.main, x, x_region, scales, joined)
        if ut.shortcut is not None:
            others = (ut.shortcut, *ut.more)
            branches = [self._chain(b, x, x_region, scales, joined) for b in others]
            y = torch.cat([y, *branches], 1) if ut.unit.merge == "cat" else y + branches[0]
        if ut.post:
            y = self._chain(ut.post, y, joined, scales)
        return y

    @torch.no_grad()
    def scales(self, start: int, x: Tensor) -> dict[str, Tensor]:
        """The scale vectors unit ``start`` needs (``Unit.needs_scale``), made from the
        whole map ``x`` at boundary ``start`` exactly as the unsplit module makes
        them: what the auctioneer sends with a stage's slabs. ``{}`` if none."""
        unit = self.spec.units[start]
        if not unit.needs_scale:
            return {}
        _, h, w = self.spec.shape_at(start)
        if tuple(x.shape[1:]) != self.spec.shape_at(start):
            raise ValueError(f"map of shape {tuple(x.shape)} is not the whole map at {start}")
        tr = trace(self.spec, start, start + 1, full_region(h, w))
        out: dict[str, Tensor] = {}
        for chain in (tr.units[0].main, tr.units[0].shortcut or (), *tr.units[0].more):
            y, region = x, full_region(h, w)
            for step in chain:
                if step.op.kind in SCALED:
                    out[step.op.module] = self._scale(step.op.module, y)
                    break
                if step.op.window is not None:
                    raise ValueError(f"{step.op.module}: a window op before a scale vector")
                y, region = self._op(step, crop(y, region, step.need), False, {}), step.out
        return out

    # ---- public ---------------------------------------------------------------------------

    def scale_modules(self, start: int) -> list[tuple[str, int]]:
        """(module, channels) of each scale vector unit ``start`` needs, in op order:
        how they are joined along channels into one N x C x 1 x 1 tensor on the wire."""
        ops = self.spec.units[start].ops
        return [(op.module, op.in_channels) for op in ops if op.kind in SCALED]

    def join_scales(self, start: int, scales: Mapping[str, Tensor]) -> Tensor | None:
        """Unit ``start``'s scale vectors as one tensor (None if it needs none)."""
        mods = self.scale_modules(start)
        return torch.cat([scales[m] for m, _ in mods], 1) if mods else None

    def split_scales(self, start: int, joined: Tensor | None) -> dict[str, Tensor]:
        """The inverse of :meth:`join_scales` (checked against the unit's channels)."""
        mods = self.scale_modules(start)
        if joined is None:
            return {}
        want = sum(c for _, c in mods)
        if not mods or joined.dim() != 4 or joined.shape[1:] != (want, 1, 1):
            raise ValueError(
                f"scale of shape {tuple(joined.shape)}: unit {start} takes "
                f"{'N x ' + str(want) + ' x 1 x 1' if mods else 'none'}"
            )
        parts = torch.split(joined, [c for _, c in mods], 1)
        return {m: p for (m, _), p in zip(mods, parts, strict=True)}

    def own_slab(self, slab: npt.NDArray[np.float32]) -> Tensor:
        """A copy of ``slab`` (N x C x H x W, any strides) laid out as this executor runs
        its maps, made in one pass: a strip job joins its own channels-last rows with
        received ones in that layout (``aio/strips.py``), and an NCHW copy turned back
        into channels-last cost more than a single max-pool (VGG-16's 128 x 14 x 112
        strip: 0.50 ms against 0.06; ``benchmarks/strip_layout.py``)."""
        if not self.channels_last:
            return torch.from_numpy(np.array(slab, dtype=np.float32, copy=True))
        nhwc = np.empty((slab.shape[0], *slab.shape[2:], slab.shape[1]), np.float32)
        nhwc[...] = slab.transpose(0, 2, 3, 1)
        return torch.from_numpy(nhwc).permute(0, 3, 1, 2)

    @torch.no_grad()
    def run_trace(
        self,
        tr: Trace,
        slab: Tensor,
        slab_region: Region,
        scales: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Run a trace on ``slab`` (holding ``slab_region`` of boundary ``tr.start``'s map);
        ``scales``: the scale vectors the first unit needs (:meth:`scales`), by module;
        without them a tile of such a unit must hold the whole map."""
        if not slab_region.contains(tr.need):
            raise ValueError(
                f"slab {slab_region} does not hold the input {tr.need} that units "
                f"[{tr.start}, {tr.stop}) need"
            )
        _, h, w = self.spec.shape_at(tr.start)
        if slab.dim() != 4 or slab.shape[2:] != (slab_region.rows.size, slab_region.cols.size):
            raise ValueError(f"slab of shape {tuple(slab.shape)} does not match {slab_region}")
        if not full_region(h, w).contains(slab_region):
            raise ValueError(f"slab region {slab_region} outside the {h}x{w} map")
        x, region = slab, slab_region
        if self.channels_last:
            # Every map channels-last from the start, as packed convs leave theirs: a
            # slab off the wire is plain NCHW, torch's CPU max-pool is ~16x slower on
            # it (64 x 224 x 224: 16 ms against 1.0), and ops mixing the two layouts
            # (a residual add, a concatenation) take torch's slow strided path. F.pad
            # keeps the layout, so the ops after this see channels-last maps.
            x = x.contiguous(memory_format=torch.channels_last)
        for ut in tr.units:
            x = self._unit(ut, x, region, scales or {})
            region = ut.out
        return x

    def run(
        self,
        start: int,
        stop: int,
        out: Region,
        slab: Tensor,
        slab_region: Region | None = None,
    ) -> Tensor:
        """Units ``start .. stop-1`` producing ``out``; ``slab`` defaults to the whole map
        (the scale vectors unit ``start`` may need are then made from it)."""
        tr = trace(self.spec, start, stop, out)
        scales: dict[str, Tensor] = {}
        if slab_region is None:
            _, h, w = self.spec.shape_at(start)
            slab_region = full_region(h, w)
            scales = self.scales(start, slab)
        return self.run_trace(tr, slab, slab_region, scales)

    @torch.no_grad()
    def run_tiled(self, start: int, stop: int, regions: Sequence[Region], x: Tensor) -> Tensor:
        """Compute boundary ``stop``'s map tile by tile from the whole map ``x`` and stitch it
        (the scale vectors unit ``start`` needs made once from ``x``, as the auctioneer
        makes them)."""
        _, h_in, w_in = self.spec.shape_at(start)
        whole = full_region(h_in, w_in)
        scales = self.scales(start, x)
        pieces = []
        for r in regions:
            tr = trace(self.spec, start, stop, r)
            pieces.append(self.run_trace(tr, crop(x, whole, tr.need), tr.need, scales))
        _, h, w = self.spec.shape_at(stop)
        return stitch(pieces, regions, h, w)

    # ---- the unsplit reference and the head ------------------------------------------------

    @torch.no_grad()
    def reference(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Units ``start .. stop-1`` through the model's own graph (no slicing)."""
        stop = self.spec.n_units if stop is None else stop
        g = self.graph
        if stop == start:
            return x
        names = g.boundaries[stop]
        y, kept = run_nodes(self.model, g.graph, self._inputs(start, x), names[-1], names)
        return torch.cat([kept[n] for n in names], 1) if len(names) > 1 else y

    def _inputs(self, boundary: int, x: Tensor) -> dict[str, Tensor]:
        """The graph nodes' values a map at ``boundary`` stands for (a carried boundary:
        its channel-concatenated nodes, split apart)."""
        g = self.graph
        names, chans = g.boundaries[boundary], g.channels[boundary]
        return dict(zip(names, torch.split(x, list(chans), 1), strict=True))

    @torch.no_grad()
    def activations(self, x: Tensor) -> list[Tensor]:
        """The unsplit map at every boundary 0..n, in one pass of the model's graph."""
        g = self.graph
        keep = [n for names in g.boundaries[1:] for n in names]
        _, kept = run_nodes(self.model, g.graph, self._inputs(0, x), g.boundaries[-1][0], keep)
        return [x] + [
            torch.cat([kept[n] for n in names], 1) if len(names) > 1 else kept[names[0]]
            for names in g.boundaries[1:]
        ]

    @torch.no_grad()
    def head(self, x: Tensor) -> Tensor:
        """Global pool + classifier on the whole last feature map: the logits."""
        g = self.graph
        last = len(g.boundaries) - 1
        y, _ = run_nodes(self.model, g.graph, self._inputs(last, x), g.head_nodes[-1])
        return y
