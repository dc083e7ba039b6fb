"""The live web view of a stream process (``--serve [HOST:]PORT``): read-only, one page.

Routes (GET/HEAD only; everything else 404 or 405):

- ``/`` (``/index.html``), ``/app.js``, ``/style.css``, ``/favicon.svg``: the page, from a fixed map of packaged
  assets read once at start; no path from a request ever reaches the file system.
- ``/api/status``: JSON, every source's counters, latest frame record, score history and the
  alarm list (``?history=0`` leaves the history out).
- ``/api/events``: server-sent events, one per record (``frame``, ``alarm``, ``summary``, ...).
- ``/api/frame?source=ID&after=SEQ``: the newest annotated JPEG of a source, waiting up to 2 s
  for one newer than ``SEQ`` (204 when none came).

Security: binds 127.0.0.1 unless told otherwise; with a token (``--serve-token`` or
``HGAD_SERVE_TOKEN``) every route needs it (``Authorization: Bearer``, ``?token=`` which sets
an HttpOnly cookie, or that cookie) and answers 401 without; on loopback without a token only
``localhost``/loopback ``Host`` headers are served (no DNS rebinding).

aiohttp (``hgad_edge[web]``) rather than ``http.server``: server-sent events and long-polled
frames hold a connection per viewer, which asyncio serves on one thread instead of a thread
each, and its llhttp parser is hardened where the standard library's server "only implements
basic security checks" (its own documentation).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from importlib import resources
from typing import Any, Callable, Dict, Optional, Tuple

from hgad_edge.fileio import dumps
from hgad_edge.stream.view_state import LiveState

log = logging.getLogger("hgad_edge.stream.server")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8"), "/favicon.svg": ("favicon.svg", "image/svg+xml")}
COOKIE = "hgad_token"
FRAME_WAIT_S = 2.0      # long-poll of /api/frame
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store"}


def parse_serve(text: str) -> Tuple[str, int]:
    """'8080' → ('127.0.0.1', 8080); 'HOST:PORT', '[::1]:PORT' as given (port 0: any free one)."""
    text = str(text).strip()
    if text.isdigit():
        host, port = "127.0.0.1", int(text)
    else:
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = text.rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"--serve takes PORT or HOST:PORT (e.g. 8080, 0.0.0.0:8080), got {text!r}")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_assets() -> Dict[str, bytes]:
    folder = resources.files("hgad_edge.stream").joinpath("web")
    return {name: folder.joinpath(name).read_bytes() for name, _ in set(ASSETS.values())}


class WebView(LiveState):
    """The HTTP server of the live view, and the stream sink that feeds it (``LiveState``).

    Args:
        host, port: where to listen (port 0: a free one; see ``url`` after ``start_server``).
        token: needed by every route when set (>= 8 characters).
        serve_fps, history_s, jpeg_quality, extra_status: see ``LiveState``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None,
                 serve_fps: float = 5.0, history_s: float = 300.0, jpeg_quality: int = 80,
                 extra_status: Optional[Dict[str, Callable[[], Any]]] = None):
        try:
            import aiohttp  # noqa: F401 (lazy: an optional extra)
        except ImportError:
            raise ImportError("--serve needs aiohttp: pip install 'hgad_edge[web]'") from None
        if token is not None and len(token) < 8:
            raise ValueError("the serve token must have at least 8 characters")
        super().__init__(serve_fps, history_s, jpeg_quality, extra_status)
        self.host, self.port, self.token = host, port, token
        self.assets = _load_assets()
        self.loopback = is_loopback(host)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner = None
        self._new_record = self._new_frame = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start_server(self) -> str:
        """Bind and serve on a background thread; returns the URL. Raises OSError when the
        address cannot be bound."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hgad-web", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            raise
        self.start_encoder()
        if not self.loopback:
            log.warning("the live view listens on %s, not only on this machine%s", self.host,
                        "" if self.token else ": anyone who can reach it sees the cameras (set --serve-token)")
        log.info("live view on %s%s", self.url, " (token required)" if self.token else "")
        return self.url

    async def _start(self) -> None:
        from aiohttp import web

        self._new_record, self._new_frame = asyncio.Event(), asyncio.Event()

        @web.middleware
        async def guard(request, handler):
            return await self._guard(request, handler)

        app = web.Application(middlewares=[guard], client_max_size=1024)
        for path in ASSETS:
            app.router.add_get(path, self._asset)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_get("/api/events", self._api_events)
        app.router.add_get("/api/frame", self._api_frame)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def close(self) -> None:
        if self._loop is None or self._closing:
            return
        self.stop_encoder()
        self._loop.call_soon_threadsafe(self._broadcast)
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        except Exception as e:  # noqa: BLE001 (shutting down anyway)
            log.debug("web view cleanup: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _wake_records(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._broadcast)

    def _wake_frames(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._broadcast_frame)

    def _broadcast(self) -> None:
        with self._lock:
            self._wake_pending = False
        ev, self._new_record = self._new_record, asyncio.Event()
        ev.set()
        if self._closing:
            self._broadcast_frame()

    def _broadcast_frame(self) -> None:
        ev, self._new_frame = self._new_frame, asyncio.Event()
        ev.set()

    # ------------------------------------------------------------------ HTTP
    def _authorized(self, request) -> bool:
        if self.token is None:
            return True
        want = self.token.encode()
        given = []
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:].strip())
        given += [request.query.get("token", ""), request.cookies.get(COOKIE, "")]
        return any(g and hmac.compare_digest(g.encode(), want) for g in given)

    def _host_allowed(self, request) -> bool:
        if not self.loopback:
            return True
        host = request.headers.get("Host", "")
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        return name.lower() in LOOPBACK_NAMES or is_loopback(name)

    async def _guard(self, request, handler):
        from aiohttp import web

        if not self._host_allowed(request):
            resp = web.Response(status=421, text="misdirected request: this view answers to localhost only\n")
        elif not self._authorized(request):
            resp = web.Response(status=401, text="401: a token is needed (open the page as /?token=...)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="hgad_edge"'})
        elif "token" in request.query and request.path in ("/", "/index.html") and self.token:
            resp = web.Response(status=303, headers={"Location": "/"})  # keeps the token out of the address bar
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as e:
                resp = web.Response(status=e.status, text=f"{e.status}: {e.reason}\n")
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    async def _asset(self, request):
        from aiohttp import web

        name, ctype = ASSETS[request.match_info.route.resource.canonical]
        return web.Response(body=self.assets[name], headers={"Content-Type": ctype})

    async def _api_status(self, request):
        from aiohttp import web

        return web.json_response(self.status(history=request.query.get("history", "1") != "0"), dumps=dumps)

    async def _api_events(self, request):
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        for k, v in SECURITY_HEADERS.items():
            resp.headers[k] = v
        await resp.prepare(request)
        with self._lock:
            cursor = self.record_seq
        await resp.write(b"retry: 2000\n\n")
        try:
            while not self._closing:
                ev = self._new_record
                with self._lock:
                    waiting = self.record_seq <= cursor
                if waiting:
                    try:
                        await asyncio.wait_for(ev.wait(), 15.0)
                    except asyncio.TimeoutError:
                        await resp.write(b": keep-alive\n\n")
                        continue
                batch = self.records_after(cursor)
                if batch and batch[0][0] > cursor + 1:  # this viewer fell behind: skip, say how much
                    lost = batch[0][0] - cursor - 1
                    await resp.write(f"event: dropped\ndata: {dumps({'count': lost})}\n\n".encode())
                chunk = "".join(f"id: {seq}\nevent: {kind}\ndata: {text}\n\n" for seq, kind, text in batch)
                if batch:
                    cursor = batch[-1][0]
                    await resp.write(chunk.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _api_frame(self, request):
        from aiohttp import web

        view = self.views.get(request.query.get("source", ""))
        if view is None:
            raise web.HTTPNotFound()
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise web.HTTPBadRequest() from None
        deadline = time.monotonic() + FRAME_WAIT_S
        while view.seq <= after and not self._closing:
            view.viewed = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._new_frame.wait(), left)
            except asyncio.TimeoutError:
                break
        view.viewed = time.monotonic()
        jpeg, seq = view.jpeg, view.seq
        if jpeg is None or seq <= after:
            return web.Response(status=204)
        return web.Response(body=jpeg, headers={"Content-Type": "image/jpeg", "X-Frame-Seq": str(seq)})
