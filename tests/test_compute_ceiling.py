"""benchmarks/compute_ceiling.py's pure parts: the model as a chain with barrier points,
strip rows, the layouts it measures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compute_ceiling
from compute_ceiling import layout_shares, split_model, strip_rows


@pytest.mark.parametrize(("name", "units", "pools"), [("vgg11", 8, 5), ("resnet18", 9, 5)])
def test_the_chain_computes_the_model(name: str, units: int, pools: int) -> None:
    import torch

    from edgeci_p2p.nn.models import load_model

    model = load_model(name, use_hub_cache=False).module
    layers, conv_ends, pool_ends, head = split_model(model)
    # VGG-11: 8 convolutions, 5 pools; ResNet-18: the stem's ReLU and 8 blocks, the
    # stem's pool and the ends of its 4 stages.
    assert (len(conv_ends), len(pool_ends)) == (units, pools)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        h = x
        for m in layers:
            h = m(h)
        assert torch.equal(head(h), model(x))


def test_strip_rows_follow_the_shares() -> None:
    assert strip_rows([0.4, 0.2667, 0.2, 0.1333]) == [90, 60, 45, 32]
    assert strip_rows([None] * 4) == [56] * 4
    assert strip_rows([None] * 8) == [32] * 8  # never below 32 rows (five halvings)


def test_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    base = [0.6, 0.4, 0.3, 0.2]
    assert layout_shares("auto", base, 2) == ("headroom", [0.4, 0.2667, 0.2, 0.1333], None)
    assert layout_shares("auto", base, 16) == ("testbed", base, None)
    assert layout_shares("testbed", base, 2) == ("testbed", base, None)
    monkeypatch.setattr(compute_ceiling, "machine_cores", lambda: [0, 1])
    assert layout_shares("auto", base, 2, pin="packed") == (
        "headroom-packed",
        [0.4, 0.2667, 0.2, 0.1333],
        [0, 1, 1, 0],
    )
    with pytest.raises(ValueError, match="unknown pinning"):
        layout_shares("auto", base, 2, pin="spread")
    monkeypatch.setattr(compute_ceiling, "machine_cores", lambda: list(range(16)))
    assert layout_shares("auto", base, 16, homogeneous=4) == (
        "homogeneous-4",
        [None] * 4,
        [1, 2, 3, 4],
    )
    monkeypatch.setattr(compute_ceiling, "machine_cores", lambda: [0, 1])
    with pytest.raises(ValueError, match="needs 5 cores"):
        layout_shares("auto", base, 2, homogeneous=4)
