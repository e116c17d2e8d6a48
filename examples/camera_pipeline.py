"""Stream camera frames through an edgeci-p2p cluster with several frames in flight.

    edgeci-peer --host 127.0.0.1 --port 7421 --no-mdns --models resnet34 &
    edgeci-peer --host 127.0.0.1 --port 7422 --no-mdns --models resnet34 --peer 127.0.0.1:7421 &
    python examples/camera_pipeline.py --peer 127.0.0.1:7421,127.0.0.1:7422 --frames 40 \
        --in-flight 4 [--source synthetic|camera:0|VIDEO|FOLDER|IMAGE] [--out DIR|FILE.mp4] \
        [--json]

Frames go over ONE connection to a peer (the first ``--peer`` that answers, or one
found with ``--mdns-interface``); up to ``--in-flight`` of them are outstanding at
once. If that peer dies, the frames it had not answered are sent again to the next
peer and the stream goes on: no frame is lost. Each frame's top-5 is printed as it
completes (in frame order), a live fps / p50 / p95 line updates on stderr, ``--out`` writes
the annotated frames, and ``--json`` ends stdout with
``{"frames", "fps", "p50_ms", "p95_ms"}``. The default source is a synthetic camera that
pans and zooms across matplotlib's sample photo; cameras and video files need OpenCV
(``pip install 'edgeci-p2p[camera]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from edgeci_p2p.aio.client import Client, ClientError, ConnectionLost
from edgeci_p2p.stream.annotate import FrameWriter, annotate, open_writer
from edgeci_p2p.stream.display import Progress, annotation_lines, frame_line, progress_text
from edgeci_p2p.stream.pipeline import ENCODINGS, FrameResult, StreamConfig, stream
from edgeci_p2p.stream.sources import SourceError, open_source
from edgeci_p2p.stream.stats import StreamStats, Summary


def frame_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer (repeatable, or comma-separated: the next takes over if one dies); "
        "default 127.0.0.1:7420",
    )
    ap.add_argument(
        "--mdns-interface",
        action="append",
        default=[],
        metavar="ADDR",
        help="find the peers by browsing mDNS on this interface address",
    )
    ap.add_argument("--model", default="resnet34")
    ap.add_argument(
        "--source",
        default="synthetic",
        help="synthetic (default), synthetic:PHOTO, camera:N, a video file, a folder of "
        "images or an image file",
    )
    ap.add_argument("--frames", type=int, default=30, metavar="N", help="0 = until the end")
    ap.add_argument("--in-flight", type=int, default=2, metavar="K")
    ap.add_argument("--out", type=Path, metavar="DIR", help="annotated PNGs, or FILE.mp4")
    ap.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
    ap.add_argument("--strategy", default="edgeci")
    ap.add_argument("--encoding", choices=ENCODINGS, default="jpeg", help="how frames are sent")
    ap.add_argument("--size", choices=("224", "native"), default="224")
    ap.add_argument(
        "--frame-size", type=frame_size, default=(320, 240), help="synthetic camera frames"
    )
    return ap


async def run(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> Summary:
    config = StreamConfig(
        model=args.model,
        strategy=args.strategy,
        frames=args.frames,
        in_flight=args.in_flight,
        encoding=args.encoding,
        size=args.size,
    )
    source = open_source(args.source, args.frame_size)
    writer: FrameWriter | None = open_writer(args.out) if args.out is not None else None
    progress = Progress(err)
    peers = args.peer or ([] if args.mdns_interface else ["127.0.0.1:7420"])
    where = ",".join(peers) or "mDNS on " + ",".join(args.mdns_interface)
    print(f"source: {source.description}; {config.in_flight} in flight to {where}", file=err)

    def show(frame: FrameResult, stats: StreamStats) -> None:
        progress.clear()
        print(frame_line(frame), file=out, flush=True)
        if writer is not None:
            writer.write(frame.index, annotate(frame.image, annotation_lines(frame, stats)))
        if on_frame is not None:
            on_frame(frame)
        progress.update(progress_text(stats, config.frames, config.in_flight))

    stats = StreamStats()
    try:
        async with Client(peers, mdns_interfaces=args.mdns_interface) as client:
            await stream(client, source, config, show, stats)
    except asyncio.CancelledError:  # Ctrl-C: still say what the stream achieved
        progress.clear()
        s = stats.summary()
        print(f"interrupted: {s.frames} frames, {s.fps:.2f} fps", file=err)
        raise
    finally:
        progress.clear()
        source.close()
        if writer is not None:
            writer.close()
    summary = stats.summary()
    print(
        f"{summary.frames} frames, {summary.fps:.2f} fps, p50 {summary.p50_ms:.1f} ms, "
        f"p95 {summary.p95_ms:.1f} ms",
        file=err,
    )
    if args.json:
        print(json.dumps(summary.to_dict()), file=out, flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    except (SourceError, ValueError) as e:
        print(f"camera_pipeline: {e}", file=sys.stderr)
        return 2
    except (ClientError, ConnectionLost, OSError) as e:
        print(f"camera_pipeline: {','.join(args.peer)}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
