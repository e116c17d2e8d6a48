"""A model's units from its traced graph (torch.fx), not from a list of known classes.

The feature part of the model (every node before its first global pool) is traced
with ``torch.fx``. Torchvision's squeeze-and-excitation, stochastic depth, permute
and LayerNorm2d modules stay whole (leaves), everything else is traced through.

* **Cut points** are the positions in the graph's topological order where exactly
  one tensor is live (computed and still to be read): every path from the input
  crosses it. Only those before a window op (conv, pool) are kept, so that the
  element-wise ops after a conv (BN, activations, norms) stay in its unit, as the
  class-based extractor grouped them; and those before a squeeze-and-excitation.
* **Units**: the nodes between two cut points. A chain of single-input nodes is a
  plain unit; two chains from the unit's input merged by an add then a chain is a
  block (``main``, ``shortcut``, ``post``); two or more chains concatenated along
  channels, each map at the same rows and columns, then a chain is a ``cat`` block.
  Other shapes are refused (a concatenation along rows or columns, of maps of other
  sizes, several merges between two cut points as in DenseNet).
* **Squeeze-and-excitation as a synchronisation point**: a cut is made at the SE's
  input, and the unit after it starts with ``sescale``, the channel-wise multiply by
  a scale vector made from the whole map at that cut (by whoever gathers it: the
  auctioneer). Inside a residual block two tensors are live there; when the
  shortcut's output has the SE input's rows and columns, the cut carries both as
  one map, ``cat(SE input, shortcut output)``: the first unit is a ``cat`` block
  (main up to the SE, the shortcut), the second slices them apart, scales, runs the
  rest of main and adds. Otherwise the SE stays inside its unit as ``se`` (a tile
  of it reads the whole map).
* **Ops**: convs (any groups: depthwise is ``groups == C``) and max-pools carry their
  window; BN, activations, per-pixel LayerNorm/Linear over channels between the
  permutes that move the channel axis, layer scales, dropout and stochastic depth
  (identities in eval) are element-wise; a squeeze-and-excitation is ``sescale`` or
  ``se`` (above).
  Anything else is refused with :class:`UnsupportedModelError` naming the op.
* **Head**: the nodes from the first global pool on, run as they are by
  :func:`run_nodes` on the whole last map.

For VGG and ResNet-18/34 this gives exactly the units of the class-based extractor
(``tests/test_graph_extract.py`` checks it).
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torchvision.models import VGG, ResNet
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops.misc import Permute, SqueezeExcitation
from torchvision.ops.stochastic_depth import StochasticDepth

from edgeci_p2p.core.geometry import op_out_hw
from edgeci_p2p.core.units import Head, Merge, ModelSpec, Op, Unit, Window


class UnsupportedModelError(ValueError):
    """The model has an op (or a shape of graph) that cannot be tiled exactly."""


LEAVES: tuple[type[nn.Module], ...] = (SqueezeExcitation, StochasticDepth, Permute, LayerNorm2d)
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
)
IDENTITIES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Identity, StochasticDepth)
_ADDS = (operator.add, operator.iadd, torch.add)
_CATS = (torch.cat, torch.concat)
NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_TO_NCHW = [0, 3, 1, 2]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # A packed conv (nn/packed.py) is a Conv2d subclass outside torch.nn: a leaf too.
        return isinstance(m, (*LEAVES, nn.Conv2d)) or super().is_leaf_module(m, qualname)


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, fx.Graph] = weakref.WeakKeyDictionary()
_TRACE_LOCK = threading.Lock()


def trace_graph(model: nn.Module) -> fx.Graph:
    """The model's fx graph, torchvision's SE, stochastic depth, permute and
    LayerNorm2d kept whole; traced once per model object (the graph does not depend
    on the input size).

    Tracing patches torch functions process-wide while it runs, so a tile running on
    another thread meanwhile would see fx proxies: a peer traces its models when it
    loads them (``ModelStore``), before it serves, and never again."""
    with _TRACE_LOCK:
        g = _GRAPHS.get(model)
        if g is None:
            try:
                g = _Tracer().trace(model)
            except Exception as e:  # fx raises many kinds on data-dependent control flow
                raise UnsupportedModelError(
                    f"{type(model).__name__}: cannot trace its graph ({type(e).__name__}: {e})"
                ) from e
            _GRAPHS[model] = g
        return g


def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, str):
        raise UnsupportedModelError(f"{what}: string padding {v!r} is not supported")
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _is_global_pool(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        return isinstance(modules[str(n.target)], nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
    if n.op == "call_function":
        return n.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten)
    return n.op == "call_method" and n.target in ("mean", "flatten")


@dataclass
class _Val:
    """What the extractor knows of a tensor node: its map shape and layout."""

    c: int
    h: int
    w: int
    nhwc: bool = False


class _Describer:
    """Turns fx nodes into pure ops, tracking shapes and the channel axis."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.model = model

    def _param(self, n: fx.Node) -> Tensor | None:
        if n.op != "get_attr":
            return None
        t = self.model
        for part in str(n.target).split("."):
            t = getattr(t, part)
        return t if isinstance(t, Tensor) else None

    def op(self, n: fx.Node, x: _Val) -> tuple[Op, _Val]:
        """The op of node ``n`` reading a map ``x``, and what it writes."""
        if n.op == "call_module":
            name = str(n.target)
            return self._module_op(name, self.modules[name], x)
        if n.op == "call_function" and n.target in (F.relu, torch.relu):
            return Op("relu", x.c, x.c), x
        if n.op == "call_function" and n.target in (operator.mul, torch.mul):
            params = [
                p for a in n.args if isinstance(a, fx.Node) and (p := self._param(a)) is not None
            ]
            attrs = [a for a in n.args if isinstance(a, fx.Node) and a.op == "get_attr"]
            if len(params) == 1 and not x.nhwc and tuple(params[0].shape) in ((x.c, 1, 1),):
                return Op("scale", x.c, x.c, module=str(attrs[0].target)), x
        what = n.target if n.op != "call_function" else getattr(n.target, "__name__", n.target)
        raise UnsupportedModelError(f"node {n.name}: {n.op} {what} cannot be tiled")

    def _module_op(self, name: str, m: nn.Module, x: _Val) -> tuple[Op, _Val]:
        kind = type(m).__name__
        channels_first = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, SqueezeExcitation, LayerNorm2d)
        if isinstance(m, channels_first) and x.nhwc:
            raise UnsupportedModelError(f"{name}: {kind} on a channels-last tensor")
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise UnsupportedModelError(f"{name}: padding mode {m.padding_mode!r}")
            win = Window(
                _pair(m.kernel_size, name),
                _pair(m.stride, name),
                _pair(m.padding, name),
                _pair(m.dilation, name),
            )
            op = Op("conv", m.in_channels, m.out_channels, win, m.groups, m.bias is not None, name)
            return op, _Val(m.out_channels, *op_out_hw(op, (x.h, x.w)))
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise UnsupportedModelError(f"{name}: max-pool returning indices")
            stride = m.stride if m.stride is not None else m.kernel_size
            win = Window(
                _pair(m.kernel_size, name),
                _pair(stride, name),
                _pair(m.padding, name),
                _pair(m.dilation, name),
                bool(m.ceil_mode),
            )
            op = Op("maxpool", x.c, x.c, win, module=name)
            return op, _Val(x.c, *op_out_hw(op, (x.h, x.w)))
        if isinstance(m, nn.BatchNorm2d):
            return Op("bn", x.c, x.c, module=name), x
        if isinstance(m, nn.ReLU):
            return Op("relu", x.c, x.c, module=name), x
        if isinstance(m, ACTIVATIONS):
            return Op("act", x.c, x.c, module=name), x
        if isinstance(m, IDENTITIES):
            return Op("identity", x.c, x.c, module=name), x
        if isinstance(m, SqueezeExcitation):
            return Op("se", x.c, x.c, module=name, hidden=m.fc1.out_channels), x
        if isinstance(m, LayerNorm2d | nn.LayerNorm):
            if isinstance(m, nn.LayerNorm) and not x.nhwc and not isinstance(m, LayerNorm2d):
                raise UnsupportedModelError(f"{name}: LayerNorm over a channels-first map")
            if tuple(m.normalized_shape) != (x.c,):
                raise UnsupportedModelError(
                    f"{name}: LayerNorm over {tuple(m.normalized_shape)}, not the channels"
                )
            return Op("norm", x.c, x.c, module=name), x
        if isinstance(m, nn.Linear):
            if not x.nhwc or m.in_features != x.c:
                raise UnsupportedModelError(f"{name}: Linear not over the channels of a map")
            op = Op("linear", x.c, m.out_features, bias=m.bias is not None, module=name)
            return op, _Val(m.out_features, x.h, x.w, True)
        if isinstance(m, Permute):
            dims = list(m.dims)
            if dims == NCHW_TO_NHWC and not x.nhwc:
                return Op("permute", x.c, x.c, module=name), _Val(x.c, x.h, x.w, True)
            if dims == NHWC_TO_NCHW and x.nhwc:
                return Op("permute", x.c, x.c, module=name), _Val(x.c, x.h, x.w, False)
            raise UnsupportedModelError(f"{name}: permute {dims} moves more than the channel axis")
        raise UnsupportedModelError(f"{name}: layer {kind} is not supported")


