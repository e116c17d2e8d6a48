"""``edgeci-peer``: the daemon. Not built yet (issue 6); says so instead of pretending."""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "edgeci-peer: the peer daemon is not implemented yet; see README.md ('What works today').",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
