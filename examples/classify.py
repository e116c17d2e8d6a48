"""Classify an image on a running edgeci-p2p cluster with the synchronous client.

    edgeci-peer --host 127.0.0.1 --port 7421 --mdns-interface 127.0.0.1 --models resnet34 &
    python examples/classify.py --peer 127.0.0.1:7421 [IMAGE]

Without IMAGE it sends matplotlib's sample photo.
"""

from __future__ import annotations

import argparse
import sys

from edgeci_p2p.aio.client import SyncClient
from edgeci_p2p.nn.images import sample_image_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", default="127.0.0.1:7420")
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--strategy", default="edgeci")
    ap.add_argument("image", nargs="?", default=str(sample_image_path()))
    args = ap.parse_args()
    result = SyncClient(args.peer).infer(args.image, model=args.model, strategy=args.strategy)
    print(result.plan.get("text", ""))
    for t in result.top_k:
        print(f"{t.label:<30} p={t.prob:.4f}")
    print(f"timing: {result.timing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
