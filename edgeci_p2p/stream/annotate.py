"""Annotated frames: the top-5 and the latency drawn on each frame, written as numbered PNGs
(Pillow) or as one MP4 (OpenCV, the optional ``camera`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgeci_p2p.stream.sources import SourceError


def annotate(img: Image.Image, lines: Sequence[str]) -> Image.Image:
    """A copy of ``img`` with ``lines`` printed top-left on a dark translucent box."""
    out = img.convert("RGBA")
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default()
    pad, gap = 4, 2
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    line_h = max((b[3] - b[1] for b in boxes), default=0) + gap
    width = max((b[2] - b[0] for b in boxes), default=0)
    draw.rectangle((0, 0, width + 2 * pad, len(lines) * line_h + 2 * pad), fill=(0, 0, 0, 150))
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * line_h), line, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(out, overlay).convert("RGB")


class FrameWriter(Protocol):
    def write(self, index: int, img: Image.Image) -> None: ...

    def close(self) -> None: ...


class PngWriter:
    """``frame_000000.png``, ``frame_000001.png``, ... in a folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def path(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.png"

    def write(self, index: int, img: Image.Image) -> None:
        img.save(self.path(index))

    def close(self) -> None:
        pass


class Mp4Writer:
    """One MP4 file; frames must come in order and share the first frame's size."""

    def __init__(self, path: Path, fps: float = 10.0) -> None:
        try:
            import cv2
        except ImportError:
            raise SourceError(
                "MP4 output needs OpenCV: pip install 'edgeci-p2p[camera]' (or give a folder "
                "for PNG frames)"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.cv2: Any = cv2
        self.path, self.fps = path, fps
        self.writer: Any = None
        self.size: tuple[int, int] | None = None

    def write(self, index: int, img: Image.Image) -> None:
        if self.writer is None:
            self.size = img.size
            fourcc = self.cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = self.cv2.VideoWriter(str(self.path), fourcc, self.fps, img.size)
        if img.size != self.size:
            img = img.resize(self.size)
        self.writer.write(self.cv2.cvtColor(np.asarray(img), self.cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def open_writer(out: Path, fps: float = 10.0) -> FrameWriter:
    """``DIR`` -> numbered PNGs in it; ``FILE.mp4`` -> one video."""
    if out.suffix.lower() == ".mp4":
        return Mp4Writer(out, fps)
    return PngWriter(out)
