"""``edgeci-peer`` with a measured link bandwidth in place of the daemon's assumption.

The daemon plans every link at ``LOOPBACK_BANDWIDTH`` (1 GB/s) until it measures
transfers. ``benchmarks/cluster.py --links measured`` starts peers through this
wrapper, which sets that constant to ``$EDGECI_BENCH_LINK_BW`` (bytes/s, measured
by the benchmark's link probe between two namespaces) before the daemon starts:
it shows what plans with an honest link estimate do, until the daemon has one.
"""

from __future__ import annotations

import os
import sys

from edgeci_p2p.aio import daemon
from edgeci_p2p.peer_cli import main

if __name__ == "__main__":
    bw = os.environ.get("EDGECI_BENCH_LINK_BW")
    if bw:
        daemon.LOOPBACK_BANDWIDTH = float(bw)  # read by PeerDaemon._testbed at plan time
    sys.exit(main())
