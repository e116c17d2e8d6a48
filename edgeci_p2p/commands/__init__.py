"""One module per ``edgeci`` subcommand; what several of them share lives here."""

from __future__ import annotations

import argparse

MODELS_HELP = (
    "vgg11..vgg19[_bn], resnet18, resnet34, resnet50, mobilenet_v2, mobilenet_v3_large, "
    "efficientnet_b0, regnet_y_400mf, convnext_tiny"
)
"""The models the CLI takes (``edgeci_p2p.nn.models.SUPPORTED_MODELS``, without torch)."""


def add_zeros_argument(p: argparse.ArgumentParser) -> None:
    """``--zeros Z``: plan as if every map after the input had this share of zeros
    (:func:`edgeci_p2p.core.density.with_zeros`)."""
    p.add_argument(
        "--zeros",
        type=float,
        default=0.0,
        help="share of zeros in the maps after the input (they travel zero-suppressed, "
        "docs/protocol.md 5.4; about 0.5 with seeded weights, more with trained ones); "
        "default 0: every map planned whole",
    )
