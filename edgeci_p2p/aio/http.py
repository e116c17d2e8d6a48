"""``edgeci-peer --http``: Prometheus metrics, a JSON API and the dashboard page.

Served by aiohttp on the peer's own event loop. Every handler is short: figures are
read from the node, an uploaded image goes through the front door like a client's
request (decoded off the loop, with the same pixel limit, admission and error
codes), and the peers' views for the graph are asked over the mesh with a short
timeout and cached for a moment, so a polling page costs the peer little.

Bound beyond loopback on a cluster with a key, every route asks for a token derived
from the key (:func:`dashboard_token`): ``Authorization: Bearer TOKEN`` or
``?token=TOKEN`` (the page passes on the one in its own address).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgeci_p2p.aio.errors import RequestError, code_of
from edgeci_p2p.planners import STRATEGIES
from edgeci_p2p.wire.framing import DEFAULT_MAX_FRAME
from edgeci_p2p.wire.messages import InferRequest

if TYPE_CHECKING:
    from edgeci_p2p.aio.daemon import PeerDaemon

log = logging.getLogger("edgeci.http")

MAX_UPLOAD = DEFAULT_MAX_FRAME - 64 * 1024
"""Bytes an uploaded image may have: what fits in one ``infer_request`` frame (its
pixels are limited by the decoder, as for any request)."""
VIEW_TTL = 1.0
"""Seconds the peers' own views (for the graph's links) are reused."""
VIEW_TIMEOUT = 0.5
"""Seconds a peer may take to answer for its view before it is drawn without."""
STATIC = ("dashboard.js", "dashboard.css")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def dashboard_token(key: bytes) -> str:
    """The token the HTTP side asks for, derived from the cluster key (whoever holds
    the key can compute it; it does not reveal the key)."""
    return hmac.new(key, b"edgeci-dashboard-v1", hashlib.sha256).hexdigest()[:32]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, key: bytes | None) -> str | None:
    """The token needed on ``host``: none on loopback or without a cluster key."""
    return None if key is None or is_loopback(host) else dashboard_token(key)


class HttpFront:
    """The HTTP side of one started daemon."""

    def __init__(
        self,
        daemon: PeerDaemon,
        host: str,
        port: int,
        token: str | None,
        max_upload: int = MAX_UPLOAD,
    ) -> None:
        self.daemon = daemon
        self.max_upload = max_upload
        self.host, self.port = host, port
        self.token = token
        self._runner: web.AppRunner | None = None
        self._views: tuple[float, dict[str, list[dict[str, Any]]]] = (-VIEW_TTL, {})
        self._views_lock = asyncio.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=self.max_upload)
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/cluster", self.cluster)
        app.router.add_get("/api/requests", self.requests)
        app.router.add_get("/api/requests/{id}", self.request)
        app.router.add_post("/api/infer", self.infer)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # the bound port, when 0 was asked for
        sockets = getattr(server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- safety -------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None:
            got = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                got = auth[len("Bearer ") :]
            if not hmac.compare_digest(got.encode(), self.token.encode()):
                raise web.HTTPUnauthorized(
                    text="a token derived from the cluster key is required "
                    "(Authorization: Bearer TOKEN, or ?token=TOKEN)\n"
                )
        response: web.StreamResponse = await handler(request)
        return response

    # ---- routes -------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=_asset("index.html"), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(text=_asset(name), content_type=kind)

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.daemon.started.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})

    async def cluster(self, request: web.Request) -> web.Response:
        d = self.daemon
        view = d.cluster_view()
        views = await self._peer_views([p["id"] for p in view[1:] if p["alive"]])
        views[d.node_id] = view
        links: dict[tuple[str, str], dict[str, Any]] = {}
        for seer, seen in views.items():
            for p in seen[1:]:
                if not p.get("alive"):
                    continue
                pair = (min(seer, p["id"]), max(seer, p["id"]))
                link = links.setdefault(pair, {"a": pair[0], "b": pair[1], "measured_by": []})
                link["measured_by"].append(seer)
                for k in ("rtt_ms", "bandwidth_mb_s", "probed_mb_s"):
                    if p.get(k) is not None and link.get(k) is None:
                        link[k] = p[k]  # either end's figure: the first that has one
        peers = []
        for p in view:
            own = views.get(p["id"], [{}])[0]
            backlog = own.get("backlog_s", p["backlog_s"])
            peers.append(p | {"load": own.get("load"), "backlog_s": backlog})
        body = {
            "self": d.node_id,
            "peers": peers,
            "links": list(links.values()),
            "strategies": list(STRATEGIES),
            "bids": _bids(d),
        }
        return web.json_response(body, dumps=_dumps)

    async def requests(self, request: web.Request) -> web.Response:
        recent = self.daemon.started.metrics.recent
        return web.json_response({"requests": recent.summaries()}, dumps=_dumps)

    async def request(self, request: web.Request) -> web.Response:
        entry = self.daemon.started.metrics.recent.get(request.match_info["id"])
        if entry is None:
            raise web.HTTPNotFound(text="no such recent request\n")
        return web.json_response(entry, dumps=_dumps)

    async def infer(self, request: web.Request) -> web.Response:
        """Classify an uploaded image (multipart: ``image``, ``model``, ``strategy``),
        traced, through the front door like any client's request."""
        form = await request.post()
        upload = form.get("image")
        if not isinstance(upload, web.FileField):
            raise web.HTTPBadRequest(text="an 'image' file is required\n")
        data = await asyncio.get_running_loop().run_in_executor(None, upload.file.read)
        models = list(self.daemon.store.fingerprints)
        model = str(form.get("model") or models[0])
        strategy = str(form.get("strategy") or "edgeci")
        request_id = f"web-{secrets.token_hex(6)}"
        try:
            req = InferRequest(request_id, model, image=data, strategy=strategy, trace=True)
            await self.daemon.front.admitted(req)
        except (RequestError, ValueError) as e:  # ImageError, MessageError... included
            body = {"id": request_id, "error": str(e), "code": int(code_of(e))}
            return web.json_response(body, status=400, dumps=_dumps)
        entry = self.daemon.started.metrics.recent.get(request_id)
        return web.json_response(entry, dumps=_dumps)

    # ---- the peers' own views ------------------------------------------------------------------

    async def _peer_views(self, peers: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each alive peer's ``peers`` answer (its load, its links), reused for
        :data:`VIEW_TTL` s so that several pages polling ask the mesh once."""
        async with self._views_lock:
            at, views = self._views
            if time.monotonic() - at >= VIEW_TTL:
                parts = self.daemon.parts
                got = await asyncio.gather(*(parts.peer_view(p, VIEW_TIMEOUT) for p in peers))
                views = {p: v for p, v in zip(peers, got, strict=True) if v}
                self._views = (time.monotonic(), views)
            return dict(views)


def _bids(d: PeerDaemon) -> dict[str, dict[str, Any]]:
    """The latest bid each peer made in this node's rounds (from the last request)."""
    for entry in d.started.metrics.recent.summaries():
        backlogs = d.started.metrics.recent.get(entry["id"])
        if backlogs is not None and backlogs["plan"].get("backlogs"):
            return {n: {"backlog_s": b} for n, b in backlogs["plan"]["backlogs"].items()}
    return {}


def _asset(name: str) -> str:
    return (resources.files("edgeci_p2p") / "dashboard" / name).read_text(encoding="utf-8")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_plain)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


__all__ = ["HttpFront", "dashboard_token", "token_for"]