def _tensor_args(n: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in list(n.args) + list(n.kwargs.values()):
        if isinstance(a, fx.Node) and a.op != "get_attr":
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(x for x in a if isinstance(x, fx.Node) and x.op != "get_attr")
    return out


def _is_window(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return n.op == "call_module" and isinstance(
        modules.get(str(n.target)), nn.Conv2d | nn.MaxPool2d
    )


def _is_se(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return n.op == "call_module" and isinstance(modules.get(str(n.target)), SqueezeExcitation)


def _unit_name(index: int, ops: Sequence[Op], block: bool) -> str:
    """The module of a one-op unit; else the ops' common module, then the range of
    its children they span: ``features.0-2`` (VGG), ``layer1.0`` (a block: pass only
    its branches' ops), ``features.4.block.1-2``; ``stem`` for top-level ops first."""
    mods = list(dict.fromkeys(op.module for op in ops if op.module))
    if len(mods) == 1:
        return mods[0]
    parts = [m.split(".") for m in mods]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    k = len(common)
    c1 = parts[0][k] if len(parts[0]) > k else ""
    c2 = parts[-1][k] if len(parts[-1]) > k else ""
    if not common and index == 0:
        return "stem"
    if block and common:
        return ".".join(common)
    if all(len(p) == k + 1 for p in parts) or not common:
        tail = c1 if c1 == c2 else f"{c1}-{c2}"
        return ".".join([*common, tail]) if tail else ".".join(common)
    return ".".join(common)


@dataclass(frozen=True)
class Extracted:
    """The spec plus the graph facts the executor needs (boundary and head nodes)."""

    spec: ModelSpec
    graph: fx.Graph
    boundaries: tuple[tuple[str, ...], ...]
    """Node names of each boundary 0..n (0: the input placeholder): one, or two whose
    maps the boundary carries concatenated along channels (a squeeze-and-excitation's
    input and its block's shortcut output)."""
    channels: tuple[tuple[int, ...], ...]
    """The channels of each of those nodes' maps."""
    head_nodes: tuple[str, ...]
    """The nodes of the head, from the first global pool to the output."""


def extract(
    model: nn.Module, name: str, height: int, width: int, fingerprint: str = ""
) -> Extracted:
    graph = trace_graph(model)
    d = _Describer(model)
    modules = d.modules
    nodes = [n for n in graph.nodes if n.op not in ("get_attr",)]
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        raise UnsupportedModelError(f"{name}: the model must take one input tensor")
    head_at = next((i for i, n in enumerate(nodes) if _is_global_pool(n, modules)), None)
    if head_at is None:
        raise UnsupportedModelError(f"{name}: no global pool found (where does the head start?)")
    feats = nodes[:head_at]
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users if u in pos), default=pos[n]) for n in nodes}
    if len(_tensor_args(nodes[head_at])) != 1 or _tensor_args(nodes[head_at])[0] is not feats[-1]:
        raise UnsupportedModelError(f"{name}: the head does not start from the last feature map")
    # Cut points: exactly one tensor live after node i, and a window op or a
    # squeeze-and-excitation next (none right after an SE's cut: the SE's multiply
    # alone would be a unit).
    cuts = [0]
    live: set[fx.Node] = set()
    for i, n in enumerate(feats):
        live.add(n)
        live = {v for v in live if last_use[v] > i}
        if not i or live != {n} or i + 1 >= len(feats):
            continue
        if _is_se(feats[i + 1], modules) or (
            _is_window(feats[i + 1], modules)
            and not (cuts[-1] == i - 1 and _is_se(feats[i], modules))
        ):
            cuts.append(i)
    if cuts[-1] != len(feats) - 1:
        cuts.append(len(feats) - 1)
    units: list[Unit] = []
    bounds: list[tuple[str, ...]] = [(feats[0].name,)]
    chans: list[tuple[int, ...]] = [(3,)]
    vals: dict[fx.Node, _Val] = {feats[0]: _Val(3, height, width)}
    for a, b in itertools.pairwise(cuts):
        for u, names, cs in _units(len(units), feats[a], feats[a + 1 : b + 1], vals, d):
            units.append(dataclasses.replace(u, index=len(units)))
            bounds.append(names)
            chans.append(cs)
    seen: dict[str, int] = {}
    for i, u in enumerate(units):
        if u.name in seen:  # names are for people and logs; keep them unique
            units[i] = dataclasses.replace(u, name=f"{u.name}#{i}")
        seen[u.name] = i
    last = feats[-1]
    head = _head(model, name, nodes[head_at:], vals[last], modules)
    spec = ModelSpec(name, (3, height, width), tuple(units), head, fingerprint)
    head_nodes = tuple(n.name for n in nodes[head_at:])
    return Extracted(spec, graph, tuple(bounds), tuple(chans), head_nodes)


