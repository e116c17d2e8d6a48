"""Unit descriptions without loading weights: the architecture alone decides the geometry."""

from __future__ import annotations

from functools import lru_cache

import torch
import torchvision

from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import check_model_name


@lru_cache(maxsize=64)
def spec_for(name: str, height: int = 224, width: int = 224) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` at ``height x width`` (no fingerprint).

    The model is built on the meta device: no memory, no initialisation.
    """
    check_model_name(name)
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    return describe(model, name, height, width)
