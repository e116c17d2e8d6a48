"""Decoding and preprocessing input images (torchvision's ImageNet conventions)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from edgeci_p2p.wire.errors import ErrorCode

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 40_000_000
"""Images larger than this are refused before their pixels are decoded."""


class ImageError(ValueError):
    """The image could not be used (unreadable, or too large)."""

    code = ErrorCode.BAD_REQUEST
    """The wire code of the error reply."""


def sample_image_path() -> Path:
    """matplotlib's bundled photo of Grace Hopper (a real photo, present everywhere)."""
    from matplotlib import cbook

    return Path(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode JPEG/PNG bytes to RGB; the size is checked from the header first."""
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
        return img.convert("RGB")
    except ImageError:
        raise
    except Exception as e:  # PIL raises many types for corrupt input
        raise ImageError(f"cannot decode image: {e}") from e


def input_hw(
    data: bytes, size: str = "224", max_pixels: int = MAX_PIXELS
) -> tuple[int, int] | None:
    """The (H, W) the network input of ``data`` will have, from the image header alone
    (microseconds; nothing is decoded), so that a request can be planned while its image
    decodes. None when the header does not say, or says too much: :func:`decode` then
    gives the error."""
    try:
        w, h = Image.open(io.BytesIO(data)).size
    except Exception:  # PIL raises many types for corrupt input; decode() reports it
        return None
    if w * h > max_pixels or w < 1 or h < 1:
        return None
    if size == "224":
        return (224, 224)
    return (h, w) if size == "native" else None


def to_pixels(img: Image.Image, size: str = "224") -> np.ndarray:
    """The (1, 3, H, W) uint8 pixels the network input is normalised from.

    ``size="224"``: torchvision's standard resize to 256 and centre crop to 224.
    ``size="native"``: the image's own size, no resize or crop.
    """
    if size == "224":
        img = TF.center_crop(TF.resize(img, 256), 224)  # type: ignore[assignment]
    elif size != "native":
        raise ValueError(f"size must be '224' or 'native', not {size!r}")
    hwc = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)[None])


def normalise(pixels: np.ndarray) -> Tensor:
    """Float32 network input from (1, 3, H, W) uint8 pixels, as ``TF.to_tensor`` and
    ``TF.normalize`` compute it. Element by element, so the rows of a slab normalise
    to exactly the same floats as the same rows of the whole image: a peer given a
    slab's pixels computes what the entry peer would have."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (1, 3, H, W) uint8, not {pixels.dtype} {pixels.shape}")
    x = torch.from_numpy(np.array(pixels)).to(dtype=torch.float32).div(255)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def pixels_of(x: np.ndarray) -> np.ndarray | None:
    """The uint8 pixels ``x`` was normalised from, if it was (exactly: normalising them
    gives ``x`` bit for bit); else None. Lets a preprocessed request travel as pixels."""
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 3 or not np.isfinite(x).all():
        return None
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    raw = np.rint((x * std + mean) * 255)
    if raw.min() < 0 or raw.max() > 255:
        return None
    px = raw.astype(np.uint8)
    return px if np.array_equal(normalise(px).numpy(), x) else None


def to_input(img: Image.Image, size: str = "224") -> Tensor:
    """A normalised (1, 3, H, W) float32 batch (see :func:`to_pixels`)."""
    return normalise(to_pixels(img, size))


def load_input(path: str | Path, size: str = "224") -> Tensor:
    return to_input(decode(Path(path).read_bytes()), size)


def top_k(logits: Tensor, labels: list[str], k: int = 5) -> list[tuple[int, str, float]]:
    """(class index, label, probability) for the k most likely classes of one image."""
    probs = torch.softmax(logits.reshape(-1).double(), dim=0)
    p, idx = probs.topk(k)
    return [(int(i), labels[int(i)], float(q)) for q, i in zip(p, idx, strict=True)]