def _chain(
    start: fx.Node, end: fx.Node, members: set[fx.Node], vals: dict[fx.Node, _Val], d: _Describer
) -> tuple[Op, ...]:
    """Ops of the chain of single-input nodes from ``start`` (excluded) to ``end``."""
    path: list[fx.Node] = []
    n = end
    while n is not start:
        if n not in members:
            raise UnsupportedModelError(f"node {n.name}: reads a tensor from outside its unit")
        args = _tensor_args(n)
        if len(args) != 1:
            raise UnsupportedModelError(
                f"node {n.name} ({n.target}): {len(args)} tensor inputs inside a branch"
            )
        path.append(n)
        n = args[0]
    ops: list[Op] = []
    x = vals[start]
    for n in reversed(path):
        op, x = d.op(n, x)
        vals[n] = x
        ops.append(op)
    return tuple(ops)


def _cat_dim(n: fx.Node) -> int:
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", n.kwargs.get("axis", 0))
    if not isinstance(dim, int):
        raise UnsupportedModelError(f"node {n.name}: concatenation along a computed dim")
    return dim


def _kind(ops: Sequence[Op], block: bool) -> str:
    """``dw`` with a depthwise conv; ``block`` for a residual add (a concatenation is
    costed as the convs it holds: the cost model's ``block`` fit is ResNet's blocks)."""
    if any(op.is_depthwise for op in ops):
        return "dw"
    if block:
        return "block"
    if all(op.kind == "maxpool" or op.window is None for op in ops):
        return "pool"
    return "conv"


