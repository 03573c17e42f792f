"""The front: the listening socket, the HTTP/1.1 parser and the fast forwarding path.

Every caller connection is parsed here (llhttp, through httptools). The common request — an
authenticated call of a managed team whose pinned session is ready, with no body or a small one —
is forwarded to Looker straight from here, on raw asyncio protocols and a pool of keep-alive
connections: no per-request framework objects, no task unless a connection must be opened. Every
other request (login, logout, /session, sudo, passthrough, branch switches, large or chunked
bodies, anything unusual or wrong) is relayed unchanged to the aiohttp application behind it,
over a private Unix socket; that application remains the one implementation of those rules and of
session replacement. The fast path takes no decision of its own: it calls the same pure functions
(``routes.classify``, ``headers``, ``CallerAuth.verify``) and, when Looker answers 401, hands the
request to the application, which re-pins and replays it.

:class:`FrontSite` plugs this into an aiohttp ``AppRunner`` in place of ``TCPSite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httptools
import structlog
from aiohttp import web

from workspace_proxy.app import request_id
from workspace_proxy.auth import bearer_value, is_proxy_token
from workspace_proxy.config import Config
from workspace_proxy.errors import BadRequest, ProxyError, SessionUnavailable, Unauthenticated
from workspace_proxy.headers import PEER_HEADER, dropped_upstream, hop_by_hop
from workspace_proxy.log import access as access_log
from workspace_proxy.looker import auth_header
from workspace_proxy.proxy import STATE, ProxyState, View, error_json
from workspace_proxy.routes import Action, Route, classify
from workspace_proxy.tokens import PinnedSession, SessionProvider

log = structlog.get_logger("workspace_proxy.front")

KEEPALIVE_S: Final = 75.0
"""Idle caller connections (and callers that never finish their headers) are closed after this."""
_IDLE_UPSTREAM_S: Final = 15.0
"""Idle keep-alive connections to a backend are closed after this (aiohttp's client default),
well before servers usually close them: reusing one the server is closing loses the request."""
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
"""Methods sent once more on a new connection when a kept-alive one died before answering
(RFC 9110 9.2.2); anything else might have been acted on, so its caller gets the 502."""
_RELAY_BACKLOG: Final = 4096
"""A Unix listener refuses (rather than queues) connections beyond its backlog: a cold start
relays every first request at once."""
_LINGER_S: Final = 2.0
"""How long the rest of an early-answered body is read and discarded before closing."""
_DNS_TTL_S: Final = 10.0
"""How long Looker's looked-up address is used for new connections (aiohttp's default too)."""
_BIG_READ: Final = 128 * 1024
"""While a large body streams from a backend, wake up for no less than this much."""
_QUEUE_BYTES: Final = 256 * 1024
"""Pipelined request bytes held per caller connection before reading from it pauses."""
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Methods sent without Content-Length when they carry no body (as aiohttp's client does)."""
_CRLF: Final = b"\r\n"
_NONE: Final[frozenset[bytes]] = frozenset()
_LAST_CHUNK: Final = b"0\r\n\r\n"


# What the front needs to know about a header, by its raw name (cached: names repeat).
_OTHER, _HOST, _LENGTH, _TE, _EXPECT, _AUTH, _RID, _CONNECTION, _HOP = range(9)
_KINDS: Final = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"expect": _EXPECT,
    b"authorization": _AUTH,
    b"x-request-id": _RID,
    b"connection": _CONNECTION,
}


@functools.lru_cache(maxsize=4096)
def _kind(name: bytes) -> int:
    lower = name.lower()
    kind = _KINDS.get(lower, _OTHER)
    return _HOP if kind == _OTHER and hop_by_hop(lower) else kind


@functools.lru_cache(maxsize=4096)
def _route(method: str, raw_path: str, versions: tuple[str, ...]) -> Route:
    return classify(method, raw_path, versions)


@dataclass(frozen=True, slots=True)
class Backend:
    """Where a pool connects: Looker (TCP, maybe TLS) or the application (Unix socket)."""

    host: str
    port: int
    unix: str | None = None
    ssl: ssl.SSLContext | None = None
    host_header: bytes = b""
    base_path: str = ""
    connect_s: float | None = None
    read_s: float | None = None

    @classmethod
    def looker(cls, config: Config) -> Backend:
        url = urlsplit(config.looker.base_url)
        tls = url.scheme == "https"
        context = config.looker.ssl_context()
        port = url.port or (443 if tls else 80)
        default = (tls and port == 443) or (not tls and port == 80)
        host = url.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        timeouts = config.looker.timeouts
        return cls(
            host=host,
            port=port,
            ssl=(context if isinstance(context, ssl.SSLContext) else ssl.create_default_context())
            if tls
            else None,
            host_header=(shown if default else f"{shown}:{port}").encode("idna"),
            base_path=url.path.rstrip("/"),
            connect_s=timeouts.connect_s,
            read_s=timeouts.read_s,
        )


