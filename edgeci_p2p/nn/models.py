"""Building the supported torchvision models with weights every peer agrees on.

Without a weights file, every parameter is drawn from its own torch.Generator
seeded with ``sha256(f"{seed}:{param name}")``, so the weights depend only on
the seed, the parameter names and torch's CPU generator, never on construction
order or on other models in the process. The fingerprint (sha256 over the
state_dict in sorted-name order) lets peers verify they really hold the same
weights before any work is exchanged.

A torchvision weights file is used when given by path, or when torchvision's
own file for the model is in the torch hub cache; it is loaded with
``weights_only=True`` (never unpickle arbitrary objects).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from edgeci_p2p.nn.packed import pack_convs
from edgeci_p2p.wire.errors import ErrorCode

SUPPORTED_MODELS: tuple[str, ...] = (
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
)
"""The models a peer may serve: each one's units come from its traced graph
(:mod:`edgeci_p2p.nn.graph`), so adding a torchvision CNN is adding its name here
once ``edgeci units --model NAME`` describes it."""
DEFAULT_SEED = 20240
"""Seed of the default random weights (any value works if every peer uses the same)."""


INPUT_GAIN = 0.25
"""Scale of the first conv's random weights relative to He initialisation."""


class UnknownModelError(ValueError):
    """The caller asked for a model this project does not describe."""

    code = ErrorCode.BAD_REQUEST
    """The wire code of the error reply."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    module: nn.Module
    fingerprint: str
    source: str
    """'seed:<n>' or the path of the weights file."""

    @property
    def pretrained(self) -> bool:
        return not self.source.startswith("seed:")


def check_model_name(name: str) -> str:
    if name not in SUPPORTED_MODELS:
        raise UnknownModelError(f"unknown model {name!r}; supported: {', '.join(SUPPORTED_MODELS)}")
    return name


def meta_model(name: str) -> nn.Module:
    """``name`` on the meta device: shapes, no memory (a new module each call: parts
    of it get loaded). A few builders compute their layout from tensors (RegNet's
    block widths), which meta tensors cannot give; those are built on the CPU, moved."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None)
    except (NotImplementedError, RuntimeError):
        return torchvision.models.get_model(name, weights=None).to("meta")


def _weights_enum(name: str) -> torchvision.models.WeightsEnum:
    return torchvision.models.get_model_weights(name).DEFAULT  # type: ignore[no-any-return]


def categories(name: str) -> list[str]:
    """ImageNet class names from torchvision's weight metadata (no download)."""
    return list(_weights_enum(check_model_name(name)).meta["categories"])


def published_gmacs(name: str) -> float:
    """torchvision's published operation count (GMACs at 224x224) for ``name``."""
    return float(_weights_enum(check_model_name(name)).meta["_ops"])