def _units(
    index: int,
    start: fx.Node,
    body: list[fx.Node],
    vals: dict[fx.Node, _Val],
    d: _Describer,
) -> list[tuple[Unit, tuple[str, ...], tuple[int, ...]]]:
    """The unit(s) between two cut points, each with the node names and channels of the
    boundary after it: one unit, or two when a residual block's squeeze-and-excitation
    becomes a synchronisation point (module docstring)."""
    members = set(body)
    merges = [
        n
        for n in body
        if (n.op == "call_function" and n.target in _ADDS + _CATS)
        or (n.op == "call_method" and n.target in ("add", "add_"))
    ]
    x_in = vals[start]
    if x_in.nhwc:
        raise UnsupportedModelError(f"node {start.name}: a cut point in channels-last layout")
    chains: list[tuple[Op, ...]] = []
    branches: list[fx.Node] = []
    post: tuple[Op, ...] = ()
    merge_kind: Merge = "add"
    if not merges:
        chains = [_chain(start, body[-1], members, vals, d)]
    elif len(merges) == 1:
        merge = merges[0]
        branches = _tensor_args(merge)
        members.discard(merge)
        if merge.target in _CATS:
            merge_kind = "cat"
            if len(branches) < 2:
                raise UnsupportedModelError(f"node {merge.name}: concatenates one map")
            dim = _cat_dim(merge)
            chains = [_chain(start, br, members, vals, d) for br in branches]
            outs = [vals.get(br, x_in) for br in branches]
            if dim not in (1, -3) or any(v.nhwc for v in outs):
                raise UnsupportedModelError(
                    f"node {merge.name}: concatenation along dim {dim}, not the channels"
                )
            if len({(v.h, v.w) for v in outs}) != 1:
                raise UnsupportedModelError(
                    f"node {merge.name}: concatenates maps of other sizes "
                    f"{[(v.h, v.w) for v in outs]}"
                )
            vals[merge] = _Val(sum(v.c for v in outs), outs[0].h, outs[0].w)
        else:
            if len(branches) != 2:
                raise UnsupportedModelError(f"node {merge.name}: merges {len(branches)} branches")
            chains = [_chain(start, br, members, vals, d) for br in branches]

            def weight(ops: tuple[Op, ...]) -> tuple[int, int]:
                return (sum(op.window is not None for op in ops), len(ops))

            if weight(chains[0]) < weight(chains[1]):
                chains.reverse()
                branches.reverse()
            a, b = vals.get(branches[0], x_in), vals.get(branches[1], x_in)
            if (a.c, a.h, a.w, a.nhwc) != (b.c, b.h, b.w, b.nhwc) or a.nhwc:
                raise UnsupportedModelError(
                    f"node {merge.name}: adds maps of shapes "
                    f"{(a.c, a.h, a.w)} and {(b.c, b.h, b.w)}"
                )
            vals[merge] = a
        members.add(merge)
        post = _chain(merge, body[-1], members, vals, d) if body[-1] is not merge else ()
    else:
        raise UnsupportedModelError(
            f"nodes {', '.join(m.name for m in merges)}: several merges between two cut points"
        )
    out = vals[body[-1]]
    if out.nhwc:
        raise UnsupportedModelError(f"node {body[-1].name}: a cut point in channels-last layout")
    main = chains[0]
    if not branches and main and main[0].kind == "se":
        # The unit starts at an SE's input (a cut made for it): a synchronisation point.
        main = (dataclasses.replace(main[0], kind="sescale"), *main[1:])
    block = bool(branches)
    shortcut = chains[1] if block else None
    more = tuple(chains[2:])
    ops = main + (shortcut or ()) + tuple(o for c in more for o in c) + post
    name = _unit_name(index, ops[: len(ops) - len(post)] if block else ops, block)
    unit = Unit(
        index,
        name,
        _kind(ops, block and merge_kind == "add"),  # type: ignore[arg-type]
        main,
        (x_in.c, x_in.h, x_in.w),
        (out.c, out.h, out.w),
        shortcut,
        post,
        merge_kind,
        more,
    )
    whole = [(unit, (body[-1].name,), (out.c,))]
    if merge_kind != "add" or not block:
        return whole
    return _se_split(unit, body, branches, vals) or whole


