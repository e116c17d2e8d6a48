"""Unit descriptions without loading weights: the architecture alone decides the geometry."""

from __future__ import annotations

from functools import lru_cache

from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import check_model_name, meta_model


@lru_cache(maxsize=64)
def spec_for(name: str, height: int = 224, width: int = 224) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` at ``height x width`` (no fingerprint).

    The model is built on the meta device: no memory, no initialisation.
    """
    check_model_name(name)
    model = meta_model(name)
    return describe(model, name, height, width)
