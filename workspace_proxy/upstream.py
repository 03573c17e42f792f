"""Connections to Looker, kept alive in a pool, and the protocol that parses Looker's answers
and hands them to the exchange that sent the request (a ``Receiver``). Large bodies of known
length bypass the parser. Knows nothing of policy."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

import httptools
import structlog

from workspace_proxy import headers
from workspace_proxy.config import Config

log = structlog.get_logger("workspace_proxy.upstream")

IDLE_S: Final = 15.0
"""Idle keep-alive connections are closed after this (aiohttp's client default), well before
servers usually close them: reusing one the server is closing loses the request."""
_DNS_TTL_S: Final = 10.0
"""How long Looker's looked-up address is used for new connections (aiohttp's default too)."""
_BIG_READ: Final = 128 * 1024
"""While a large body streams from Looker, wake up for no less than this much."""


@dataclass(frozen=True, slots=True)
class Backend:
    """Where the pool connects: Looker (TCP, maybe TLS), with its timeouts."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    connect_s: float | None = None
    read_s: float | None = None

    @classmethod
    def looker(cls, config: Config) -> Backend:
        url = urlsplit(config.looker.base_url)
        tls = url.scheme == "https"
        context = config.looker.ssl_context()
        timeouts = config.looker.timeouts
        return cls(
            host=url.hostname or "",
            port=url.port or (443 if tls else 80),
            ssl=(context if isinstance(context, ssl.SSLContext) else ssl.create_default_context())
            if tls
            else None,
            connect_s=timeouts.connect_s,
            read_s=timeouts.read_s,
        )


class Receiver(Protocol):
    """The exchange an upstream connection answers to."""

    head_out: bool
    """The caller already has the answer's head (the rest may bypass the parser)."""
    asked_head: bool
    """The request was a HEAD: the answer has no body, whatever its Content-Length says."""
    seen: float
    """When Looker last sent something (loop time)."""

    def upstream_head(self, status: int, conn: Upstream) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_begin(self) -> None:
        """Looker's bytes are being read: what goes to the caller is sent at ``upstream_end``."""
        ...

    def upstream_end(self) -> None: ...
    def upstream_done(self, conn: Upstream) -> None: ...
    def upstream_lost(self, conn: Upstream) -> None: ...
    def pause_caller(self) -> None: ...
    def resume_caller(self) -> None: ...