class Request:
    """One request as parsed from the caller."""

    __slots__ = (
        "ascii",
        "auth",
        "auths",
        "body",
        "body_bytes",
        "chunked",
        "complete",
        "connection",
        "expect",
        "headers",
        "host",
        "hosts",
        "keep_alive",
        "length",
        "method",
        "rid",
        "started",
        "target",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.length: int | None = None
        self.chunked = False
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.complete = False
        self.started = 0.0
        self.expect = False
        self.host = b""
        self.hosts = 0
        self.auth = b""
        self.auths = 0
        self.rid: bytes | None = None
        self.connection = False
        """It names headers in a Connection header (they are hop-by-hop too)."""
        self.ascii = True
        """Every header value is ASCII."""


class Front:
    """Shared by all caller connections of one listener: the app's state and the pools."""

    def __init__(
        self, app: web.Application, relay_path: str, scheme: str, keepalive_s: float
    ) -> None:
        self.app = app
        self.scheme = scheme
        self.keepalive_s = keepalive_s
        self.loop = asyncio.get_running_loop()
        self.relay = Pool(self, Backend(host="", port=0, unix=relay_path))
        self._pools: dict[Backend, Pool] = {}
        self.connections: set[Caller] = set()
        self.emptied = asyncio.Event()
        """Set when the last caller connection closes."""
        self.closing = False
        self._sweeper = self.loop.call_soon(self._sweep)

    def _sweep(self) -> None:
        """Check every connection's timeouts; far cheaper than a timer per request. Runs about
        four times per shortest timeout, at most once a second."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check(now)
        for pool in (self.relay, *self._pools.values()):
            pool.prune(now)
        self.state.metrics.publish()
        config = self.state.view.config
        shortest = min(
            self.keepalive_s,
            config.limits.body_idle_timeout_s,
            config.looker.timeouts.read_s or self.keepalive_s,
        )
        self._sweeper = self.loop.call_later(min(1.0, max(0.01, shortest / 4)), self._sweep)

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]

    def pool(self, backend: Backend) -> Pool:
        pool = self._pools.get(backend)
        if pool is None:
            pool = self._pools[backend] = Pool(self, backend)
        return pool

    def stop_sweeping(self) -> None:
        self._sweeper.cancel()

    def close_pools(self) -> None:
        for pool in (self.relay, *self._pools.values()):
            pool.close()


class Pool:
    """Keep-alive connections to one backend; a connection carries one exchange at a time."""

    def __init__(self, front: Front, backend: Backend) -> None:
        self.front = front
        self.backend = backend
        self.idle: deque[Upstream] = deque()
        """Oldest first; the most recently used is taken first (its socket is warm)."""
        self._resolved: tuple[float, str] | None = None
        self._resolving: asyncio.Task[str] | None = None

    def take(self) -> Upstream | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> Upstream:
        """A new connection (its timeout, ``connect_s``, is enforced by the sweeper)."""
        b, loop = self.backend, self.front.loop
        if b.unix is not None:
            _, conn = await loop.create_unix_connection(lambda: Upstream(self), b.unix)
            return conn
        address = await self._address()
        try:
            _, conn = await loop.create_connection(
                lambda: Upstream(self),
                address,
                b.port,
                ssl=b.ssl,
                server_hostname=b.host if b.ssl else None,
            )
        except OSError:
            self._resolved = None  # Looker may have moved: look it up again next time
            raise
        return conn

    async def _address(self) -> str:
        """Looker's address, looked up at most every ``_DNS_TTL_S`` and once for any number of
        connections opened together (a burst would otherwise send as many DNS queries)."""
        resolved = self._resolved
        if resolved is not None and resolved[0] > self.front.loop.time():
            return resolved[1]
        if self._resolving is None or self._resolving.done():
            self._resolving = self.front.loop.create_task(self._resolve())
        return await asyncio.shield(self._resolving)

    async def _resolve(self) -> str:
        loop = self.front.loop
        found = await loop.getaddrinfo(
            self.backend.host, self.backend.port, type=socket.SOCK_STREAM
        )
        address = str(found[0][4][0])
        self._resolved = (loop.time() + _DNS_TTL_S, address)
        return address

    def give_back(self, conn: Upstream) -> None:
        """Keep a finished connection for the next request: at most ``Config.pool_size`` (the
        most connections all teams can use at once) and for at most ``_IDLE_UPSTREAM_S``."""
        front = self.front
        if (
            conn.reusable
            and not front.closing
            and len(self.idle) < front.state.view.config.pool_size
        ):
            conn.idle_since = front.loop.time()
            self.idle.append(conn)
        else:
            conn.transport.close()

    def prune(self, now: float) -> None:
        while self.idle and now - self.idle[0].idle_since >= _IDLE_UPSTREAM_S:
            self.idle.popleft().transport.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()


class Upstream(asyncio.Protocol):
    """One connection to a backend; parses its responses."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.reusable = True
        self.used = False
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.until_close = False
        """The answer has no length and is not chunked: it ends when the connection does."""
        self.framed = False
        self.chunked = False
        self.length: bytes | None = None
        self.connection: list[bytes] = []
        self.received = 0
        """Body bytes of the current answer seen by the parser."""
        self.remaining = 0
        """Body bytes still to come of an answer of known length, passed on without the parser
        (the bulk of a large download: no copy, no callback per chunk)."""
        self.bodyless = False
        """The answer to a HEAD request: it has no body, whatever its Content-Length says."""
        self.sock: socket.socket | None = None
        self.lowat = 1
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # asyncio and uvloop set TCP_NODELAY on TCP sockets themselves.
        sock = transport.get_extra_info("socket")
        tls = transport.get_extra_info("sslcontext") is not None
        if sock is not None and sock.family != socket.AF_UNIX and not tls:
            self.sock = sock  # (TLS records make byte counts on the socket meaningless)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.parser = _NO_RESPONSES  # the parser refers back to us: let refcounting free both
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if self.until_close and exc is None:
            ex.response_done(self)
        else:
            ex.upstream = self
            ex.upstream_lost()

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: this connection cannot be trusted any more
            self.reusable = False
            self.transport.close()
            return
        ex.upstream_seen = ex.front.loop.time()
        if self.remaining:
            self._pass_body(ex, data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error("front_failed", exc_info=exc.__context__)
            else:
                log.warning("upstream_garbage", error=_parser_reason(exc))
            self.reusable = False
            self.transport.close()
            if self.exchange is not None:
                self.exchange.upstream_lost()
            return
        ex = self.exchange
        if ex is None:
            return
        if ex.head_sent and (self.bodyless or (self.length is not None and not self.chunked)):
            # The head is through and the rest is a known number of bytes (or none): the parser
            # is done with this answer. A fresh one reads the next answer on this connection.
            self.parser = httptools.HttpResponseParser(self)
            self.remaining = 0 if self.bodyless else int(self.length or 0) - self.received
            if not self.remaining:
                self._complete(ex)
                return
            self._low_water()
        ex.flush()

    def _pass_body(self, ex: Exchange, data: bytes) -> None:
        if len(data) > self.remaining:  # more than the answer announced: not to be trusted
            log.warning("upstream_garbage", error="bytes after the announced body")
            self.reusable = False
            data = data[: self.remaining]
        self.remaining -= len(data)
        ex.response_body(data)
        if self.remaining:
            if self.remaining < self.lowat:
                self._low_water()
            ex.flush()
        else:
            self._low_water()
            self._complete(ex)
            if not self.reusable:
                self.transport.close()

    def _low_water(self) -> None:
        """Wake for a large body only once a big chunk is waiting (SO_RCVLOWAT): when the
        machine is busy, reading whatever little has arrived makes many small chunks, each
        costing a read, a write and a callback, which made a busy download slower still."""
        want = min(self.remaining, _BIG_READ) or 1
        if want != self.lowat and self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.lowat = want

    def _complete(self, ex: Exchange) -> None:
        self.exchange = None
        ex.response_done(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.caller.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.caller.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reason = b""
        self.headers = []
        self.until_close = False
        self.framed = False
        self.chunked = False
        self.length = None
        self.connection = []
        self.received = 0
        self.bodyless = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _kind(name)
        if kind == _LENGTH:
            self.framed = True
            self.length = value
        elif kind == _TE:
            self.framed = self.chunked = True
            return
        elif kind == _HOP:
            return
        elif kind == _CONNECTION:
            self.connection.append(value)  # hop-by-hop, and so is every header it names
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.reusable = False
        ex = self.exchange
        self.bodyless = status in (204, 304) or (ex is not None and ex.request.method == b"HEAD")
        self.until_close = status >= 200 and not self.bodyless and not self.framed
        if ex is not None and status >= 200:
            ex.response_head(status, self)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return  # an interim answer (100 Continue): the real one follows
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.response_done(self)


class _Ignored:
    """Callbacks of the parsers a closed connection is left with."""


_NO_REQUESTS: Final = httptools.HttpRequestParser(_Ignored())
_NO_RESPONSES: Final = httptools.HttpResponseParser(_Ignored())


class Caller(asyncio.Protocol):
    """One caller connection: parses requests and runs them one after the other."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.request: Request | None = None
        """The request being parsed."""
        self.queue: deque[Request] = deque()
        """Parsed (or being parsed) requests waiting for their turn, oldest first."""
        self.exchange: Exchange | None = None
        self.header_bytes = 0
        self.paused = False
        self.closed = False
        self.idle_since = front.loop.time()
        """When the last exchange ended (or the connection opened)."""
        self.full_since = 0.0
        """When writing to the caller last had to pause (its buffers full); 0 when it reads."""
        self.linger_until = 0.0
        """Closing: what the caller still sends is discarded until then (see ``_close``)."""
        self.last = False
        """Nothing after the requests already queued is read (the connection asked to switch
        protocols)."""
        self.refusal: ProxyError | None = None
        """An answer to bytes that could not be parsed, due once the requests before them are."""
        limits = front.state.view.config.limits
        self.max_field = limits.max_header_bytes
        self.max_headers = limits.max_headers

    # --- connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.transport.set_write_buffer_limits(high=1024 * 1024, low=256 * 1024)
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = _NO_REQUESTS  # the parser refers back to us: let refcounting free both
        self.front.connections.discard(self)
        if not self.front.connections:
            self.front.emptied.set()
        if self.exchange is not None:
            self.exchange.caller_lost()

    def pause_writing(self) -> None:
        self.full_since = self.front.loop.time()
        if self.exchange is not None and self.exchange.upstream is not None:
            self.exchange.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.full_since = 0.0
        if self.exchange is not None and self.exchange.upstream is not None:
            self.exchange.upstream.transport.resume_reading()

    def resume_reading(self) -> None:
        if not self.paused and not self.closed:
            self.transport.resume_reading()

    def _close(self, *, unread: bool) -> None:
        """Close once the answers written so far are out. When the caller may still be sending
        the body we answered early (a 413, a 503), half-close and discard what it sends for a
        moment first: closing with unread bytes would reset the connection, and the caller
        would see the reset instead of our answer (a lingering close, as nginx and aiohttp do)."""
        if unread and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()
            self.linger_until = self.front.loop.time() + _LINGER_S
            self.paused = False
            self.transport.resume_reading()
            return
        self.transport.close()

    def check(self, now: float) -> None:
        """The front's sweeper, about every second: idle timeout, then the exchange's own."""
        if self.linger_until:
            if now >= self.linger_until:
                self.transport.close()
            return
        if self.full_since and now - self.full_since >= self.front.keepalive_s:
            # The caller stopped reading its answer: free the Looker connection and the team's
            # slot it holds rather than wait for it forever.
            log.info("caller_stalled", peer=self.peer)
            if self.exchange is not None:
                self.exchange.outcome = "caller_stalled"
            self.transport.abort()
            return
        if self.exchange is not None:
            self.exchange.check(now)
        elif not self.queue and now - self.idle_since >= self.front.keepalive_s:
            self.transport.close()  # idle, or never finished its request's headers

    def data_received(self, data: bytes) -> None:
        if self.linger_until:
            return  # the rest of a body we already answered: discarded
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or Upgrade: answered as a plain request (the app refuses CONNECT), never
            # switched; what follows may be another protocol, so nothing more is read.
            self.last = True
            self.paused = True
            self.transport.pause_reading()
            if self.exchange is None and not self.queue:
                self.transport.close()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, ProxyError):
                log.error("front_failed", exc_info=cause)
                cause = ProxyError()  # 500, "Internal proxy error."
            self.refuse(cause)
        except httptools.HttpParserError as exc:
            self.refuse(BadRequest(f"Malformed HTTP request: {_parser_reason(exc)}.", close=True))
        if self.exchange is not None:
            self.exchange.flush_request()

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.request = Request()
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        req = self.request
        assert req is not None
        req.target += url
        if len(req.target) > self.max_field:
            raise BadRequest("Request line too long.", status=414, close=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.request
        assert req is not None
        if len(name) + len(value) + 2 > self.max_field:
            raise BadRequest("Request header field too long.", status=431, close=True)
        req.headers.append((name, value))
        if len(req.headers) > self.max_headers:
            raise BadRequest("Too many request header fields.", status=431, close=True)
        kind = _kind(name)
        if kind:
            if kind == _HOST:
                req.hosts += 1
                req.host = value
            elif kind == _LENGTH:
                req.length = int(value)  # llhttp has checked it
            elif kind == _TE:
                req.chunked = True
            elif kind == _EXPECT:
                req.expect = value.lower() == b"100-continue"
            elif kind == _AUTH:
                req.auths += 1
                req.auth = value
            elif kind == _RID:
                req.rid = value
            elif kind == _CONNECTION:
                req.connection = True
        if not value.isascii():
            req.ascii = False

    def on_headers_complete(self) -> None:
        req = self.request
        assert req is not None
        p = self.parser
        req.method = p.get_method()
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive() and req.version == "1.1"
        req.started = time.perf_counter()
        if req.chunked and req.version != "1.1":
            # Ambiguous framing (RFC 9112 6.1): answer and close.
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests.", close=True)
        if req.hosts > 1 or (req.hosts == 0 and req.version == "1.1"):
            raise BadRequest("An HTTP/1.1 request needs exactly one Host header.", close=True)
        if req.expect and (req.chunked or req.length):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.queue.append(req)
        if self.exchange is None:
            self.next_exchange()

    def on_body(self, body: bytes) -> None:
        req = self.request
        assert req is not None
        req.body_bytes += len(body)
        ex = self.exchange
        if ex is not None and ex.request is req:
            if ex.streaming:
                ex.request_body(body)
                return
            ex.body_seen = self.front.loop.time()
        req.body.append(body)
        if not self.paused and sum(len(r.target) + r.body_bytes for r in self.queue) > _QUEUE_BYTES:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        req = self.request
        assert req is not None
        req.complete = True
        self.request = None
        ex = self.exchange
        if ex is not None and ex.request is req:
            ex.request_complete()

    # --- exchanges --------------------------------------------------------------------------
    def next_exchange(self) -> None:
        """Start the oldest queued request once its turn (and, for the fast path, its body)
        has come."""
        if self.exchange is not None or not self.queue or self.closed:
            return
        req = self.queue[0]
        self.exchange = Exchange(self, req)
        self.exchange.start()

    def exchange_done(self, keep_alive: bool) -> None:
        self.exchange = None
        done = self.queue.popleft()
        if self.refusal is not None and not self.queue:
            self._write_refusal()
            return
        if self.last and not self.queue:
            self.transport.close()
            return
        if not keep_alive or self.front.closing:
            self.queue.clear()
            self._close(unread=not done.complete)
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.idle_since = self.front.loop.time()
        if self.queue:
            self.next_exchange()

    def refuse(self, exc: ProxyError) -> None:
        """Answer bytes the parser or the limits refused, then close. Complete requests before
        them are answered first, in order; the one they belong to is not."""
        self.refusal = exc
        self.paused = True
        self.transport.pause_reading()
        ex = self.exchange
        if ex is not None and not ex.request.complete:
            ex.abandon()  # the refused bytes are part of the request being served
            return
        self.queue = deque(r for r in self.queue if r.complete)
        if ex is None:
            self._write_refusal()

    def _write_refusal(self) -> None:
        exc, self.refusal = self.refusal, None
        if exc is None or self.closed:
            return
        status, body, headers = error_json(exc)
        rid = request_id(None)
        self.transport.write(_head(status, b"", headers, len(body), rid, close=True) + body)
        self.transport.close()
        self.queue.clear()
        access_log(
            request_id=rid,
            team=None,
            method="-",
            route="-",
            status=status,
            bytes_in=0,
            bytes_out=len(body),
            duration_ms=0.0,
            session=None,
            replayed=False,
            outcome="malformed",
            via="front",
        )


class Exchange:
    """One request: to Looker directly (fast) or to the application (relay), answer streamed."""

    __slots__ = (
        "attempts",
        "body_seen",
        "bytes_out",
        "caller",
        "chunked_out",
        "close_after",
        "connect_started",
        "connect_timed_out",
        "connecting",
        "fast",
        "finished",
        "front",
        "head_sent",
        "out",
        "outcome",
        "own_rid",
        "rejected",
        "request",
        "reused",
        "status",
        "streaming",
        "up_out",
        "upstream",
        "upstream_seen",
        "waiting_body",
    )

    def __init__(self, caller: Caller, request: Request) -> None:
        self.caller = caller
        self.front = caller.front
        self.request = request
        self.upstream: Upstream | None = None
        self.streaming = False
        """Request body chunks go straight to the upstream connection."""
        self.out: list[bytes] = []
        self.up_out: list[bytes] = []
        self.chunked_out = False
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self.upstream_seen = 0.0
        """When the backend last sent something (or the request went out)."""
        self.body_seen = 0.0
        """When the caller last sent body bytes (while the fast path waits for them)."""
        self.finished = False
        # fast path only
        self.fast: Fast | None = None
        self.rejected = False
        """Looker answered 401 to the fast path: the answer is dropped and the call replayed."""
        self.attempts = 0
        self.reused = False
        self.close_after = False
        self.waiting_body = False
        """A fast request waits for its (small) body before it is sent."""
        self.own_rid = ""
        """The request id of an answer the front gives a relayed request itself."""
        self.outcome: str | None = None
        """Why the exchange is ending, when the caller's connection is cut for a reason."""
        self.connecting: asyncio.Task[None] | None = None
        self.connect_started = 0.0
        self.connect_timed_out = False

    # --- start ------------------------------------------------------------------------------
    def start(self) -> None:
        req = self.request
        fast = plan(self.front.state, req, self.caller.peer, self.front.scheme)
        if fast is not None and (req.length or 0) > 0 and not req.complete:
            # A small body: wait for all of it, so the call can be replayed after a 401.
            self.fast = fast
            self.waiting_body = True
            self.body_seen = self.front.loop.time()
            return
        self.fast = fast
        self._send()

    def request_complete(self) -> None:
        if self.waiting_body:
            self.waiting_body = False
            self._send()
        elif self.streaming and self.request.chunked:
            self.up_out.append(_LAST_CHUNK)

    def _send(self) -> None:
        if (
            self.fast is not None
            and not self.fast.slot
            and not self.fast.take_slot(self.front.state)
        ):
            self.fast = None  # the team is at its limit: the app answers 429
        pool = self.front.pool(self.fast.backend) if self.fast else self.front.relay
        conn = pool.take()
        if conn is not None:
            self._attach(conn)
        else:
            self._start_connect(pool)

    def _start_connect(self, pool: Pool) -> None:
        self.connect_started = self.front.loop.time()
        self.connecting = self.front.loop.create_task(self._connect(pool))

    async def _connect(self, pool: Pool) -> None:
        try:
            conn = await pool.connect()
        except asyncio.CancelledError:
            if not self.connect_timed_out:
                raise
            self._connect_failed(TimeoutError())
            return
        except OSError as exc:
            self._connect_failed(exc)
            return
        finally:
            self.connecting = None
        if self.caller.closed:
            conn.transport.close()
            self._finish(keep_alive=False)
            return
        self._attach(conn)

    def _connect_failed(self, exc: Exception) -> None:
        if self.caller.closed:
            self._finish(keep_alive=False)
            return
        log.warning(
            "upstream_error",
            error=exc.__class__.__name__,
            relay=self.fast is None,
            request_id=self._rid(),
        )
        self._fail(504 if isinstance(exc, TimeoutError) else 502, kind="connect")

    def _attach(self, conn: Upstream) -> None:
        self.upstream = conn
        conn.exchange = self
        self.attempts += 1
        self.reused = conn.used
        conn.used = True
        self.upstream_seen = self.front.loop.time()
        req = self.request
        if self.fast is not None:
            head = self.fast.head(req)
            conn.transport.write(head if not req.body else head + b"".join(req.body))
        else:
            conn.transport.write(_relay_head(req, self.caller.peer, self.front.scheme))
            if req.body:
                self.up_out.extend(_frame(req, b"".join(req.body)))
            if req.complete and req.chunked:
                self.up_out.append(_LAST_CHUNK)
            elif not req.complete:
                self.streaming = True
                if self.caller.paused:  # paused while waiting for this connection
                    self.caller.paused = False
                    self.caller.transport.resume_reading()
            self.flush_request()

    def request_body(self, chunk: bytes) -> None:
        self.up_out.extend(_frame(self.request, chunk))

    def flush_request(self) -> None:
        if self.up_out and self.upstream is not None:
            self.upstream.transport.writelines(self.up_out)
            self.up_out.clear()

    # --- response ---------------------------------------------------------------------------
    def response_head(self, status: int, up: Upstream) -> None:
        """The answer's head for the caller: the backend's headers minus hop-by-hop ones (the
        parser left those out) and those its Connection header names; our own framing."""
        self.status = status
        fast = self.fast
        if fast is not None and status == 401:
            self.rejected = True  # Looker ended the session: this answer is dropped
            return
        req = self.request
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, up.reason)]
        named = _named(up.connection) if up.connection else _NONE
        for name, value in up.headers:
            if named and name.lower().replace(b"_", b"-") in named:
                continue
            if fast is not None and _kind(name) == _RID:
                continue
            lines += (name, b": ", value, _CRLF)
        length = up.length
        if fast is not None:
            lines += (b"X-Request-Id: ", fast.rid.encode(), _CRLF)
        bodyless = req.method == b"HEAD" or status in (204, 304)
        close = not req.keep_alive or self.front.closing or not req.complete
        if length is None and not bodyless:
            if req.version == "1.1":
                self.chunked_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                close = True
        if close:
            lines.append(b"Connection: close\r\n")
        self.close_after = close
        lines.append(_CRLF)
        self.out.append(b"".join(lines))
        self.head_sent = True
        if fast is not None:
            fast.answered(self.front.state, self.front.loop.time() - self.upstream_seen)

    def response_body(self, body: bytes) -> None:
        if self.rejected:
            return
        self.bytes_out += len(body)
        if self.chunked_out:
            self.out += (b"%x\r\n" % len(body), body, _CRLF)
        else:
            self.out.append(body)

    def flush(self) -> None:
        if self.out and not self.caller.closed:
            self.caller.transport.writelines(self.out)
        self.out.clear()

    def response_done(self, conn: Upstream) -> None:
        self.upstream = None
        request_sent = self.request.complete and not self.up_out
        if not request_sent:
            conn.reusable = False  # the backend answered before the whole body was sent
        conn.pool.give_back(conn)
        if self.rejected:
            self.rejected = False
            self.front.loop.create_task(self._replay())
            return
        if self.chunked_out:
            self.out.append(_LAST_CHUNK)
        self.flush()
        self._finish(keep_alive=not self.close_after)

    async def _replay(self) -> None:
        """Looker answered 401: the session was replaced under us (revoked, expired early).
        As ``proxy._forward`` does: re-pin once (or take the session another request already
        re-pinned) and send the buffered request again; a second 401 is a 503."""
        fast = self.fast
        assert fast is not None
        try:
            if fast.replayed:
                raise SessionUnavailable(
                    "Looker rejected a freshly pinned session", retry_after=5.0, kind="rejected"
                )
            fresh = await fast.provider.replace(fast.session)
        except ProxyError as exc:
            if not self.caller.closed:
                self._answer(exc)
            else:
                self._finish(keep_alive=False, outcome="caller_gone")
            return
        if self.caller.closed:
            self._finish(keep_alive=False, outcome="caller_gone")
            return
        fast.session, fast.replayed = fresh, True
        self.front.state.metrics.replays.labels(fast.team).inc()
        self.status = 0
        self._send()

    # --- failures ---------------------------------------------------------------------------
    def upstream_lost(self) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.exchange = None
        if self.finished:
            return
        req = self.request
        if (
            not self.head_sent
            and self.reused
            and self.attempts < 2
            and req.complete
            and req.method in _IDEMPOTENT
        ):
            # A kept-alive connection the backend had closed: nothing was answered; once more on
            # a new connection.
            self.streaming = False
            self._start_connect(conn.pool if conn else self.front.relay)
            return
        if not self.head_sent:
            self._fail(502, kind="upstream_broken")
            return
        log.warning("upstream_stream_broken", request_id=self._rid())
        self._cut()
        self._finish(keep_alive=False, outcome="upstream_broken")

    def abandon(self) -> None:
        """The rest of this request cannot be read (its bytes were refused): answer with the
        caller's pending refusal if nothing was answered yet, else cut the connection."""
        if self.finished:
            return
        self._drop_upstream()
        if self.head_sent:
            self._cut()
        else:
            self.caller._write_refusal()
        self._finish(keep_alive=False, outcome="malformed")

    def caller_lost(self) -> None:
        if self.finished:
            return
        self._drop_upstream()
        self._finish(keep_alive=False, outcome=self.outcome or "caller_gone")

    def _drop_upstream(self) -> None:
        """Close this exchange's backend connection: its state is unknown, never reuse it."""
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.reusable = False
            conn.exchange = None
            conn.transport.close()

    def _cut(self) -> None:
        """The answer's head is out: cutting the caller's connection is the only honest signal
        left, so that a truncated body can never pass for a complete one."""
        self.flush()
        self.caller.transport.abort()

    def _fail(self, status: int, *, kind: str) -> None:
        if self.fast is None:
            message = "workspace-proxy: internal relay failed."
        elif status == 504:
            message = "workspace-proxy: Looker did not answer in time."
        else:
            message = "workspace-proxy: Looker is unavailable."
        self._answer(BadRequest(message, status=status, close=True), outcome=kind)

    def _answer(self, exc: ProxyError, *, outcome: str | None = None) -> None:
        """Answer the caller with the Looker-shaped error for ``exc``."""
        status, body, headers = error_json(exc)
        self.status = status
        req = self.request
        close = getattr(exc, "close", False) or not req.keep_alive or not req.complete
        self.caller.transport.write(
            _head(status, b"", headers, len(body), self._rid(), close) + body
        )
        kind = outcome or getattr(exc, "kind", None) or exc.__class__.__name__
        self._finish(keep_alive=not close, outcome=kind)

    def check(self, now: float) -> None:
        """Timeouts, checked by the front's sweeper: a fast request's body that stalls, and
        Looker going quiet for longer than ``looker.timeouts.read_s`` (the app times its own)."""
        if self.connecting is not None:
            connect_s = self.fast.backend.connect_s if self.fast is not None else None
            if connect_s and now - self.connect_started >= connect_s:
                self.connect_timed_out = True
                self.connecting.cancel()
            return
        if self.waiting_body:
            limit = self.front.state.view.config.limits.body_idle_timeout_s
            if now - self.body_seen >= limit:
                self.waiting_body = False
                message = "workspace-proxy: the request body did not arrive in time."
                self._answer(BadRequest(message, status=408, close=True))
            return
        fast = self.fast
        if fast is None or self.upstream is None or not fast.backend.read_s:
            return
        if now - self.upstream_seen < fast.backend.read_s:
            return
        self._drop_upstream()
        if self.head_sent:
            self._cut()
            self._finish(keep_alive=False, outcome="upstream_timeout")
        else:
            self._fail(504, kind="upstream_timeout")

    def _rid(self) -> str:
        if self.fast is not None:
            return self.fast.rid
        if not self.own_rid:
            self.own_rid = request_id(None)
        return self.own_rid

    def _finish(self, *, keep_alive: bool, outcome: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        fast = self.fast
        if fast is not None:
            fast.release(self.front.state)
            fast.done(self.front.state, self, outcome)
        elif self.own_rid:  # the front answered a relayed request itself (the app never did)
            req = self.request
            access_log(
                request_id=self.own_rid,
                team=None,
                method=req.method.decode(),
                route="-",
                status=self.status,
                bytes_in=req.body_bytes,
                bytes_out=0,
                duration_ms=round((time.perf_counter() - req.started) * 1000, 2),
                session=None,
                replayed=False,
                outcome=outcome,
                via="front",
            )
        self.caller.exchange_done(keep_alive and not self.caller.closed)


class Fast:
    """A request the front forwards itself: who it is for and under which session."""

    __slots__ = (
        "backend",
        "peer",
        "provider",
        "replayed",
        "rid",
        "route",
        "scheme",
        "session",
        "slot",
        "team",
    )

    def __init__(
        self,
        backend: Backend,
        route: Route,
        provider: SessionProvider,
        session: PinnedSession,
        team: str,
        rid: str,
        peer: str,
        scheme: str,
    ) -> None:
        self.backend = backend
        self.route = route
        self.provider = provider
        self.session = session
        self.replayed = False
        self.team = team
        self.rid = rid
        self.peer = peer
        self.scheme = scheme
        self.slot = False

    def take_slot(self, state: ProxyState) -> bool:
        """One of the team's concurrency slots, or False (the app then answers 429)."""
        view = state.view
        team = view.config.teams.get(self.team)
        busy = state.in_flight.get(self.team, 0)
        if team is None or busy >= team.max_concurrency:
            return False
        state.in_flight[self.team] = busy + 1
        self.slot = True
        return True

    def release(self, state: ProxyState) -> None:
        if self.slot:
            self.slot = False
            state.in_flight[self.team] -= 1

    def head(self, req: Request) -> bytes:
        """The request line and headers for Looker: the caller's headers minus everything
        ``headers.upstream_headers`` drops, plus the pinned session and X-Forwarded-*."""
        target = req.target
        query = target.find(b"?")
        path = self.backend.base_path + self.route.path
        lines = [
            req.method,
            b" ",
            path.encode() if query < 0 else path.encode() + target[query:],
            b" HTTP/1.1\r\nHost: ",
            self.backend.host_header,
            _CRLF,
        ]
        named = (
            _named(v for n, v in req.headers if _kind(n) == _CONNECTION)
            if req.connection
            else _NONE
        )
        for name, value in req.headers:
            if not dropped_upstream(name, named):
                lines += (name, b": ", value, _CRLF)
        lines += (b"Authorization: ", auth_header(self.session.token).encode(), _CRLF)
        if req.body_bytes or req.method not in _NO_BODY_METHODS:
            lines += (b"Content-Length: %d\r\n" % req.body_bytes,)
        if self.peer:
            lines += (b"X-Forwarded-For: ", self.peer.encode(), _CRLF)
        lines += (b"X-Forwarded-Proto: ", self.scheme.encode(), _CRLF)
        if req.host:
            lines += (b"X-Forwarded-Host: ", req.host, _CRLF)
        lines.append(_CRLF)
        return b"".join(lines)

    def answered(self, state: ProxyState, seconds: float) -> None:
        state.metrics.upstream_answered(self.team, seconds)

    def done(self, state: ProxyState, ex: Exchange, outcome: str | None) -> None:
        status = ex.status or 502
        state.metrics.request_done(self.team, self.route.name, status)
        s = self.session
        access_log(
            request_id=self.rid,
            team=self.team,
            method=ex.request.method.decode(),
            route=self.route.name,
            status=status,
            bytes_in=ex.request.body_bytes,
            bytes_out=ex.bytes_out,
            duration_ms=round((time.perf_counter() - ex.request.started) * 1000, 2),
            session=f"{s.generation}:{s.fingerprint}",
            replayed=self.replayed,
            outcome=outcome,
            via="front",
        )


def plan(state: ProxyState, req: Request, peer: str, scheme: str) -> Fast | None:
    """The fast path for this request, or None to relay it to the application.

    Only the plain case qualifies: HTTP/1.1, an origin-form ASCII target, ASCII header values, no
    Expect, a Content-Length body within the replay buffer (or none), exactly one Authorization
    header carrying a valid proxy token of a managed team (no sudo), a route that is simply
    forwarded and a pinned session ready now. Anything else is the application's to decide."""
    view: View = state.view
    limits = view.config.limits
    if (
        req.version != "1.1"
        or req.chunked
        or req.expect
        or (req.length or 0) > limits.replay_buffer_bytes
        or req.method == b"HEAD"
        or req.auths != 1
        or not req.ascii
        or not req.target.startswith(b"/")
        or not req.target.isascii()
    ):
        return None
    credential = req.auth.decode()
    token = bearer_value(credential)
    if token is None or not is_proxy_token(token):
        return None
    try:
        principal = view.auth.verify(credential)
    except Unauthenticated:
        return None
    if principal.sudo is not None:
        return None
    provider: SessionProvider | None = view.sessions.get(principal.team)
    if provider is None:
        return None
    target = req.target.decode()
    raw_path = target.split("?", 1)[0]
    route = _route(req.method.decode(), raw_path, view.config.looker.api_versions)
    if route.action is not Action.FORWARD:
        return None
    session = provider.ready()
    if session is None:
        return None
    return Fast(
        _looker_backend(view.config),
        route,
        provider,
        session,
        principal.team,
        request_id(req.rid.decode() if req.rid is not None else None),
        peer,
        scheme,
    )


_BACKEND: list[tuple[Config, Backend]] = []
"""The last config's Looker backend (the config is held, so identity cannot be reused)."""


def _looker_backend(config: Config) -> Backend:
    if not _BACKEND or _BACKEND[0][0] is not config:
        _BACKEND[:] = [(config, Backend.looker(config))]
    return _BACKEND[0][1]


def _named(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names listed in Connection header values, canonical (lower, ``_`` as ``-``)."""
    named = {t.strip().lower().replace(b"_", b"-") for v in values for t in v.split(b",")}
    named.discard(b"")
    return frozenset(named)


def _relay_head(req: Request, peer: str, scheme: str) -> bytes:
    """The caller's request as it came, re-framed (Content-Length or chunked), for the app; the
    caller's address travels in a header only the front can set."""
    lines = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    for name, value in req.headers:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding", b"expect", b"keep-alive"):
            continue
        if lower == PEER_HEADER:
            continue
        if lower == b"connection":
            kept = b",".join(
                t for t in value.split(b",") if t.strip().lower() not in (b"close", b"keep-alive")
            )
            if kept.strip():
                lines += (name, b": ", kept, _CRLF)
            continue
        lines += (name, b": ", value, _CRLF)
    lines += (PEER_HEADER, b": ", f"{peer} {scheme}".encode(), _CRLF)
    if req.chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif req.length is not None:
        lines += (b"Content-Length: %d\r\n" % req.length,)
    lines.append(_CRLF)
    return b"".join(lines)


def _frame(req: Request, chunk: bytes) -> tuple[bytes, ...]:
    if not chunk:
        return ()
    return (b"%x\r\n" % len(chunk), chunk, _CRLF) if req.chunked else (chunk,)


def _head(
    status: int, reason: bytes, headers: dict[str, str], length: int, rid: str, close: bool
) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))]
    lines += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
    lines.append(b"Content-Type: application/json; charset=utf-8\r\n")
    lines.append(b"Content-Length: %d\r\nX-Request-Id: %s\r\n" % (length, rid.encode()))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(_CRLF)
    return b"".join(lines)


