"""Frame sources: a synthetic camera (default), a folder of images, a still image, a video
file or a camera index. Every source yields RGB PIL images from a blocking ``read()``
(``None`` at the end of the stream); the pipeline calls it in a worker thread.

Video files and cameras go through OpenCV, the optional ``camera`` extra
(``pip install 'edgeci-p2p[camera]'``); the other sources need only Pillow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class SourceError(ValueError):
    """The ``--source`` cannot be opened (missing path, no images, no OpenCV, no camera)."""


class FrameSource(Protocol):
    description: str

    def read(self) -> Image.Image | None: ...

    def close(self) -> None: ...


class SyntheticCamera:
    """A camera that pans and zooms across one photo (matplotlib's sample by default), so
    the example runs anywhere. Frame ``i`` depends only on ``i``: the view centre follows a
    Lissajous path and the zoom breathes between 1x and ``max_zoom`` every ``period``
    frames, so consecutive frames differ like a slowly moving camera's."""

    def __init__(
        self,
        photo: Path | None = None,
        size: tuple[int, int] = (320, 240),
        period: int = 90,
        max_zoom: float = 2.0,
    ) -> None:
        if photo is None:
            from edgeci_p2p.nn.images import sample_image_path

            photo = sample_image_path()
        self.photo = Image.open(photo).convert("RGB")
        self.size = size
        self.period = max(2, period)
        self.max_zoom = max_zoom
        self.index = 0
        self.description = f"synthetic camera over {Path(photo).name} at {size[0]}x{size[1]}"

    def frame(self, i: int) -> Image.Image:
        pw, ph = self.photo.size
        w, h = self.size
        # The largest view with the output's aspect ratio, shrunk by the zoom.
        base = min(pw / w, ph / h)
        phase = 2 * math.pi * i / self.period
        zoom = 1 + (self.max_zoom - 1) * (1 - math.cos(phase)) / 2
        vw, vh = w * base / zoom, h * base / zoom
        # The centre may travel as far as keeps the view inside the photo.
        cx = pw / 2 + (pw - vw) / 2 * math.sin(phase)
        cy = ph / 2 + (ph - vh) / 2 * math.sin(2 * phase)
        box = (cx - vw / 2, cy - vh / 2, cx + vw / 2, cy + vh / 2)
        return self.photo.resize((w, h), Image.Resampling.BILINEAR, box=box)

    def read(self) -> Image.Image | None:
        img = self.frame(self.index)
        self.index += 1
        return img

    def close(self) -> None:
        pass


class ImageFolder:
    """The images of a folder in name order, once."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.index = 0
        self.description = f"{len(self.paths)} images from {folder}"

    def read(self) -> Image.Image | None:
        if self.index >= len(self.paths):
            return None
        path = self.paths[self.index]
        self.index += 1
        with Image.open(path) as img:
            return img.convert("RGB")

    def close(self) -> None:
        pass


class StillImage:
    """One image, repeated: a camera pointed at a poster."""

    def __init__(self, path: Path) -> None:
        with Image.open(path) as img:
            self.image = img.convert("RGB")
        self.description = f"still image {path}"

    def read(self) -> Image.Image | None:
        return self.image.copy()

    def close(self) -> None:
        pass


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise SourceError(
            "video files and cameras need OpenCV: pip install 'edgeci-p2p[camera]' "
            "(or use the synthetic camera, a folder of images, or an image file)"
        ) from None
    return cv2


class OpenCVCapture:
    """A video file or a camera index through ``cv2.VideoCapture``."""

    def __init__(self, target: str | int) -> None:
        self.cv2 = _cv2()
        self.cap = self.cv2.VideoCapture(target)
        if not self.cap.isOpened():
            what = f"camera {target}" if isinstance(target, int) else f"video file {target}"
            raise SourceError(f"OpenCV cannot open {what}")
        self.description = f"camera {target}" if isinstance(target, int) else f"video {target}"

    def read(self) -> Image.Image | None:
        ok, bgr = self.cap.read()
        if not ok:
            return None
        return Image.fromarray(self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        self.cap.release()


def open_source(spec: str, size: tuple[int, int] = (320, 240)) -> FrameSource:
    """``synthetic`` (default), ``synthetic:PHOTO``, ``camera:N`` or a bare camera index ``N``,
    a folder of images, an image file, or a video file."""
    if spec in ("", "synthetic"):
        return SyntheticCamera(size=size)
    if spec.startswith("synthetic:"):
        photo = Path(spec.removeprefix("synthetic:"))
        if not photo.is_file():
            raise SourceError(f"synthetic camera: no photo at {photo}")
        return SyntheticCamera(photo, size=size)
    index = spec.removeprefix("camera:")
    if index.isdigit():
        return OpenCVCapture(int(index))
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return StillImage(path)
        return OpenCVCapture(str(path))
    raise SourceError(
        f"source {spec!r} is neither 'synthetic', a camera index, a folder nor a file"
    )
