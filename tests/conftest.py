"""Shared fixtures: models are loaded once per session (VGG-16 takes a few seconds)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, Phase, settings

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
# `make mutation`: the same examples on every run, so that a mutant's verdict does not
# depend on what hypothesis happened to draw, and no shrinking: a mutant is killed by
# the first failing example, the smallest one is of no use there (docs/testing.md).
settings.register_profile(
    "mutation",
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
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
    a test marked ``one_loop`` (a multi-second cluster scenario whose subject is the
    cluster, not the loop) runs on the loop peers run on: uvloop where installed."""
    import asyncio

    factories: dict[str, object] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return factories
    if item.get_closest_marker("one_loop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    factories["uvloop"] = uvloop.new_event_loop
    return factories


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutmut (``make mutation``), the fastest tests first. mutmut runs a mutant's
    tests with ``-x`` in no particular order, so a mutant that a 10 ms geometry test kills
    often waited behind the 8 s planner optimality check first; survivors run every test
    either way, so the verdicts do not change. The durations are mutmut's own, from its
    stats file in the directory it runs the tests in (``mutants/``)."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    try:
        with open("mutmut-stats.json", encoding="utf-8") as f:
            durations: dict[str, float] = json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
