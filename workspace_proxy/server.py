"""The transport: the listening socket, one ``Caller`` protocol per connection (it feeds the
``http1.Connection`` state machine and starts an ``exchange.Exchange`` for each request in
turn), and one sweeper per listener that enforces every timeout (far cheaper than a timer per
request). ``Server.stop`` drains: no new connections, idle ones closed, busy ones finish within
the grace time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Final

from workspace_proxy.app import Proxy
from workspace_proxy.decision import Peer
from workspace_proxy.errors import ProxyError
from workspace_proxy.exchange import Exchange
from workspace_proxy.http1 import KEEPALIVE_S, Connection, Request
from workspace_proxy.outcome import Outcome

BACKLOG: Final = 4096
"""Listen queue: a shorter one drops connections of a burst (each costs the client a 1 s
retry)."""


class Caller(asyncio.Protocol):
    """One caller connection: the glue between its socket, its HTTP/1.1 state machine and the
    exchange answering its current request (``http1.Wire`` and ``http1.Exchanges``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.conn: Connection = None  # type: ignore[assignment]
        self.exchange: Exchange | None = None
        self.peer = Peer("", server.scheme)
        self._out: list[bytes] = []
        """Bytes written and not sent yet: sent together (``flush``), so an answer's head and
        a small body leave in one segment, as one write."""
        self._flushing = False
        self._depth = 0
        """Inside a callback that flushes when it ends (``begin``/``end``)."""
        self._reading = False
        """Inside a read of the caller's bytes (what goes to Looker is sent when it ends)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = Peer(peer[0] if isinstance(peer, tuple) else "", self.server.scheme)
        self.transport.set_write_buffer_limits(high=1024 * 1024, low=256 * 1024)
        limits = self.server.app.view.config.limits
        now = self.server.loop.time()
        self.conn = Connection(self, self, limits, now, keepalive_s=self.server.keepalive_s)
        self.server.callers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost()
        self.exchange = None
        self.server.callers.discard(self)
        if not self.server.callers:
            self.server.emptied.set()

    def data_received(self, data: bytes) -> None:
        self._depth += 1
        self._reading = True
        try:
            self.conn.receive(data, self.server.loop.time())
        finally:
            self._reading = False
            if self.exchange is not None:
                self.exchange.flush_upstream()  # the bytes all parsed: Looker may have them
            self.end()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.conn.writing_paused(self.server.loop.time())
        if self.exchange is not None:
            self.exchange.pause_upstream()

    def resume_writing(self) -> None:
        self.conn.writing_resumed()
        if self.exchange is not None:
            self.exchange.resume_upstream()

    def tick(self, now: float) -> None:
        self.conn.tick(now)
        if self.exchange is not None:
            self.exchange.tick(now)

    # --- http1.Wire ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._later()

    def writelines(self, data: list[bytes]) -> None:
        self._out.extend(data)
        self._later()

    def _later(self) -> None:
        if not self._depth and not self._flushing:
            self._flushing = True
            self.server.loop.call_soon(self.flush)

    @property
    def batching(self) -> bool:
        return self._reading

    def begin(self) -> None:
        self._depth += 1

    def end(self) -> None:
        self._depth -= 1
        if not self._depth:
            self.flush()

    def flush(self) -> None:
        self._flushing = False
        if self._out:
            if not self.transport.is_closing():
                self.transport.writelines(self._out)
            self._out.clear()

    def half_close(self) -> bool:
        self.flush()
        if self.transport.is_closing() or not self.transport.can_write_eof():
            return False
        self.transport.write_eof()
        return True

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._out.clear()
        self.transport.abort()

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    # --- http1.Exchanges ----------------------------------------------------------------------
    def turn(self, request: Request) -> None:
        self.exchange = Exchange(self.server.app, self.conn, request, self.peer, self.server.loop)
        self.exchange.start()

    def body(self, request: Request, chunk: bytes) -> None:
        if self.exchange is not None and self.exchange.req is request:
            self.exchange.body_data(chunk)

    def complete(self, request: Request) -> None:
        if self.exchange is not None and self.exchange.req is request:
            self.exchange.body_complete()

    def lost(self, request: Request, error: ProxyError | None) -> None:
        if self.exchange is not None and self.exchange.req is request:
            self.exchange.lost(error)

    def answered(self, request: Request) -> None:
        if self.exchange is not None and self.exchange.req is request:
            self.exchange.answered()

    def refused(self, rid: str, status: int, size: int) -> None:
        """The access line of bytes that never made a request (refused while parsing)."""
        outcome = Outcome(rid, "-", time.perf_counter())
        outcome.status, outcome.bytes_out, outcome.kind = status, size, "malformed"
        outcome.finish(self.server.app.metrics)


class Server:
    """The proxied API on one listening socket (plain or TLS)."""

    def __init__(self, app: Proxy, *, scheme: str, keepalive_s: float = KEEPALIVE_S) -> None:
        self.app = app
        self.scheme = scheme
        self.keepalive_s = keepalive_s
        self.loop = asyncio.get_running_loop()
        self.callers: set[Caller] = set()
        self.emptied = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Handle | None = None

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def start(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = BACKLOG,
    ) -> None:
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: Caller(self), sock=sock, ssl=ssl_context, backlog=backlog
            )
        else:
            self._server = await self.loop.create_server(
                lambda: Caller(self),
                host,
                port,
                ssl=ssl_context,
                backlog=backlog,
                reuse_port=reuse_port,
                reuse_address=True,
            )
        self._sweeper = self.loop.call_soon(self._sweep)

    def _sweep(self) -> None:
        """Every connection's timeouts, the pool's idle connections, the metrics' export;
        about four times per shortest timeout, at most once a second."""
        now = self.loop.time()
        for caller in list(self.callers):
            caller.tick(now)
        self.app.pool.prune(now)
        self.app.metrics.publish()
        config = self.app.view.config
        timeouts = config.looker.timeouts
        shortest = min(
            self.keepalive_s,
            config.limits.body_idle_timeout_s,
            timeouts.read_s or self.keepalive_s,
            timeouts.connect_s or self.keepalive_s,
        )
        self._sweeper = self.loop.call_later(min(1.0, max(0.01, shortest / 4)), self._sweep)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, close idle connections, give busy ones ``grace_s`` to finish."""
        if self._server is not None:
            self._server.close()
        for caller in list(self.callers):
            if caller.conn.draining():
                continue
        if self.callers:
            self.emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.emptied.wait(), grace_s)
        for caller in list(self.callers):
            caller.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.app.metrics.publish()
