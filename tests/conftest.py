"""Shared fixtures: models are loaded once per session (VGG-16 takes a few seconds)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pure-core tests do not need torch
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Every async test runs on the standard asyncio loop and, where installed, on uvloop;
    one marked ``daemon_loop`` only on the loop ``edgeci-peer`` runs on (uvloop where
    installed): a slow end-to-end test whose subject is not the loop."""
    import asyncio

    factories: dict[str, object] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return factories
    if item.get_closest_marker("daemon_loop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    factories["uvloop"] = uvloop.new_event_loop
    return factories
