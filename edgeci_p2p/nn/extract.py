"""Turning a model into a pure :class:`ModelSpec` of units.

:func:`describe` reads the model's traced graph (:mod:`edgeci_p2p.nn.graph`), for any
model whose ops can be tiled. :func:`describe_by_class` is the older extractor that
knows torchvision's VGG and BasicBlock ResNet classes by name; it stays as the
reference the graph-based one is checked against (``tests/test_graph_extract.py``).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import VGG, ResNet
from torchvision.models.resnet import BasicBlock

from edgeci_p2p.core.geometry import op_out_hw
from edgeci_p2p.core.units import Head, ModelSpec, Op, Unit, Window
from edgeci_p2p.nn.graph import UnsupportedModelError, extract

__all__ = ["UnsupportedModelError", "describe", "describe_by_class"]


def describe(
    model: nn.Module, name: str, height: int, width: int, fingerprint: str = ""
) -> ModelSpec:
    """The unit chain and head of ``model`` for an input of ``height x width`` RGB pixels,
    from its traced graph; the graph facts the executor needs ride in ``spec.extra``."""
    ex = extract(model, name, height, width, fingerprint)
    ex.spec.extra["graph"] = ex
    return ex.spec


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):
        raise UnsupportedModelError(f"string padding {v!r} is not supported")
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _op(name: str, m: nn.Module, channels: int) -> Op:
    """Describe one torch layer; ``channels`` is its input channel count."""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise UnsupportedModelError(f"{name}: padding mode {m.padding_mode!r}")
        return Op(
            "conv",
            m.in_channels,
            m.out_channels,
            Window(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation)),
            groups=m.groups,
            bias=m.bias is not None,
            module=name,
        )
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise UnsupportedModelError(f"{name}: max-pool returning indices")
        stride = m.stride if m.stride is not None else m.kernel_size
        return Op(
            "maxpool",
            channels,
            channels,
            Window(
                _pair(m.kernel_size),
                _pair(stride),
                _pair(m.padding),
                _pair(m.dilation),
                bool(m.ceil_mode),
            ),
            module=name,
        )
    if isinstance(m, nn.BatchNorm2d):
        return Op("bn", channels, channels, module=name)
    if isinstance(m, nn.ReLU):
        return Op("relu", channels, channels, module=name)
    raise UnsupportedModelError(f"{name}: layer {type(m).__name__} is not supported")


class _Builder:
    def __init__(self, channels: int, height: int, width: int) -> None:
        self.shape = (channels, height, width)
        self.units: list[Unit] = []

    def chain(
        self, named: list[tuple[str, nn.Module]]
    ) -> tuple[tuple[Op, ...], tuple[int, int, int]]:
        ops: list[Op] = []
        c, h, w = self.shape
        for name, m in named:
            op = _op(name, m, c)
            ops.append(op)
            c = op.out_channels
            h, w = op_out_hw(op, (h, w))
        return tuple(ops), (c, h, w)

    def add(self, name: str, kind: str, named: list[tuple[str, nn.Module]]) -> None:
        ops, out = self.chain(named)
        self.units.append(Unit(len(self.units), name, kind, ops, self.shape, out))  # type: ignore[arg-type]
        self.shape = out

    def add_block(self, name: str, b: BasicBlock) -> None:
        main, out = self.chain(
            [
                (f"{name}.conv1", b.conv1),
                (f"{name}.bn1", b.bn1),
                (f"{name}.relu", b.relu),
                (f"{name}.conv2", b.conv2),
                (f"{name}.bn2", b.bn2),
            ]
        )
        shortcut: tuple[Op, ...] = ()
        if b.downsample is not None:
            shortcut, sc_out = self.chain(
                [(f"{name}.downsample.{i}", m) for i, m in enumerate(b.downsample)]
            )
            if sc_out != out:
                raise UnsupportedModelError(f"{name}: shortcut shape {sc_out} != main {out}")
        elif out != self.shape:
            raise UnsupportedModelError(f"{name}: identity shortcut but shape changes")
        post = (Op("relu", out[0], out[0], module=f"{name}.relu"),)
        self.units.append(
            Unit(len(self.units), name, "block", main, self.shape, out, shortcut, post)
        )
        self.shape = out


def _group_vgg_features(
    features: nn.Sequential,
) -> list[tuple[str, str, list[tuple[str, nn.Module]]]]:
    """(unit name, kind, layers): each conv takes the BN/ReLU after it; pools stand alone."""
    groups: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    for idx, m in features.named_children():
        name = f"features.{idx}"
        if isinstance(m, nn.Conv2d):
            groups.append(("conv", [(name, m)]))
        elif isinstance(m, nn.MaxPool2d):
            groups.append(("pool", [(name, m)]))
        elif isinstance(m, nn.BatchNorm2d | nn.ReLU) and groups and groups[-1][0] == "conv":
            groups[-1][1].append((name, m))
        else:
            raise UnsupportedModelError(f"{name}: unexpected {type(m).__name__} in VGG features")
    out = []
    for kind, layers in groups:
        first, last = layers[0][0], layers[-1][0]
        uname = first if first == last else f"{first}-{last.rsplit('.', 1)[1]}"
        out.append((uname, kind, layers))
    return out


def describe_by_class(
    model: nn.Module, name: str, height: int, width: int, fingerprint: str = ""
) -> ModelSpec:
    """The unit chain and head of a torchvision VGG or BasicBlock ResNet, by its classes."""
    b = _Builder(3, height, width)
    if isinstance(model, VGG):
        for uname, kind, named in _group_vgg_features(model.features):
            b.add(uname, kind, named)
        pool = model.avgpool
        if not isinstance(pool, nn.AdaptiveAvgPool2d):
            raise UnsupportedModelError("VGG avgpool is not adaptive")
        linear = tuple(
            (m.in_features, m.out_features) for m in model.classifier if isinstance(m, nn.Linear)
        )
        head = Head("vgg", b.shape, _pair(pool.output_size), linear, linear[-1][1])  # type: ignore[arg-type]
    elif isinstance(model, ResNet):
        b.add("stem", "conv", [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu)])
        b.add("maxpool", "pool", [("maxpool", model.maxpool)])
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(model, layer_name)
            for i, block in enumerate(layer):
                if not isinstance(block, BasicBlock):
                    raise UnsupportedModelError(
                        f"{layer_name}.{i}: only BasicBlock ResNets (18/34) are supported"
                    )
                b.add_block(f"{layer_name}.{i}", block)
        fc = model.fc
        head = Head(
            "resnet", b.shape, (1, 1), ((fc.in_features, fc.out_features),), fc.out_features
        )
    else:
        raise UnsupportedModelError(f"{name}: {type(model).__name__} is neither VGG nor ResNet")
    return ModelSpec(name, (3, height, width), tuple(b.units), head, fingerprint)
