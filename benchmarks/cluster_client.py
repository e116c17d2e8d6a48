"""The measuring client of benchmarks/cluster.py (run inside the auctioneer's namespace).

Waits until the entry peer sees the whole cluster, sends one warm-up request per
model, then K rounds of one request per strategy (strategies interleaved, so a
drift in machine load touches all of them alike) and prints one JSON object per
line on stdout: ``{"event": "status"|"result"|"error", ...}``.

Each round sends the strategies in a new order, a shuffle seeded by the round's
number. Under CFS quotas a peer's speed over the next few hundred milliseconds
depends on how much of the current 100 ms period's quota the request before used
up; in a fixed order each strategy would always inherit the state the same
predecessor left. (Rotating the order, as this client did before, is not enough:
it keeps every strategy behind the same predecessor in all but one round. A run
had `edgeci` and `local` run the same one-peer ResNet-34 plan at 177.5 and 152.5
ms: `edgeci` always followed `local`, whose request had spent the quota.) A shuffle
is not enough either: a one-peer ResNet-34 request ran in 105-127 ms (median)
after `modnn` or `edgeld`, which leave the entry peer's quota unspent, and in
162-177 ms after the others, so whichever strategy the shuffle put behind them
more often looked faster. So each measured request follows ``--settle`` (default
1) unmeasured requests of its own strategy: every strategy is measured in the
state it leaves behind itself, as in a service answering a stream of requests.
Before the measured rounds, ``--warmup-rounds`` (default 2) unmeasured rounds of
every strategy let the peers calibrate their bids on the work they serve, and
``--quiet`` seconds (default 5) with no request let each auctioneer's planning
child plan anew on those bids: a new plan waits for its daemon to fall idle (up to
30 s), and without the pause a short run measured every request on the plan its
first auction made from the peers' profiles, 10-15% slower than one made on the
calibrated bids (docs/cluster-benchmark.md, twenty-first session). So the measured
requests are those of a service past its first minute, not its first seconds.

``--gap`` seconds of quiet before each request (default 0, back to back) refill
every quota instead, which gives every request a burst at full-core speed that a
real device of that speed does not have.

``--transports tls,plaintext`` measures two clusters of the same peers side by side:
``--peer`` is the entry peer of the TLS one, ``--plaintext-peer`` that of one started
with ``--plaintext``. Each round then shuffles every (strategy, transport) pair, so
the machine's load falls on both transports alike; each result says its transport.

    python benchmarks/cluster_client.py --peer HOST:PORT --expect-peers 3 --k 5 \
        [--key-file F] [--models vgg16,resnet34] [--strategies edgeci,local,...] \
        [--transports tls,plaintext --plaintext-peer HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from cluster import transports

from edgeci_p2p.aio.client import Client, ClientError, ConnectionLost
from edgeci_p2p.core.explain import where_the_time_went
from edgeci_p2p.core.timeline import Timeline
from edgeci_p2p.nn.images import decode, sample_image_path, to_input


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def devices_used(plan: dict[str, Any]) -> list[int]:
    return sorted({int(part[0]) for st in plan.get("stages", []) for part in st["parts"]})


def entry_peers(args: argparse.Namespace) -> dict[str, str]:
    """The entry peer of each transport measured, in ``--transports`` order."""
    kinds = transports(args.transports)
    given = {"tls": args.peer, "plaintext": args.plaintext_peer}
    missing = [t for t in kinds if not given[t]]
    if missing:
        raise ValueError(f"no entry peer for {', '.join(missing)} (--peer / --plaintext-peer)")
    return {t: given[t] for t in kinds}


def arms(strategies: list[str], transports: list[str], rep: int) -> list[tuple[str, str]]:
    """Round ``rep``'s order of (strategy, transport) pairs: a shuffle seeded by the
    round, so that neither transport always follows the other."""
    order = [(s, t) for s in strategies for t in transports]
    random.Random(rep).shuffle(order)
    return order


async def wait_for_cluster(
    address: str, key: bytes | None, expect: int, timeout: float, plaintext: bool = False
) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    what = "plaintext entry peer" if plaintext else "entry peer"
    while time.monotonic() < deadline:
        try:
            async with Client(address, key=key, timeout=10, plaintext=plaintext) as c:
                peers = await c.peers()
            alive = [p for p in peers if not p.get("self") and p.get("alive")]
            if len(alive) != seen:
                seen = len(alive)
                emit(event="status", msg=f"{what} sees {seen}/{expect} peers")
            if seen >= expect:
                return seen
        except (OSError, ClientError, ConnectionLost, TimeoutError):
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"after {timeout:.0f} s the {what} sees {seen} of {expect} peers")


async def measure(args: argparse.Namespace) -> int:
    key = Path(args.key_file).read_bytes().strip() if args.key_file else None
    entries = entry_peers(args)
    for transport, address in entries.items():
        plain = transport == "plaintext"
        await wait_for_cluster(address, key, args.expect_peers, args.wait, plaintext=plain)
    x = to_input(decode(sample_image_path().read_bytes()), "224").numpy()
    models = [m for m in args.models.split(",") if m]
    strategies = [s for s in args.strategies.split(",") if s]
    traces = args.traces is not None
    if traces:
        Path(args.traces).mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            t: await stack.enter_async_context(
                Client(a, key=key, timeout=args.timeout, plaintext=t == "plaintext")
            )
            for t, a in entries.items()
        }
        for model in models:
            emit(event="status", msg=f"warm-up {model}")
            for c in clients.values():
                for strategy in args.warmup.split(","):
                    await c.infer(x, model=model, strategy=strategy)
            # See the module docstring: rounds that calibrate, then quiet to plan in.
            for rep in range(args.warmup_rounds):
                for strategy, transport in arms(strategies, list(clients), -1 - rep):
                    with contextlib.suppress(ClientError, TimeoutError):
                        await clients[transport].infer(x, model=model, strategy=strategy)
            if args.warmup_rounds and args.quiet > 0:
                emit(event="status", msg=f"quiet {args.quiet:g} s: the peers plan anew")
                await asyncio.sleep(args.quiet)
            for rep in range(args.k):
                for strategy, transport in arms(strategies, list(clients), rep):
                    c = clients[transport]
                    for _ in range(args.settle):  # unmeasured: see the module docstring
                        with contextlib.suppress(ClientError, TimeoutError):
                            await c.infer(x, model=model, strategy=strategy)
                    await asyncio.sleep(args.gap)
                    t0 = time.perf_counter()
                    try:
                        r = await c.infer(x, model=model, strategy=strategy, trace=traces)
                    except (ClientError, TimeoutError) as e:
                        emit(
                            event="error", model=model, strategy=strategy, transport=transport,
                            rep=rep, msg=str(e),
                        )  # fmt: skip
                        continue
                    latency = time.perf_counter() - t0
                    t: dict[str, Any] = dict(r.timing)
                    where = None
                    if r.trace is not None:
                        tl = Timeline.from_dict(r.trace)
                        where = {k: list(v) for k, v in where_the_time_went(tl).items()}
                        arm = strategy if transport == "tls" else f"{strategy}-{transport}"
                        path = Path(args.traces) / f"{model}-{arm}-{rep:02d}.json"
                        path.write_text(
                            json.dumps({**tl.chrome(), "timeline": r.trace, "plan": r.plan})
                        )
                    emit(
                        event="result",
                        model=model,
                        strategy=strategy,
                        transport=transport,
                        rep=rep,
                        latency_s=latency,
                        total_s=float(t["total"]),
                        # Time before any tile runs: the daemon reports it as "auction"
                        # (bids + plan + awards), earlier versions as "bid" and "plan".
                        auction_s=float(t.get("auction", t.get("bid", 0.0) + t.get("plan", 0.0))),
                        head_s=float(t.get("head", 0.0)),
                        transfer_s=float(t.get("transfer", 0.0)),
                        compute=t.get("compute", {}),
                        bytes=float(t.get("bytes", 0.0)),
                        predicted_s=r.plan.get("predicted"),
                        devices=devices_used(r.plan),
                        nodes=r.plan.get("nodes", []),
                        stages=len(r.plan.get("stages", [])),
                        plan_text=r.plan.get("text", ""),
                        # Why the auctioneer ran it as it did (e.g. "local: distributing
                        # predicted < 10% gain"): the report's answer for a one-peer plan.
                        decision=(r.plan.get("notes") or {}).get("decision"),
                        believed=r.plan.get("testbed"),
                        backlogs=r.plan.get("backlogs"),
                        where=where,
                    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", help="entry peer of the TLS cluster")
    p.add_argument("--plaintext-peer", help="entry peer of a cluster started with --plaintext")
    p.add_argument(
        "--transports",
        default="tls",
        help="comma-separated, of tls and plaintext (default tls); with both, requests "
        "to the two clusters are interleaved",
    )
    p.add_argument("--key-file")
    p.add_argument("--expect-peers", type=int, default=0)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--models", default="vgg16,resnet34")
    p.add_argument("--strategies", default="edgeci,aofl,edgeld,modnn,deepthings,local")
    p.add_argument("--warmup", default="edgeci", help="strategies of the warm-up requests")
    p.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds of quiet before each request (0: back to back)",
    )
    p.add_argument(
        "--settle",
        type=int,
        default=1,
        help="unmeasured requests of the same strategy just before each measured one",
    )
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=2,
        help="unmeasured rounds of every strategy before the measured ones (default 2)",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=5.0,
        help="seconds with no request after the warm-up rounds, for the peers to plan on "
        "their calibrated bids (default 5)",
    )
    p.add_argument(
        "--traces",
        help="trace every measured request (infer_request.trace) and keep its Chrome trace "
        "and timeline as DIR/MODEL-STRATEGY-REP.json",
    )
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the cluster")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = p.parse_args(argv)
    if args.warmup_rounds < 0 or args.quiet < 0:
        p.error("--warmup-rounds and --quiet must be at least 0")
    try:
        entry_peers(args)
    except ValueError as e:
        p.error(str(e))
    return args


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(measure(args))
    except (TimeoutError, OSError, ClientError, ConnectionLost) as e:
        emit(event="error", msg=f"{type(e).__name__}: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