class Pool:
    """Keep-alive connections to one backend; a connection carries one exchange at a time."""

    def __init__(self, backend: Backend, size: Callable[[], int]) -> None:
        self.backend = backend
        self.loop = asyncio.get_running_loop()
        self.size = size
        """The most idle connections kept (the most all teams can use at once)."""
        self.closing = False
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
        """A new connection (its timeout, ``connect_s``, is the exchange's to enforce)."""
        b = self.backend
        address = await self._address()
        try:
            _, conn = await self.loop.create_connection(
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
        if resolved is not None and resolved[0] > self.loop.time():
            return resolved[1]
        if self._resolving is None or self._resolving.done():
            self._resolving = self.loop.create_task(self._resolve())
        return await asyncio.shield(self._resolving)

    async def _resolve(self) -> str:
        found = await self.loop.getaddrinfo(
            self.backend.host, self.backend.port, type=socket.SOCK_STREAM
        )
        address = str(found[0][4][0])
        self._resolved = (self.loop.time() + _DNS_TTL_S, address)
        return address

    def give_back(self, conn: Upstream) -> None:
        """Keep a finished connection for the next request (at most ``size()``, ``IDLE_S``)."""
        if conn.reusable and not self.closing and len(self.idle) < self.size():
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
        else:
            conn.transport.close()

    def prune(self, now: float) -> None:
        while self.idle and now - self.idle[0].idle_since >= IDLE_S:
            self.idle.popleft().transport.close()

    def close(self) -> None:
        self.closing = True
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()


class Upstream(asyncio.Protocol):
    """One connection to Looker; parses its answers."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.receiver: Receiver | None = None
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
        self.sock: socket.socket | None = None
        self.lowat = 1
        self.idle_since = 0.0
        self._out: list[bytes] = []
        """Request bytes not sent yet, sent together by ``flush`` (the receiver's to call): a
        request whose bytes turn out malformed later in the same read of the caller's is
        dropped before Looker sees any of it."""

    def attach(self, receiver: Receiver, data: list[bytes]) -> None:
        """Carry ``receiver``'s request (its first bytes)."""
        self.receiver = receiver
        self.used = True
        self.send(data)

    def send(self, data: list[bytes]) -> None:
        self._out.extend(data)

    def flush(self) -> None:
        if self._out:
            if self.receiver is not None and not self.transport.is_closing():
                self.transport.writelines(self._out)
            self._out.clear()

    def drop(self) -> None:
        """This connection's state is unknown (its exchange gave up): never reuse it; what
        was not sent yet never is."""
        self._out.clear()
        self.reusable = False
        self.receiver = None
        self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # asyncio and uvloop set TCP_NODELAY on TCP sockets themselves.
        sock = transport.get_extra_info("socket")
        tls = transport.get_extra_info("sslcontext") is not None
        if sock is not None and not tls:
            self.sock = sock  # (TLS records make byte counts on the socket meaningless)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.parser = _NO_RESPONSES  # it refers back to us: let refcounting free both
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            return
        if self.until_close and exc is None:
            receiver.upstream_done(self)
        else:
            receiver.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        rx = self.receiver
        if rx is None:  # bytes nobody asked for: this connection cannot be trusted any more
            self.reusable = False
            self.transport.close()
            return
        rx.seen = self.pool.loop.time()
        rx.upstream_begin()
        try:
            self._received(rx, data)
        finally:
            rx.upstream_end()

    def _received(self, rx: Receiver, data: bytes) -> None:
        if self.remaining:
            self._pass_body(rx, data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error("front_failed", exc_info=exc.__context__)
            else:
                log.warning("upstream_garbage", error=_reason(exc))
            self.reusable = False
            self.transport.close()
            lost, self.receiver = self.receiver, None
            if lost is not None:
                lost.upstream_lost(self)
            return
        current = self.receiver
        if current is None:
            return
        if current.head_out and (self.bodyless or (self.length is not None and not self.chunked)):
            # The head is through and the rest is a known number of bytes (or none): the parser
            # is done with this answer. A fresh one reads the next answer on this connection.
            self.parser = httptools.HttpResponseParser(self)
            self.remaining = 0 if self.bodyless else int(self.length or 0) - self.received
            if not self.remaining:
                self._complete(current)
                return
            self._low_water()

    def _pass_body(self, rx: Receiver, data: bytes) -> None:
        if len(data) > self.remaining:  # more than the answer announced: not to be trusted
            log.warning("upstream_garbage", error="bytes after the announced body")
            self.reusable = False
            data = data[: self.remaining]
        self.remaining -= len(data)
        rx.upstream_body(data)
        if self.remaining:
            if self.remaining < self.lowat:
                self._low_water()
        else:
            self._low_water()
            self._complete(rx)
            if not self.reusable:
                self.transport.close()

    def _low_water(self) -> None:
        """Wake for a large body only once a big chunk is waiting (SO_RCVLOWAT): when the
        machine is busy, reading whatever little has arrived makes many small chunks, each
        costing a read, a write and a callback."""
        want = min(self.remaining, _BIG_READ) or 1
        if want != self.lowat and self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.lowat = want

    def _complete(self, rx: Receiver) -> None:
        self.receiver = None
        rx.upstream_done(self)

    def pause_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.pause_caller()

    def resume_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.resume_caller()

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
        """Keep the end-to-end headers (the framing and the request id are the proxy's)."""
        kind = headers.kind(name)
        if not kind:
            self.headers.append((name, value))
        elif kind == headers.LENGTH:
            self.framed = True
            self.length = value
        elif kind == headers.TE:
            self.framed = self.chunked = True
        elif kind == headers.CONNECTION:
            self.connection.append(value)  # hop-by-hop, and so is every header it names
        elif kind != headers.HOP and kind != headers.RID:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.reusable = False
        rx = self.receiver
        self.bodyless = status in (204, 304) or (rx is not None and rx.asked_head)
        self.until_close = status >= 200 and not self.bodyless and not self.framed
        if rx is not None and status >= 200:
            rx.upstream_head(status, self)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if self.receiver is not None:
            self.receiver.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return  # an interim answer (100 Continue): the real one follows
        rx, self.receiver = self.receiver, None
        if rx is not None:
            rx.upstream_done(self)


class _Ignored:
    """Callbacks of the parsers a closed connection is left with."""


_NO_RESPONSES: Final = httptools.HttpResponseParser(_Ignored())


def _reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return "".join(c for c in text if c.isprintable())[:120]
