"""Decoding and preprocessing input images (torchvision's ImageNet conventions)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 40_000_000
"""Images larger than this are refused before their pixels are decoded."""


class ImageError(ValueError):
    """The image could not be used (unreadable, or too large)."""


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


def to_input(img: Image.Image, size: str = "224") -> Tensor:
    """A normalised (1, 3, H, W) float32 batch.

    ``size="224"``: torchvision's standard resize to 256 and centre crop to 224.
    ``size="native"``: the image's own size, no resize or crop.
    """
    if size == "224":
        img = TF.center_crop(TF.resize(img, 256), 224)  # type: ignore[assignment]
    elif size != "native":
        raise ValueError(f"size must be '224' or 'native', not {size!r}")
    x = TF.to_tensor(img)
    return TF.normalize(x, list(MEAN), list(STD)).unsqueeze(0).contiguous()


def load_input(path: str | Path, size: str = "224") -> Tensor:
    return to_input(decode(Path(path).read_bytes()), size)


def top_k(logits: Tensor, labels: list[str], k: int = 5) -> list[tuple[int, str, float]]:
    """(class index, label, probability) for the k most likely classes of one image."""
    probs = torch.softmax(logits.reshape(-1).double(), dim=0)
    p, idx = probs.topk(k)
    return [(int(i), labels[int(i)], float(q)) for q, i in zip(p, idx, strict=True)]
