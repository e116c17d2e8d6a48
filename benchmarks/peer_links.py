"""``edgeci-peer`` with a measured link bandwidth in place of the daemon's assumption.

The daemon plans every link at an assumed rate (``edgeci_p2p.policy.links.DEFAULT_BANDWIDTH``)
until link probes or tile transfers have measured it.
``benchmarks/cluster.py --links measured`` starts peers through this wrapper, which
sets that constant to ``$EDGECI_BENCH_LINK_BW`` (bytes/s, measured by the
benchmark's link probe between two namespaces) before the daemon starts: it shows
what plans with an honest link estimate do from the first request on.
"""

from __future__ import annotations

import os
import sys

from edgeci_p2p.peer_cli import main
from edgeci_p2p.policy import links

if __name__ == "__main__":
    bw = os.environ.get("EDGECI_BENCH_LINK_BW")
    if bw:
        # The assumed bandwidth until tile transfers have measured a link; read at plan
        # time, so setting it here before the daemon starts is enough.
        links.DEFAULT_BANDWIDTH = float(bw)
    sys.exit(main())
