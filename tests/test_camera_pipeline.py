"""The camera pipeline example against an in-process cluster: frames in flight over one
connection, summary line, annotated output, and every frame's logits equal to the unsplit
model's on the same input."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from edgeci_p2p.aio.client import ClientError
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.nn.images import decode, to_input
from edgeci_p2p.nn.models import load_model
from edgeci_p2p.stream.pipeline import FrameResult
from edgeci_p2p.stream.sources import SourceError, SyntheticCamera, open_source
from edgeci_p2p.stream.stats import StreamStats, percentile
from tests.daemons import address, cluster

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "camera_pipeline.py"
MODELS = ["resnet34"]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("camera_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["camera_pipeline"] = module
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture(name="cluster")
async def two_peers() -> AsyncIterator[list[PeerDaemon]]:
    async with cluster(2, models=MODELS) as daemons:
        yield daemons


def model_input(frame: FrameResult) -> torch.Tensor:
    """The input the auctioneer built from what the pipeline sent."""
    if isinstance(frame.payload, bytes):
        return to_input(decode(frame.payload), "224")
    return torch.from_numpy(np.asarray(frame.payload))


def assert_unsplit(frames: list[FrameResult]) -> None:
    ref_model = load_model("resnet34").module
    for f in frames:
        x = model_input(f)
        with torch.no_grad():
            ref = ref_model(x)
        got = torch.from_numpy(np.array(f.result.logits, dtype=np.float32).reshape(ref.shape))
        torch.testing.assert_close(got, ref)


def most_overlapping(frames: list[FrameResult]) -> int:
    """The largest number of frames outstanding at one moment."""
    events = sorted([(f.started, 1) for f in frames] + [(f.ended, -1) for f in frames])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


async def run_example(argv: list[str]) -> tuple[list[str], list[FrameResult], Any]:
    example = load_example()
    args = example.build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    frames: list[FrameResult] = []
    summary = await asyncio.wait_for(example.run(args, out, err, frames.append), 120)
    return out.getvalue().splitlines(), frames, summary


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_synthetic_camera_stream_matches_the_unsplit_model(
    cluster: list[PeerDaemon], tmp_path: Path
) -> None:
    peer = address(cluster[1])
    argv = ["--peer", peer, "--frames", "4", "--in-flight", "2", "--json"]
    lines, frames, summary = await run_example([*argv, "--out", str(tmp_path / "out")])

    body = json.loads(lines[-1])
    assert set(body) == {"frames", "fps", "p50_ms", "p95_ms"}
    assert body["frames"] == 4 == summary.frames
    assert body["fps"] > 0 and 0 < body["p50_ms"] <= body["p95_ms"]
    # One stdout line per frame, in frame order, naming its top-5.
    assert [ln.split()[1] for ln in lines[:-1]] == ["0", "1", "2", "3"]
    for ln, f in zip(lines[:-1], frames, strict=True):
        assert len(f.result.top_k) == 5 and all(t.label in ln for t in f.result.top_k)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    # The camera moves, so every frame is a different input.
    assert len({bytes(f.payload) for f in frames}) == 4
    # Frames overlapped on the one connection, never more than the limit.
    assert most_overlapping(frames) == 2
    # The summary is computed from the frames' own timings.
    lat_ms = [1000 * f.latency_s for f in frames]
    assert body["p95_ms"] == pytest.approx(percentile(lat_ms, 95), abs=0.01)
    written = sorted((tmp_path / "out").glob("frame_*.png"))
    assert [p.name for p in written] == [f"frame_{i:06d}.png" for i in range(4)]
    assert Image.open(written[0]).size == (320, 240)
    assert_unsplit(frames)


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_folder_of_images_sent_as_tensors(cluster: list[PeerDaemon], tmp_path: Path) -> None:
    camera = SyntheticCamera(size=(200, 150))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 20, 40):
        camera.frame(i).save(folder / f"img{i:03d}.png")
    peer = address(cluster[0])
    # More frames asked for than the folder holds: the stream ends with the folder.
    argv = ["--peer", peer, "--source", str(folder), "--frames", "10", "--in-flight", "3"]
    lines, frames, summary = await run_example([*argv, "--encoding", "tensor", "--json"])
    assert json.loads(lines[-1])["frames"] == 3 == len(frames) == summary.frames
    assert all(isinstance(f.payload, np.ndarray) for f in frames)
    assert frames[0].image.size == (200, 150)
    assert_unsplit(frames)

    # A failing frame surfaces as the client's error, not as an exception group.
    with pytest.raises(ClientError, match="not served"):
        await run_example(["--peer", peer, "--model", "vgg16", "--frames", "2"])


def test_percentile_matches_numpy_and_fps_counts_overlap() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 40):
        xs = list(rng.exponential(0.2, n))
        for q in (0, 50, 95, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    stats = StreamStats()
    # Two frames of 1 s each, overlapping by half: 2 frames in 1.5 s.
    stats.record(0.0, 1.0)
    stats.record(0.5, 1.5)
    assert stats.fps() == pytest.approx(2 / 1.5)
    assert stats.summary().p50_ms == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="before it started"):
        stats.record(2.0, 1.0)


def test_synthetic_camera_is_deterministic_and_moves() -> None:
    a, b = SyntheticCamera(size=(64, 48)), SyntheticCamera(size=(64, 48))
    frames = [np.asarray(a.read()) for _ in range(3)]
    assert all(f.shape == (48, 64, 3) for f in frames)
    assert np.array_equal(frames[2], np.asarray(b.frame(2)))
    assert not np.array_equal(frames[0], frames[1])


def test_sources_refuse_what_they_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="neither"):
        open_source(str(tmp_path / "missing"))
    # Without OpenCV (installed or not here: None in sys.modules fails the import),
    # cameras, video files and MP4 output name the extra that brings it.
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(SourceError, match=r"edgeci-p2p\[camera\]"):
        open_source("camera:0")
    from edgeci_p2p.stream.annotate import open_writer

    with pytest.raises(SourceError, match=r"edgeci-p2p\[camera\]"):
        open_writer(tmp_path / "clip.mp4")


class FakeCV2(ModuleType):
    """What the stream code uses of OpenCV, over a list: frames written as BGR arrays
    are read back from the same list (a video file without the codec)."""

    COLOR_RGB2BGR, COLOR_BGR2RGB = 4, 5

    def __init__(self) -> None:
        super().__init__("cv2")
        self.files: dict[str, list[np.ndarray]] = {}
        self.released: list[str] = []
        fake = self

        class VideoWriter:
            def __init__(self, path: str, fourcc: int, fps: float, size: tuple[int, int]):
                assert fourcc == fake.VideoWriter_fourcc(*"mp4v") and fps > 0
                self.path, self.size = path, size
                fake.files[path] = []
                Path(path).touch()  # a file is there, as OpenCV's would be

            def write(self, bgr: np.ndarray) -> None:
                assert bgr.shape == (self.size[1], self.size[0], 3), "frame of another size"
                fake.files[self.path].append(bgr.copy())

            def release(self) -> None:
                fake.released.append(self.path)

        class VideoCapture:
            def __init__(self, target: str | int) -> None:
                self.frames = list(fake.files.get(str(target), []))

            def isOpened(self) -> bool:
                return bool(self.frames)

            def read(self) -> tuple[bool, np.ndarray | None]:
                return (True, self.frames.pop(0)) if self.frames else (False, None)

            def release(self) -> None:
                pass

        self.VideoWriter, self.VideoCapture = VideoWriter, VideoCapture

    @staticmethod
    def VideoWriter_fourcc(*code: str) -> int:
        return sum(ord(c) << (8 * i) for i, c in enumerate(code))

    @staticmethod
    def cvtColor(img: np.ndarray, code: int) -> np.ndarray:
        assert code in (FakeCV2.COLOR_RGB2BGR, FakeCV2.COLOR_BGR2RGB)
        return np.ascontiguousarray(img[:, :, ::-1])


def test_mp4_frames_go_out_as_bgr_of_the_first_size_and_come_back_as_rgb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenCV glue (colour order, one frame size, release), with OpenCV faked: the
    round trip through a real codec is the next test's, where the camera extra is."""
    cv2 = FakeCV2()
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    from edgeci_p2p.stream.annotate import open_writer

    camera = SyntheticCamera(size=(160, 120))
    frames = [camera.frame(i) for i in range(3)] + [camera.frame(3).resize((80, 60))]
    path = tmp_path / "clip.mp4"
    writer = open_writer(path)
    for i, img in enumerate(frames):
        writer.write(i, img)
    writer.close()
    assert cv2.released == [str(path)]
    written = cv2.files[str(path)]
    assert len(written) == 4
    first = np.asarray(frames[0])
    assert np.array_equal(written[0], first[:, :, ::-1])  # BGR on the way out
    assert written[3].shape == first.shape  # a frame of another size is resized
    source = open_source(str(path))
    back = []
    while (img := source.read()) is not None:
        back.append(np.asarray(img))
    source.close()
    assert len(back) == 4 and np.array_equal(back[1], np.asarray(frames[1]))  # RGB again
    with pytest.raises(SourceError, match="cannot open"):
        open_source("camera:7")


def test_mp4_written_then_read_back_as_a_video_source(tmp_path: Path) -> None:
    pytest.importorskip("cv2")  # the optional 'camera' extra
    from edgeci_p2p.stream.annotate import annotate, open_writer

    camera = SyntheticCamera(size=(160, 120))
    writer = open_writer(tmp_path / "clip.mp4")
    for i in range(6):
        writer.write(i, annotate(camera.frame(i), [f"#{i}"]))
    writer.close()
    source = open_source(str(tmp_path / "clip.mp4"))
    sizes = []
    while (img := source.read()) is not None:
        sizes.append(img.size)
    source.close()
    assert sizes == [(160, 120)] * 6
