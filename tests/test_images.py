"""Pixels and their normalisation (nn/images.py): a slab's pixels normalise to exactly
the floats of the same rows of the whole input, so they can travel instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from edgeci_p2p.nn.images import (
    MEAN,
    STD,
    decode,
    input_hw,
    normalise,
    pixels_of,
    sample_image_path,
    to_input,
    to_pixels,
)

IMG = decode(sample_image_path().read_bytes())


@pytest.mark.parametrize("size", ["224", "native"])
def test_to_input_is_torchvisions_preprocessing_bit_for_bit(size: str) -> None:
    img = TF.center_crop(TF.resize(IMG, 256), 224) if size == "224" else IMG
    want = TF.normalize(TF.to_tensor(img), list(MEAN), list(STD)).unsqueeze(0)
    assert torch.equal(to_input(IMG, size), want)


def test_rows_of_pixels_normalise_to_the_same_rows_of_the_input() -> None:
    px = to_pixels(IMG, "224")
    x = normalise(px)
    for a, b in ((0, 1), (0, 57), (13, 90), (200, 224)):
        assert torch.equal(normalise(np.ascontiguousarray(px[:, :, a:b])), x[:, :, a:b])


def test_a_preprocessed_tensor_gives_back_its_pixels_and_nothing_else_does() -> None:
    px = to_pixels(IMG, "224")
    x = to_input(IMG, "224").numpy()
    assert np.array_equal(pixels_of(x), px)  # type: ignore[arg-type]
    nudged = x.copy()
    nudged[0, 1, 5, 7] = np.nextafter(nudged[0, 1, 5, 7], np.float32(10))
    assert pixels_of(nudged) is None  # one ulp off: not exactly pixels, stays floats
    assert pixels_of(np.random.default_rng(1).standard_normal((1, 3, 8, 8), np.float32)) is None
    assert pixels_of(np.zeros((1, 4, 8, 8), np.float32)) is None
    with pytest.raises(ValueError, match="uint8"):
        normalise(x)  # type: ignore[arg-type]


def test_input_hw_is_the_decoded_inputs_size_from_the_header_alone() -> None:
    data = sample_image_path().read_bytes()
    for size in ("224", "native"):
        assert input_hw(data, size) == tuple(to_pixels(decode(data), size).shape[2:])
    assert input_hw(data[:2000], "native") == (IMG.height, IMG.width)  # decode fails later
    assert input_hw(b"not an image") is None
    assert input_hw(data, "448") is None
    assert input_hw(data, "native", max_pixels=IMG.width * IMG.height - 1) is None
