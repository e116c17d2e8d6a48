"""Unit descriptions without loading weights: the architecture alone decides the geometry."""

from __future__ import annotations

from functools import cache, lru_cache

from torch import nn

from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import check_model_name, meta_model


@cache
def _architecture(name: str) -> nn.Module:
    """One meta-device model per name: its graph is traced once for every size."""
    return meta_model(check_model_name(name))


@lru_cache(maxsize=64)
def spec_for(name: str, height: int = 224, width: int = 224) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` at ``height x width`` (no fingerprint).

    The model is built on the meta device: no memory, no initialisation.
    """
    return describe(_architecture(name), name, height, width)
