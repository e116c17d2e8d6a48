"""``make demo``: a three-peer cluster on loopback serving a real, verified inference
(``make dashboard``, ``--dashboard``: the same cluster kept up with the first peer's
dashboard, whose address it prints).

Starts three ``edgeci-peer`` processes on 127.0.0.1 (mDNS bound to 127.0.0.1, no
static peers), waits until they have found each other, runs
``edgeci infer --verify`` with ResNet-34 on matplotlib's sample photo through one
of them, then the same request with ``--strategy local`` (one peer alone) for
comparison, and stops the peers. Every peer uses one torch thread.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from edgeci_p2p.nn.images import sample_image_path

BIN = Path(sys.executable).parent
PEERS = 3
MODEL = "resnet34"


def _say(msg: str) -> None:
    print(msg, flush=True)


def ready_port(proc: subprocess.Popen[str], timeout: float = 180.0) -> int:
    """The port a started ``edgeci-peer`` reports once it serves (it prints one line)."""
    return ready(proc, timeout)[0]


def ready(proc: subprocess.Popen[str], timeout: float = 180.0) -> tuple[int, str | None]:
    """The port a started ``edgeci-peer`` reports once it serves, and its dashboard's
    address when it was started with ``--http`` (on the same line)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    said: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            said.append(line)
            m = re.search(r"ready on port (\d+)", line)
            if m:
                d = re.search(r"dashboard on (\S+)", line)
                return int(m.group(1)), d.group(1) if d else None
    if proc.poll() is not None:
        said.append(proc.stdout.read())  # what it printed before it exited
    tail = "".join(said).strip().splitlines()[-5:]
    why = ("; it said: " + " | ".join(tail)) if tail else ""
    raise RuntimeError(f"a peer failed to start (exit code {proc.poll()}){why}")


