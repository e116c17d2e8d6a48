"""Every planner on every model and shipped testbed: valid plans, honest predictions,
and the properties each strategy promises."""

from __future__ import annotations

import pytest

from edgeci_p2p.core.sim import simulate
from edgeci_p2p.nn.models import SUPPORTED_MODELS
from edgeci_p2p.nn.spec import spec_for
from edgeci_p2p.planners import BASELINES, STRATEGIES, plan
from edgeci_p2p.planners.context import Context
from edgeci_p2p.planners.testbeds import load_testbed
from edgeci_p2p.planners.testbeds import testbed_names as shipped_testbeds
from tests.planfakes import check_plan, fake_testbed

# VGG and ResNet-18/34 on every testbed; the graph-described models (issue 23) on one,
# at a small size, in tests/test_graph_models.py (each costs ~5 s a testbed here).
CLASSIC = tuple(m for m in SUPPORTED_MODELS if m.startswith(("vgg", "resnet18", "resnet34")))

# Strategies whose prediction is the simulator's own number.
EXACT = ("edgeci", "edgeci-halo", "local", "deepthings")


@pytest.mark.parametrize("testbed_name", shipped_testbeds())
@pytest.mark.parametrize("model", CLASSIC)
def test_every_planner_emits_a_valid_plan(model: str, testbed_name: str) -> None:
    spec = spec_for(model)
    tb = load_testbed(testbed_name)
    ctx = Context(spec, tb)
    for strategy in STRATEGIES:
        p = plan(strategy, spec, tb, ctx)
        assert p.strategy == strategy
        check_plan(p, spec, tb)
        if strategy in EXACT:
            res = simulate(p, spec, tb, ctx.work, record=False)
            assert p.predicted == pytest.approx(res.latency, rel=1e-9)


@pytest.mark.parametrize("testbed_name", shipped_testbeds())
@pytest.mark.parametrize("model", ["vgg16", "resnet34"])
def test_edgeci_is_at_least_as_fast_as_every_baseline(model: str, testbed_name: str) -> None:
    spec = spec_for(model)
    tb = load_testbed(testbed_name)
    ctx = Context(spec, tb)
    ours = simulate(plan("edgeci", spec, tb, ctx), spec, tb, ctx.work, record=False).latency
    for base in BASELINES:
        theirs = simulate(plan(base, spec, tb, ctx), spec, tb, ctx.work, record=False).latency
        assert ours <= theirs * (1 + 1e-9), f"{base} beats edgeci on {model}/{testbed_name}"


def test_a_hopeless_device_is_left_out_and_a_lone_device_plans_locally() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([5.0, 5.0, 0.001], [100, 100, 100])
    p = plan("edgeci", spec, tb)
    assert all(2 not in st.devices for st in p.stages)
    alone = fake_testbed([5.0], [100])
    p1 = plan("edgeci", spec, alone)
    assert [st.devices for st in p1.stages] == [(0,)] * len(p1.stages)
    assert p1.predicted == pytest.approx(plan("local", spec, alone).predicted)


def test_on_identical_devices_with_a_fast_network_strips_are_near_equal() -> None:
    spec = spec_for("vgg11", 96, 96)
    tb = fake_testbed([5.0] * 3, [10_000.0] * 3, shared=False, rtt_ms=0.01)
    p = plan("edgeci", spec, tb, Context(spec, tb))
    big = max(p.stages, key=lambda st: st.stop - st.start)
    sizes = [pt.region.rows.size for pt in big.parts]
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 0.2 * max(sizes) + 2


def test_modnn_splits_every_layer_by_compute_only() -> None:
    spec = spec_for("vgg11", 64, 64)
    tb = fake_testbed([4.0, 2.0, 2.0], [1.0, 1000.0, 1000.0])  # the fast one has a bad link
    p = plan("modnn", spec, tb)
    assert [(s.start, s.stop) for s in p.stages] == [(u, u + 1) for u in range(spec.n_units)]
    first = p.stages[0]
    assert [pt.region.rows.size for pt in first.parts] == [32, 16, 16]


def test_deepthings_fuses_a_prefix_on_an_equal_grid_and_leaves_the_rest_to_the_gateway() -> None:
    spec = spec_for("vgg16")
    tb = load_testbed("pi4-wifi-4")
    p = plan("deepthings", spec, tb)
    ftp = p.stages[0]
    assert ftp.schedule == "pull" and ftp.start == 0
    m = p.notes["grid"]
    assert len(ftp.parts) == m * m
    sizes = {pt.region.rows.size for pt in ftp.parts} | {pt.region.cols.size for pt in ftp.parts}
    assert max(sizes) - min(sizes) <= 1
    assert all(st.devices == (tb.auctioneer,) for st in p.stages[1:])


def test_edgeld_blocks_end_at_pools() -> None:
    spec = spec_for("vgg16")
    p = plan("edgeld", spec, load_testbed("homog-4"))
    pools = {u.index + 1 for u in spec.units if u.kind == "pool"}
    assert {st.stop for st in p.stages} <= pools | {spec.n_units}


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="edgeci"):
        plan("magic", spec_for("vgg11", 32, 32), fake_testbed([1.0], [1.0]))


def test_shipped_testbeds_state_their_source_and_paths_load_too(tmp_path: object) -> None:
    import json
    from pathlib import Path

    for name in shipped_testbeds():
        tb = load_testbed(name)
        assert tb.name == name and len(tb.source) > 40
    path = Path(str(tmp_path)) / "mine.json"
    path.write_text(json.dumps(load_testbed("homog-4").to_dict()))
    assert load_testbed(str(path)) == load_testbed("homog-4")
    with pytest.raises(ValueError, match="pi4-wifi-4"):
        load_testbed("nonesuch")


def test_equal_finish_rows_solve_the_finish_together_equations() -> None:
    import random

    from edgeci_p2p.planners.context import Affine
    from edgeci_p2p.planners.dpfl import equal_finish_rows

    rnd = random.Random(4)
    for _ in range(200):
        k = rnd.randrange(1, 7)
        devs = rnd.sample(range(10), k)
        aid = rnd.choice([*devs, 99])
        models = [
            (
                d,
                Affine(*(rnd.uniform(0, 1e-3) for _ in range(6)), lat=rnd.uniform(0, 1e-3))
                if d != aid
                else Affine(0, 0, rnd.uniform(1e-4, 1e-3), rnd.uniform(0, 1e-3), 0, 0, 0),
            )
            for d in devs
        ]
        rows = equal_finish_rows(models, aid, 100)
        if all(d == aid for d, _ in models):
            assert rows is None
            continue
        assert rows is not None and sum(rows) == pytest.approx(100)
        remote = [(r, af) for r, (d, af) in zip(rows, models, strict=True) if d != aid]
        finish = []
        for m, (r, af) in enumerate(remote):
            scatter = sum(x.x1 * q + x.x0 for q, x in remote[: m + 1])
            gather = sum(x.y1 * q + x.y0 for q, x in remote[m:])
            finish.append(scatter + af.c1 * r + af.c0 + gather + af.lat)
        for r, (d, af) in zip(rows, models, strict=True):
            if d == aid:
                finish.append(af.c1 * r + af.c0)
        assert max(finish) - min(finish) < 1e-9
