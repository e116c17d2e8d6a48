"""Import every module of edgeci_p2p and build every wire message type.

Run by ``.ci/newest-numpy`` with the newest numpy pip resolves for this Python;
runs with whatever numpy is installed when run alone (``.venv/bin/python .ci/smoke.py``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import edgeci_p2p  # noqa: E402


def main() -> int:
    where = os.environ.get("NEWEST_NUMPY_DIR")
    if where and not Path(np.__file__).resolve().is_relative_to(Path(where).resolve()):
        print(f"numpy came from {np.__file__}, not {where}", file=sys.stderr)
        return 1
    names = sorted(m.name for m in pkgutil.walk_packages(edgeci_p2p.__path__, prefix="edgeci_p2p."))
    for name in names:
        importlib.import_module(name)

    from edgeci_p2p.wire import messages
    from tests.test_wire_messages import equal, roundtrip, samples

    built = set()
    for m in samples():
        assert equal(roundtrip(m), m), m
        built.add(m.TYPE)
    missing = set(messages.MESSAGE_TYPES) - built
    assert not missing, f"no sample of {sorted(missing)}"
    x = np.zeros((1, 3, 8, 8), np.float32)
    messages.InferRequest("smoke", "resnet34", tensor=x)  # issue 19's failing request
    print(
        f"smoke: Python {sys.version.split()[0]}, numpy {np.__version__}: "
        f"{len(names)} modules imported, {len(built)} message types built"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