def _reason(status: int) -> bytes:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return "".join(c for c in text if c.isprintable())[:120]


class FrontSite(web.BaseSite):
    """An aiohttp site: the front on ``host:port`` (TLS when given), the app behind it on a
    private Unix socket. Used in place of ``web.TCPSite``; stopping it drains the front."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
        shutdown_timeout: float = 60.0,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._grace = shutdown_timeout
        self._keepalive_s = keepalive_s
        self._dir = ""
        self._relay_server: asyncio.AbstractServer | None = None
        self.front: Front | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port} (front)"

    @property
    def port(self) -> int:
        server = self._server
        sockets = getattr(server, "sockets", None) if server is not None else None
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        app = getattr(self._runner, "app", None)
        assert isinstance(app, web.Application)
        app[STATE].relayed = True
        self._dir = tempfile.mkdtemp(prefix="workspace-proxy-")
        os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, "app.sock")
        self._relay_server = await loop.create_unix_server(server, path, backlog=_RELAY_BACKLOG)
        scheme = "https" if self._ssl_context else "http"
        front = self.front = Front(app, path, scheme, self._keepalive_s)
        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: Caller(front), sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: Caller(front),
                self._host,
                self._port,
                ssl=self._ssl_context,
                backlog=self._backlog,
                reuse_port=self._reuse_port,
                reuse_address=True,
            )

    async def stop(self) -> None:
        front = self.front
        if self._server is not None:
            self._server.close()
        if front is not None:
            front.closing = True
            for conn in list(front.connections):
                if conn.exchange is None and not conn.queue:
                    conn.transport.close()
            if front.connections:
                front.emptied.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(front.emptied.wait(), self._grace)
            for conn in list(front.connections):
                conn.transport.abort()
            front.stop_sweeping()
            front.state.metrics.publish()
            front.close_pools()
        if self._relay_server is not None:
            self._relay_server.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        await super().stop()