def _se_split(
    unit: Unit, body: list[fx.Node], branches: list[fx.Node], vals: dict[fx.Node, _Val]
) -> list[tuple[Unit, tuple[str, ...], tuple[int, ...]]] | None:
    """A residual block with one squeeze-and-excitation on its main branch as two units
    cut at the SE's input, the cut carrying ``cat(SE input, shortcut output)``; None
    where the two maps differ in rows or columns (the SE then stays inside, global)."""
    ses = [k for k, op in enumerate(unit.main) if op.kind == "se"]
    if len(ses) != 1 or sum(op.kind == "se" for op in unit.ops) != 1:
        return None
    k = ses[0]
    se_node = next(
        n for n in body if n.op == "call_module" and str(n.target) == unit.main[k].module
    )
    s_node = _tensor_args(se_node)[0]
    s_val = vals[s_node]
    c_node = branches[1]
    c_val = vals[c_node]  # the block's input for an identity shortcut
    _, h_out, w_out = unit.out_shape
    if (s_val.h, s_val.w) != (c_val.h, c_val.w) or (s_val.h, s_val.w) != (h_out, w_out):
        return None
    carried = (s_val.c + c_val.c, s_val.h, s_val.w)
    head, tail = unit.main[:k], unit.main[k:]
    first = Unit(
        unit.index,
        f"{unit.name}/pre-se",
        _kind(head + (unit.shortcut or ()), False),  # type: ignore[arg-type]
        head,
        unit.in_shape,
        carried,
        unit.shortcut,
        merge="cat",
    )
    sl_s = Op("slice", carried[0], s_val.c, offset=0)
    sl_c = Op("slice", carried[0], c_val.c, offset=s_val.c)
    main = (sl_s, dataclasses.replace(tail[0], kind="sescale"), *tail[1:])
    second = Unit(
        unit.index + 1,
        f"{unit.name}/se",
        _kind(main + unit.post, True),  # type: ignore[arg-type]
        main,
        carried,
        unit.out_shape,
        (sl_c,),
        unit.post,
    )
    c_name = c_node.name
    return [
        (first, (s_node.name, c_name), (s_val.c, c_val.c)),
        (second, (body[-1].name,), (unit.out_shape[0],)),
    ]


