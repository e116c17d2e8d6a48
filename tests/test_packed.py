"""Conv weights packed once at load (nn/packed.py): the same model, bit for bit where
it must be, to float rounding against the plain kernel."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from edgeci_p2p.core.geometry import full_region, row_strips, trace
from edgeci_p2p.nn import packed
from edgeci_p2p.nn.executor import FusedExecutor, crop
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import load_model
from edgeci_p2p.nn.weights import ModelWeights, state_of

pytestmark = pytest.mark.skipif(not packed.available(), reason="no packed convolutions here")


def _plain(name: str, like: nn.Module) -> nn.Module:
    m = torchvision.models.get_model(name, weights=None).eval()
    m.load_state_dict(like.state_dict())
    return m


def test_load_model_packs_every_plain_conv_and_keeps_its_bits() -> None:
    lm = load_model("resnet18", use_hub_cache=False)
    convs = [m for m in lm.module.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is packed.PackedConv2d for m in convs)
    assert all(m.weight.is_mkldnn for m in convs)
    plain = _plain("resnet18", lm.module)
    # state_dict gives the plain layout back, bit for bit (torch.save and comparisons)
    for (k, a), (k2, b) in zip(
        lm.module.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert k == k2 and not a.is_mkldnn and torch.equal(a, b), k


def test_packed_logits_are_the_plain_ones_to_float_rounding() -> None:
    lm = load_model("resnet18", use_hub_cache=False)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = lm.module(x), _plain("resnet18", lm.module)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_tiles_of_a_packed_model_equal_its_unsplit_maps_bit_for_bit(name: str) -> None:
    lm = load_model(name, use_hub_cache=False)
    spec = describe(lm.module, name, 64, 64, lm.fingerprint)
    ex = FusedExecutor(lm.module, spec)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = ex.activations(x)
    for u in range(spec.n_units):
        _, h, w = spec.shape_at(u + 1)
        if h < 3:
            continue
        # one-row strips at both borders and in the middle: every padding case
        for r in row_strips(h, w, sorted({1, h // 2, h - 1} - {0, h})):
            tr = trace(spec, u, u + 1, r)
            got = ex.run_trace(
                tr, crop(maps[u], full_region(*spec.shape_at(u)[1:]), tr.need), tr.need
            )
            assert torch.equal(got, crop(maps[u + 1], full_region(h, w), r)), (u, r)


def test_parts_load_packed_and_release_to_meta() -> None:
    w = ModelWeights("vgg11", seed=0, use_hub_cache=False)
    part = "features.3"
    conv = w.module.get_submodule(part)
    # marked when built, before any weight loads: an executor made now runs channels-last
    assert type(conv) is packed.PackedConv2d and conv.weight.is_meta
    assert FusedExecutor(w.module, describe(w.module, "vgg11", 64, 64, "x")).channels_last
    w.acquire(part)
    assert type(conv) is packed.PackedConv2d and conv.weight.is_mkldnn
    whole = load_model("vgg11", use_hub_cache=False, seed=0)
    assert torch.equal(state_of(w)[f"{part}.weight"], whole.module.state_dict()[f"{part}.weight"])
    w.release(part)
    assert conv.weight.is_meta
    w.acquire(part)  # packed again on the next load
    assert conv.weight.is_mkldnn
    w.release(part)


def test_a_plain_model_runs_as_before() -> None:
    plain = torchvision.models.get_model("vgg11", weights=None).eval()
    ex = FusedExecutor(plain, describe(plain, "vgg11", 64, 64, "x"))
    assert not ex.channels_last
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_what_packing_leaves_alone() -> None:
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    same = nn.Conv2d(8, 8, 3, padding="same")
    reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
    for m in (depthwise, same, reflect):
        assert not packed.packable(m)
        assert packed.pack_weight(m, m.weight.detach()) is not None
        assert type(m) is nn.Conv2d
    assert packed.packable(nn.Conv2d(8, 8, 3, padding=1))


def test_off_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    packed.available.cache_clear()
    monkeypatch.setenv(packed.ENV, "0")
    try:
        assert not packed.available()
        m = nn.Conv2d(8, 8, 3, padding=1).eval()
        w = m.weight.detach()
        assert packed.pack_weight(m, w) is w and type(m) is nn.Conv2d
    finally:
        monkeypatch.delenv(packed.ENV)
        packed.available.cache_clear()
    assert packed.available()


def test_strips_keep_their_layout_from_stage_to_stage() -> None:
    # A strip job's own rows come back channels-last; joined with received halo rows
    # (plain NCHW off the wire) they stay channels-last, and the worker's copy of them
    # is of the executor's layout: the same values either way.
    import numpy as np

    from edgeci_p2p.aio.strip_inputs import join_rows

    own = torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last).numpy()
    halo = np.random.default_rng(0).standard_normal((1, 8, 2, 6)).astype(np.float32)
    got = join_rows([(10, own), (15, halo)], 11, 17)
    assert got is not None
    want = np.concatenate([own[:, :, 1:], halo], axis=2)
    assert np.array_equal(got, want) and got.transpose(0, 2, 3, 1).flags.c_contiguous
    plain = join_rows([(10, np.ascontiguousarray(own)), (15, halo)], 11, 17)
    assert plain is not None and plain.flags.c_contiguous and np.array_equal(plain, want)
    m = load_model("vgg11", use_hub_cache=False)
    ex = FusedExecutor(m.module, describe(m.module, "vgg11", 64, 64, m.fingerprint))
    for arr in (got, plain):
        t = ex.own_slab(arr)
        assert t.is_contiguous(memory_format=torch.channels_last)
        assert np.array_equal(t.numpy(), want) and not np.shares_memory(t.numpy(), arr)