def start_peer(
    state_dir: str,
    name: str,
    models: str = MODEL,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """One ``edgeci-peer`` on 127.0.0.1 (any free port, mDNS on 127.0.0.1, one thread);
    ``extra``: more of its flags."""
    return subprocess.Popen(
        [
            str(BIN / "edgeci-peer"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--mdns-interface",
            "127.0.0.1",
            "--state-dir",
            state_dir,
            "--name",
            name,
            "--models",
            models,
            "--threads",
            "1",
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_peers(procs: Sequence[subprocess.Popen[str]], timeout: float = 20.0) -> None:
    """SIGTERM the peers still running; kill any that has not exited after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _edgeci(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """An ``edgeci`` subcommand (``args[0]``), with the demo's cluster key file."""
    argv = [str(BIN / "edgeci"), args[0], *(["--cluster-key-file", key] if key else []), *args[1:]]
    return subprocess.run(argv, capture_output=True, text=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    dashboard = "--dashboard" in args
    if set(args) - {"--dashboard"}:
        print("usage: python -m edgeci_p2p.demo [--dashboard]", file=sys.stderr)
        return 2
    image = str(sample_image_path())
    _say("edgeci-p2p demo: measuring this machine (edgeci profile --threads 1 --refresh)...")
    # Measured afresh: the peers read this profile from the cache, and one measured
    # hours ago under other load (85 against 130 GFLOP/s here) made every prediction
    # the demo prints 1.3x too slow.
    subprocess.run(
        [str(BIN / "edgeci"), "profile", "--threads", "1", "--refresh"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="edgeci-demo-") as tmp:
        try:
            _say(f"starting {PEERS} peers on 127.0.0.1 (mDNS on 127.0.0.1, no static peers)...")
            # A fresh cluster key: other peers on this machine's loopback (a second demo,
            # a test run) are seen over mDNS but cannot join this cluster.
            key = f"{tmp}/cluster.key"
            Path(key).write_text(secrets.token_hex(16))
            for i in range(PEERS):
                extra = ["--cluster-key-file", key]
                if dashboard and i == 0:  # loopback: no token asked for
                    extra += ["--http", "127.0.0.1:0"]
                procs.append(start_peer(f"{tmp}/peer{i}", f"demo-{i}", extra=extra))
            started = [ready(p) for p in procs]
            ports = [port for port, _ in started]
            entry = f"127.0.0.1:{ports[0]}"
            deadline = time.monotonic() + 30
            while True:
                r = _edgeci("peers", "--peer", entry, "--json", key=key)
                view = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []
                if sum(1 for p in view if p.get("alive")) == PEERS:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"peers did not find each other: {r.stderr or view}")
                time.sleep(0.3)
            _say(_edgeci("peers", "--peer", entry, key=key).stdout)
            if dashboard:
                return _serve_dashboard(started[0][1], procs)

            # Warm-up (first use of each tile shape builds oneDNN kernels), then measure.
            for strategy in ("edgeci", "local"):
                _edgeci(
                    "infer",
                    "--peer",
                    entry,
                    "--model",
                    MODEL,
                    "--strategy",
                    strategy,
                    image,
                    key=key,
                )
            results = {}
            for strategy in ("edgeci", "local"):
                lat = []
                for _ in range(3):
                    r = _edgeci(
                        "infer",
                        "--peer",
                        entry,
                        "--model",
                        MODEL,
                        "--strategy",
                        strategy,
                        "--verify",
                        "--json",
                        image,
                        key=key,
                    )
                    if r.returncode != 0:
                        raise RuntimeError(r.stderr.strip())
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    lat.append(out["timing"]["total"] * 1000)
                results[strategy] = (out, sorted(lat)[1])
            out, med = results["edgeci"]
            _say(f"$ edgeci infer --peer {entry} --model {MODEL} --verify {Path(image).name}")
            _say(out["plan"].get("text", "") or json.dumps(out["plan"]))
            for i, t in enumerate(out["top5"], 1):
                _say(f"  top{i}: {t['label']:<28} p={t['prob']:.4f} (class {t['index']})")
            _say(f"  max_abs_diff {out['max_abs_diff']:.3g} (max_abs_ref {out['max_abs_ref']:.3g})")
            local_med = results["local"][1]
            predicted = out["plan"].get("predicted")
            _say(
                f"\nmedian of 3 served latencies: {PEERS}-peer cluster (--strategy edgeci) "
                f"{med:.0f} ms"
                + (f", predicted by its plan {predicted * 1000:.0f} ms" if predicted else "")
                + f"; one peer alone (--strategy local) {local_med:.0f} ms"
            )
            alone = len(set(out["plan"].get("nodes", []))) <= 1
            _say(
                f"These {PEERS} peers share this machine's {os.cpu_count()} cores. Their bids say "
                "so (a machine id, its cores, theirs), and the auctioneer plans peers on one "
                "machine as one pool of CPU, keeping its own core and one for its event loop"
                + (
                    ": here that leaves nothing for the others, so it runs the request alone "
                    "rather than pay hand-offs for no extra CPU."
                    if alone
                    else ", and gives the others what is left."
                )
                + " On devices of their own the same planner distributes: on the emulated "
                "4-device cluster (docs/cluster-benchmark.md) VGG-16 ran 1.06-1.6x faster than "
                "its fastest device alone, by run and CPU layout."
            )
            _say(
                "(weights are seeded random ones, identical on every peer: the classes are "
                "meaningless; see docs/deploy.md 'Weights files' for real ones)"
            )
            ok = all(
                o["max_abs_diff"] <= 1e-5 + 1.3e-6 * o["max_abs_ref"] for o, _ in results.values()
            )
            _say(
                f"\n{'VERIFIED' if ok else 'MISMATCH'}: the cluster's answer equals the "
                "unsplit model"
            )
            return 0 if ok else 1
        finally:
            stop_peers(procs)
            _say("peers stopped")


def _serve_dashboard(url: str | None, procs: Sequence[subprocess.Popen[str]]) -> int:
    """Keep the cluster up with its dashboard until Ctrl-C (or a peer exits)."""
    if url is None:
        raise RuntimeError("the entry peer printed no dashboard address")
    _say(f"dashboard: {url}  (also {url.rstrip('/')}/metrics; Ctrl-C stops the cluster)")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    _say("a peer exited")
    return 1


if __name__ == "__main__":
    sys.exit(main())
