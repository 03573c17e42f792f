"""Connections to a backend — Looker over TCP (maybe TLS), or the application over a Unix
socket — kept alive in a pool, and the protocol that parses their answers and hands them to the
front's exchange. Large bodies of known length bypass the parser."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import httptools
import structlog

from workspace_proxy import headers
from workspace_proxy.config import Config

if TYPE_CHECKING:
    from workspace_proxy.front import Exchange, Front

log = structlog.get_logger("workspace_proxy.upstream")

_IDLE_UPSTREAM_S: Final = 15.0
"""Idle keep-alive connections to a backend are closed after this (aiohttp's client default),
well before servers usually close them: reusing one the server is closing loses the request."""
_DNS_TTL_S: Final = 10.0
"""How long Looker's looked-up address is used for new connections (aiohttp's default too)."""
_BIG_READ: Final = 128 * 1024
"""While a large body streams from a backend, wake up for no less than this much."""


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
        self.parser = NO_RESPONSES  # the parser refers back to us: let refcounting free both
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
                log.warning("upstream_garbage", error=parser_reason(exc))
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
        kind = headers.kind(name)
        if kind == headers.LENGTH:
            self.framed = True
            self.length = value
        elif kind == headers.TE:
            self.framed = self.chunked = True
            return
        elif kind == headers.HOP:
            return
        elif kind == headers.CONNECTION:
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
        elif ex is not None and status == 100:
            ex.interim()

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


NO_RESPONSES: Final = httptools.HttpResponseParser(_Ignored())


def parser_reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return "".join(c for c in text if c.isprintable())[:120]