def _head(
    model: nn.Module, name: str, nodes: list[fx.Node], x: _Val, modules: dict[str, nn.Module]
) -> Head:
    pool = (1, 1)
    first = nodes[0]
    if first.op == "call_module" and isinstance(modules[str(first.target)], nn.AdaptiveAvgPool2d):
        size = modules[str(first.target)].output_size  # type: ignore[union-attr]
        pool = _pair(size if size is not None else 1, name)
    linear = tuple(
        (m.in_features, m.out_features)
        for n in nodes
        if n.op == "call_module" and isinstance(m := modules[str(n.target)], nn.Linear)
    )
    if not linear:
        raise UnsupportedModelError(f"{name}: no linear layer in the head")
    kind = "vgg" if isinstance(model, VGG) else "resnet" if isinstance(model, ResNet) else "graph"
    return Head(kind, (x.c, x.h, x.w), pool, linear, linear[-1][1])  # type: ignore[arg-type]


# ---- running nodes as they are (the head, the unsplit reference) ----------------------------


def _fetch(model: nn.Module, target: str) -> Any:
    t: Any = model
    for part in target.split("."):
        t = getattr(t, part)
    return t


def run_nodes(
    model: nn.Module,
    graph: fx.Graph,
    inputs: dict[str, Tensor],
    stop: str,
    keep: Iterable[str] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run the nodes of ``graph`` that lead from ``inputs`` (values by node name) to node
    ``stop`` on the model's current modules and parameters (looked up at call time, so
    weights loaded by part are seen). Returns ``stop``'s value and those of ``keep``."""
    want = set(keep)
    env: dict[str, Any] = dict(inputs)
    nodes = {n.name: n for n in graph.nodes}

    def load(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n.name])

    needed: set[str] = set()
    stack = [nodes[stop], *(nodes[k] for k in want)]
    while stack:
        n = stack.pop()
        if n.name in needed or n.name in inputs:
            continue
        needed.add(n.name)
        stack.extend(n.all_input_nodes)
    kept: dict[str, Tensor] = {k: v for k, v in inputs.items() if k in want}
    for n in graph.nodes:
        if n.name not in needed:
            continue
        if n.op == "placeholder":
            raise ValueError(f"node {stop} needs the network input, not given")
        args, kwargs = load(n.args), load(n.kwargs)
        fn: Callable[..., Any]
        if n.op == "get_attr":
            env[n.name] = _fetch(model, str(n.target))
            continue
        if n.op == "call_module":
            fn = _fetch(model, str(n.target))
        elif n.op == "call_method":
            fn = getattr(args[0], str(n.target))
            args = args[1:]
        elif n.op == "call_function":
            fn = n.target  # type: ignore[assignment]
        else:  # output
            env[n.name] = args[0]
            continue
        env[n.name] = fn(*args, **kwargs)
        if n.name in want:
            kept[n.name] = env[n.name]
    return env[stop], kept
