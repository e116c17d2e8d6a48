"""``edgeci-peer --http``: ``/metrics`` parses with prometheus_client's own parser and
its counters move as requests are served; the JSON API shows the request with its
plan and timeline; bad uploads get clear errors; beyond loopback with a cluster key
every route needs the token derived from the key."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeci_p2p.aio.config import parse_http
from edgeci_p2p.aio.http import HttpFront, dashboard_token, token_for
from tests.daemons import IMAGE, client, cluster, wait_until

HOST = "127.0.0.1"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


async def get(s: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with s.get(url, **kw) as r:
        return r.status, await r.text()


def test_http_address_and_token_rules() -> None:
    assert parse_http("8080") == ("127.0.0.1", 8080)
    assert parse_http("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_http("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="HOST"):
        parse_http("host:http")
    key = b"k" * 32
    assert token_for("127.0.0.1", key) is None  # loopback: no token
    assert token_for("0.0.0.0", None) is None  # no cluster key: nothing to derive it from
    assert token_for("0.0.0.0", key) == dashboard_token(key) != dashboard_token(b"other")


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
async def test_metrics_move_as_requests_are_served() -> None:
    async with cluster(2, per_peer={0: {"http": (HOST, 0)}}) as daemons:
        a = daemons[0]
        assert a.http is not None and daemons[1].http is None
        base = f"http://{HOST}:{a.http.port}"
        b = daemons[1].node_id
        member = a.membership.members[b]
        await wait_until(lambda: member.rtt is not None, "a heartbeat round trip to b")
        async with aiohttp.ClientSession() as s:
            status, text = await get(s, base + "/metrics")
            assert status == 200
            before = samples(text)
            async with client(a) as c:
                res = await c.infer(IMAGE, model="resnet34", strategy="edgeci", trace=True)
            status, text = await get(s, base + "/metrics")
            after = samples(text)
            ok = {"model": "resnet34", "strategy": "edgeci", "outcome": "ok"}
            assert value(after, "edgeci_requests_total", **ok) == (
                value(before, "edgeci_requests_total", **ok) + 1
            )
            hist = {"model": "resnet34", "strategy": "edgeci"}
            assert value(after, "edgeci_request_seconds_count", **hist) == (
                value(before, "edgeci_request_seconds_count", **hist) + 1
            )
            assert value(after, "edgeci_auction_seconds_count") >= 1
            sent = value(after, "edgeci_peer_sent_bytes_total", peer=b)
            assert sent > value(before, "edgeci_peer_sent_bytes_total", peer=b)  # bids, tiles
            assert value(after, "edgeci_peer_alive", peer=b) == 1.0
            assert ("edgeci_link_rtt_seconds", (("peer", b),)) in after
            for name in (
                "edgeci_queue_depth",
                "edgeci_backlog_seconds",
                "edgeci_cpu_share",
                "edgeci_bans_total",
                "edgeci_decision_cache_hits_total",
                "edgeci_planning_seconds_total",
                "edgeci_retries_total",
            ):
                assert (name, ()) in after, name

            # The request, its plan and its timeline in the JSON API.
            async with s.get(base + "/api/requests") as r:
                listed = (await r.json())["requests"]
            assert listed[0]["id"] == res.request_id and listed[0]["outcome"] == "ok"
            async with s.get(f"{base}/api/requests/{res.request_id}") as r:
                entry = await r.json()
            assert entry["plan"]["nodes"] == res.plan["nodes"]
            assert entry["trace"]["spans"] and [t["index"] for t in entry["top5"]] == [
                t.index for t in res.top_k
            ]
            async with s.get(base + "/api/cluster") as r:
                view = await r.json()
            assert {p["id"] for p in view["peers"]} == {d.node_id for d in daemons}
            assert [(lk["a"], lk["b"]) for lk in view["links"]] == [tuple(sorted([a.node_id, b]))]

            # A bad upload: a clear error, counted, and the peer serves on.
            form = aiohttp.FormData()
            form.add_field("image", b"not an image", filename="x.jpg")
            async with s.post(base + "/api/infer", data=form) as r:
                assert r.status == 400
                assert "image" in (await r.json())["error"].lower()
            failed = samples((await get(s, base + "/metrics"))[1])
            assert (
                sum(
                    v
                    for (n, labels), v in failed.items()
                    if n == "edgeci_requests_total" and ("outcome", "ok") not in labels
                )
                == 1
            )
            assert (await get(s, base + "/api/requests/nope"))[0] == 404


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_token_and_upload_limits() -> None:
    async with cluster(1, wait=False) as (a,):
        token = dashboard_token(b"secret")
        front = HttpFront(a, HOST, 0, token, max_upload=4096)
        await front.start()
        try:
            base = f"http://{HOST}:{front.port}"
            async with aiohttp.ClientSession() as s:
                for path in ("/", "/metrics", "/api/cluster", "/api/requests"):
                    assert (await get(s, base + path))[0] == 401, path
                    bad = {"Authorization": "Bearer " + "0" * 32}
                    assert (await get(s, base + path, headers=bad))[0] == 401, path
                    auth = {"Authorization": "Bearer " + token}
                    assert (await get(s, base + path, headers=auth))[0] == 200, path
                assert (await get(s, f"{base}/?token={token}"))[0] == 200
                assert front.url.endswith(f"/?token={token}")
                form = aiohttp.FormData()
                form.add_field("image", IMAGE, filename="big.jpg")  # > 4096 bytes
                async with s.post(f"{base}/api/infer?token={token}", data=form) as r:
                    assert r.status == 413
        finally:
            await front.stop()
