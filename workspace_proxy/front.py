"""The front: the listening socket, the HTTP/1.1 parser (llhttp, through httptools) and the
exchanges that carry each caller request to a backend and its answer back.

The common request — an authenticated call of a managed team whose pinned session is ready,
with no body or a small one — is forwarded to Looker straight from here (``fast.plan`` decides),
on raw asyncio protocols over pooled keep-alive connections (``upstream``): no per-request
framework objects, no task unless a connection must be opened. Every other request (login,
logout, /session, sudo, passthrough, branch switches, HEAD, large or chunked bodies, cold
sessions) is relayed unchanged to the aiohttp application behind it over a private Unix socket;
that application remains the one implementation of those rules and of pinning. The fast path
takes no decision of its own: it calls the same route policy, header rules and token check, and
when Looker answers 401 it re-pins through the same session manager and replays once, as the
application does. One sweeper per listener enforces every timeout.

:class:`FrontSite` plugs this into an aiohttp ``AppRunner`` in place of ``TCPSite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections import deque
from http import HTTPStatus
from typing import Final

import httptools
import structlog
from aiohttp import web

from workspace_proxy import headers
from workspace_proxy.app import request_id
from workspace_proxy.errors import BadRequest, ProxyError, SessionUnavailable
from workspace_proxy.fast import Fast, Request, plan
from workspace_proxy.headers import PEER_HEADER
from workspace_proxy.log import access as access_log
from workspace_proxy.proxy import STATE, ProxyState, error_json
from workspace_proxy.routes import parse_target
from workspace_proxy.upstream import Backend, Pool, Upstream, parser_reason

log = structlog.get_logger("workspace_proxy.front")

KEEPALIVE_S: Final = 75.0
"""Idle caller connections (and callers that never finish their headers) are closed after this."""
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
"""Methods sent once more on a new connection when a kept-alive one died before answering
(RFC 9110 9.2.2); anything else might have been acted on, so its caller gets the 502."""
_RELAY_BACKLOG: Final = 4096
"""A Unix listener refuses (rather than queues) connections beyond its backlog: a cold start
relays every first request at once."""
_LINGER_S: Final = 2.0
"""How long the rest of an early-answered body is read and discarded before closing."""
_QUEUE_BYTES: Final = 256 * 1024
"""Pipelined request bytes (heads and bodies) held per caller connection before reading from it
pauses."""
_QUEUE_REQUESTS: Final = 16
"""Pipelined requests held per caller connection before reading from it pauses."""
_CRLF: Final = b"\r\n"
_NONE: Final[frozenset[bytes]] = frozenset()
_LAST_CHUNK: Final = b"0\r\n\r\n"


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


class _Ignored:
    """Callbacks of the parser a closed caller connection is left with."""


NO_REQUESTS: Final = httptools.HttpRequestParser(_Ignored())


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
        self.max_headers = limits.max_headers - headers.ADDED
        self.began_here = False
        """A request began in the bytes being parsed now."""

    # --- connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.transport.set_write_buffer_limits(high=1024 * 1024, low=256 * 1024)
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = NO_REQUESTS  # the parser refers back to us: let refcounting free both
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
        self.began_here = False
        try:
            self.parser.feed_data(data)
            self._refuse_unversioned(data)
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
            self.refuse(BadRequest(f"Malformed HTTP request: {parser_reason(exc)}.", close=True))
        except ProxyError as exc:  # from _refuse_unversioned
            self.refuse(exc)
        if self.exchange is not None:
            self.exchange.flush_request()

    def _refuse_unversioned(self, data: bytes) -> None:
        """A request line without a supported version (HTTP/0.9 style ``GET /x``, ``HTTP/2.0``)
        is answered as soon as the line has ended, not when headers that never come time out."""
        req = self.request
        if req is None or req.headers or not req.target:
            return
        version = self.parser.get_http_version()
        if version in ("1.0", "1.1"):
            return
        tail = data[data.rfind(req.last_url) + len(req.last_url) :] if self.began_here else data
        if version != "0.0" or b"\n" in tail:
            raise _unsupported(version)

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.request = Request()
        self.began_here = True

    def on_url(self, url: bytes) -> None:
        req = self.request
        assert req is not None
        req.target += url
        req.last_url = url
        if len(req.target) > self.max_field:
            raise BadRequest("Request line too long.", status=414, close=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.request
        assert req is not None
        if req.head_done:
            return  # a chunked trailer: never a header, never forwarded
        if len(name) + len(value) + 2 > self.max_field:
            raise BadRequest("Request header field too long.", status=431, close=True)
        req.headers.append((name, value))
        req.head_bytes += len(name) + len(value) + 4
        if len(req.headers) > self.max_headers:
            raise BadRequest(
                f"Too many request header fields: at most {self.max_headers} (Looker gets "
                f"limits.max_headers, the proxy's own {headers.ADDED} included).",
                status=431,
                close=True,
            )
        kind = headers.kind(name)
        if kind:
            if kind == headers.HOST:
                req.hosts += 1
                req.host = value
            elif kind == headers.LENGTH:
                req.length = int(value)  # llhttp has checked it
            elif kind == headers.TE:
                req.chunked = True
            elif kind == headers.EXPECT:
                req.expect = value.lower() == b"100-continue"
            elif kind == headers.AUTH:
                req.auths += 1
                req.auth = value
            elif kind == headers.RID:
                req.rid = value
            elif kind == headers.CONNECTION:
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
        req.head_done = True
        req.body_seen = req.head_seen = self.front.loop.time()
        if req.version not in ("1.0", "1.1"):
            raise _unsupported(req.version)
        if req.chunked and req.version != "1.1":
            # Ambiguous framing (RFC 9112 6.1): answer and close.
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests.", close=True)
        if req.hosts > 1 or (req.hosts == 0 and req.version == "1.1"):
            raise BadRequest("An HTTP/1.1 request needs exactly one Host header.", close=True)
        req.parsed = parse_target(req.target.decode("latin-1"))  # 400 unless origin-form
        self.queue.append(req)
        if self.exchange is None:
            self.next_exchange()
        else:
            self._bound_queue()

    def on_body(self, body: bytes) -> None:
        req = self.request
        assert req is not None
        req.body_bytes += len(body)
        req.body_seen = self.front.loop.time()
        ex = self.exchange
        if ex is not None and ex.request is req and ex.streaming:
            ex.request_body(body)
            return
        req.body.append(body)
        self._bound_queue()

    def _bound_queue(self) -> None:
        """Stop reading from the caller while what it pipelined ahead (heads and bodies) is more
        than one connection may hold; reading resumes as exchanges finish."""
        if self.paused:
            return
        held = sum(len(r.target) + r.head_bytes + r.body_bytes for r in self.queue)
        if held > _QUEUE_BYTES or len(self.queue) > _QUEUE_REQUESTS:
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
        if self.exchange is None:
            self.queue.clear()
        _log_own_answer(rid, "-", status, 0, len(body), 0.0, "malformed")


class Exchange:
    """One request: to Looker directly (fast) or to the application (relay), answer streamed."""

    __slots__ = (
        "attempts",
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
    def interim(self) -> None:
        """The backend answered ``100 Continue`` (the app, once it decided to read the body of a
        request that asked for it): passed on, since this request is the one being answered."""
        req = self.request
        if req.expect and not req.complete and not self.head_sent and not self.caller.closed:
            self.caller.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

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
        named = headers.named_in_connection(up.connection) if up.connection else _NONE
        for name, value in up.headers:
            if named and headers.canonical_raw(name) in named:
                continue
            if fast is not None and headers.kind(name) == headers.RID:
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
        req = self.request
        if not req.complete and not self.head_sent:
            limits = self.front.state.view.config.limits
            if (
                now - req.body_seen >= limits.body_idle_timeout_s
                or now - req.head_seen >= limits.body_timeout_s
            ):
                # The rest of the body may never come (or come forever): answer, free the slot
                # and the backend connection, and close rather than wait to drain it.
                self.waiting_body = False
                self._drop_upstream()
                message = "workspace-proxy: the request body did not arrive in time."
                self._answer(BadRequest(message, status=408, close=True), outcome="body_timeout")
                return
        if self.waiting_body:
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
            fast.done(self.front.state, self.request, self.status, self.bytes_out, outcome)
        elif self.own_rid:  # the front answered a relayed request itself (the app never did)
            req = self.request
            duration_ms = round((time.perf_counter() - req.started) * 1000, 2)
            method = req.method.decode()
            _log_own_answer(
                self.own_rid, method, self.status, req.body_bytes, 0, duration_ms, outcome
            )
        self.caller.exchange_done(keep_alive and not self.caller.closed)


def _log_own_answer(
    rid: str,
    method: str,
    status: int,
    bytes_in: int,
    bytes_out: int,
    duration_ms: float,
    outcome: str | None,
) -> None:
    """The access line of an answer the front gave itself to a call the app never saw."""
    access_log(
        request_id=rid,
        team=None,
        method=method,
        route="-",
        status=status,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration_ms=duration_ms,
        session=None,
        replayed=False,
        outcome=outcome,
        via="front",
    )


def _relay_head(req: Request, peer: str, scheme: str) -> bytes:
    """The caller's request as it came, re-framed (Content-Length or chunked), for the app; the
    caller's address travels in a header only the front can set. ``Expect`` goes along: the app
    answers ``100 Continue`` once it has decided to read the body, and the front passes that on
    (see ``Exchange.interim``)."""
    lines = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    if not req.hosts:  # HTTP/1.0 may omit Host; the app needs one, and is told it is not real
        lines.append(b"Host: workspace-proxy.invalid\r\n")
    for name, value in req.headers:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding", b"keep-alive"):
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
    told = f"{peer} {scheme}" if req.hosts else f"{peer} {scheme} nohost"
    lines += (PEER_HEADER, b": ", told.encode(), _CRLF)
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


def _unsupported(version: str) -> BadRequest:
    if version in ("0.0", "0.9"):
        message = "Malformed HTTP request: the request line has no HTTP version."
        return BadRequest(message, close=True)
    return BadRequest(
        f"HTTP/{version} is not supported on this connection: send HTTP/1.1.",
        status=505,
        close=True,
    )


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


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
        runtime_dir: str | None = None,
    ) -> None:
        """``runtime_dir``: where the private directory of the app's socket is made (a worker's
        supervisor removes its own at exit, even if the worker was killed); default: /tmp."""
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._grace = shutdown_timeout
        self._keepalive_s = keepalive_s
        self._runtime_dir = runtime_dir
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
        self._dir = tempfile.mkdtemp(
            prefix=f"workspace-proxy-front-{os.getpid()}-", dir=self._runtime_dir
        )
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