def hub_weights_path(name: str) -> Path | None:
    """torchvision's weights file for ``name`` if it is in the torch hub cache."""
    url: str = _weights_enum(check_model_name(name)).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def _param_generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def first_conv_name(model: nn.Module) -> str:
    """The first conv of ``model`` in module order: its random weights get ``INPUT_GAIN``."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), "")


Rule = tuple[str, float, float]
"""How one tensor is drawn: ("normal", mean, std) or ("uniform", low, high)."""


def _rule(
    mod_name: str, mod: nn.Module, p_name: str, shape: tuple[int, ...], first_conv: str
) -> Rule | None:
    last_bn = mod_name.endswith("bn2") or mod_name.endswith("downsample.1")
    if isinstance(mod, nn.Conv2d | nn.Linear) and p_name == "weight":
        fan_in = math.prod(shape[1:])
        gain = INPUT_GAIN if mod_name == first_conv and isinstance(mod, nn.Conv2d) else 1.0
        return ("normal", 0.0, gain * math.sqrt(2.0 / fan_in))
    if p_name == "bias":
        return ("uniform", -0.05, 0.05)
    if isinstance(mod, nn.LayerNorm) and p_name == "weight":
        return ("uniform", 0.7, 1.3)
    if p_name == "layer_scale":  # ConvNeXt's per-channel residual scale
        return ("uniform", 0.1, 0.3)
    if isinstance(mod, nn.BatchNorm2d):
        if p_name == "weight":
            lo, hi = (0.2, 0.5) if last_bn else (0.7, 1.3)
            return ("uniform", lo, hi)
        if p_name == "running_mean":
            return ("normal", 0.0, 0.1)
        if p_name == "running_var":
            return ("uniform", 0.5, 1.5)
    return None


def _draw(t: torch.Tensor, rule: Rule, g: torch.Generator) -> None:
    kind, a, b = rule
    if kind == "normal":
        t.normal_(a, b, generator=g)
    else:
        t.uniform_(a, b, generator=g)


@torch.no_grad()
def seed_tensor(
    mod_name: str, mod: nn.Module, p_name: str, t: torch.Tensor, seed: int, first_conv: str
) -> None:
    """Draw parameter or buffer ``p_name`` of ``mod`` (named ``mod_name``) into ``t``.

    Each tensor has its own generator (seeded by its full name), so drawing one
    part of a model alone gives exactly the bits that drawing the whole model gives
    (``nn/weights.py`` loads models by part this way). Tensors no rule names (BN's
    ``num_batches_tracked``) keep what ``t`` holds: zeros, as torchvision builds them.
    """
    rule = _rule(mod_name, mod, p_name, tuple(t.shape), first_conv)
    if rule is not None:
        full = f"{mod_name}.{p_name}" if mod_name else p_name
        _draw(t, rule, _param_generator(seed, full))


DRAW_CHUNK = 1 << 20
"""Elements drawn at a time when a large tensor is drawn only to be hashed."""


@torch.no_grad()
def seeded_pieces(
    mod_name: str,
    mod: nn.Module,
    p_name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    first_conv: str,
    chunk: int = DRAW_CHUNK,
) -> Iterator[torch.Tensor]:
    """The tensor :func:`seed_tensor` draws, flattened, in consecutive pieces of about
    ``chunk`` elements, bit for bit: the fingerprint hashes VGG-16's fc1 (411 MB)
    without ever holding it (the start-up peak of issue 24).

    Why the pieces are the same bits: torch's CPU ``normal_`` on a contiguous float32
    tensor of 16 or more elements draws one uniform per element in order, turns them
    into normals 16 at a time (Box-Muller on elements i and i+8), and draws the last 16
    again when the size is not a multiple of 16. Pieces that are multiples of 16, the
    last one at least 16 long, drawn one after another from the same generator, thus
    give the whole draw; ``tests/test_memory.py`` checks it against the whole model.
    Small tensors and other rules are drawn whole."""
    numel = math.prod(shape)
    rule = _rule(mod_name, mod, p_name, shape, first_conv)
    step = chunk - chunk % 16
    if rule is None or rule[0] != "normal" or dtype != torch.float32 or numel < step + 16:
        t = torch.zeros(shape, dtype=dtype)
        seed_tensor(mod_name, mod, p_name, t, seed, first_conv)
        yield t.reshape(-1)
        return
    g = _param_generator(seed, f"{mod_name}.{p_name}" if mod_name else p_name)
    at = 0
    while at < numel:
        k = step if numel - at >= step + 16 else numel - at
        piece = torch.empty(k, dtype=dtype)
        _draw(piece, rule, g)
        yield piece
        at += k


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int = DEFAULT_SEED) -> None:
    """Deterministic, well-scaled random weights (He init; non-trivial BN statistics).

    BN running statistics and affine parameters are random too, so a BN applied
    to the wrong rows would show. The last BN of each residual branch gets a
    small scale so that activations do not grow through ResNet's 16 additions.
    The first conv is scaled down by ``INPUT_GAIN``: activations then stay well
    below 1 through the network, so the float32 rounding differences between
    tile shapes (oneDNN sums in a shape-dependent order, ~1e-6 relative) stay
    inside ``assert_close``'s default absolute tolerance as well as its relative one.
    """
    first = first_conv_name(model)
    for mod_name, mod in model.named_modules():
        for p_name, t in list(mod.named_parameters(recurse=False)) + list(
            mod.named_buffers(recurse=False)
        ):
            seed_tensor(mod_name, mod, p_name, t, seed, first)


def hash_header(h: Any, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """What the fingerprint hashes of an entry before its bytes."""
    h.update(f"{name}|{dtype}|{tuple(shape)}\n".encode())


def hash_bytes(h: Any, t: torch.Tensor) -> None:
    """A tensor's bytes (all or one piece of an entry) into the fingerprint's hash."""
    t = t.detach().cpu().contiguous()
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def hash_entry(h: Any, name: str, t: torch.Tensor) -> None:
    """One state_dict entry into the fingerprint's hash (see :func:`fingerprint`)."""
    hash_header(h, name, t.dtype, tuple(t.shape))
    hash_bytes(h, t)


def fingerprint(model: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of the state_dict, sorted by name."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        hash_entry(h, name, state[name])
    return h.hexdigest()


def weights_path(name: str, weights: str | Path | None, use_hub_cache: bool) -> Path | None:
    """The weights file ``name`` is loaded from (None: seeded weights); a given path
    that is not a file is an error."""
    path = Path(weights) if weights is not None else None
    if path is None and use_hub_cache:
        path = hub_weights_path(name)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"weights file for {name} not found: {path}")
    return path


def load_model(
    name: str,
    weights: str | Path | None = None,
    *,
    seed: int = DEFAULT_SEED,
    use_hub_cache: bool = True,
) -> LoadedModel:
    """Build ``name`` in eval mode with seeded weights, or with a weights file.

    ``weights`` is a path to a torchvision state_dict; when None and
    ``use_hub_cache`` is set, torchvision's cached file is used if present.
    """
    check_model_name(name)
    model: nn.Module = torchvision.models.get_model(name, weights=None)
    path = weights_path(name, weights, use_hub_cache)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"weights file {path} does not fit {name}: {e}") from e
        source = str(path)
    else:
        seeded_init(model, seed)
        source = f"seed:{seed}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fp = fingerprint(model)  # of the plain weights, as a peer's parts hash them
    return LoadedModel(name, pack_convs(model), fp, source)
