"""One request's trip to Looker and back (an ``upstream.Receiver``): a pooled or new connection,
the request decided on (head, the pinned session's Authorization, the body as buffered or as it
streams, re-framed), Looker's answer passed to the caller with its headers filtered
(``headers.passes_downstream``) and our own framing, back-pressure both ways, a kept-alive
connection Looker had closed retried once for idempotent calls, and Looker's read timeout.
What the answer means (pass it on, or re-pin and replay) is the forwarding flow's to say: the
leg hands the status to its ``Exchange``."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Final

import structlog

from workspace_proxy import headers
from workspace_proxy.config import Secret
from workspace_proxy.decision import BODY_NONE, BODY_STREAM, Forward
from workspace_proxy.errors import LookerUnavailable
from workspace_proxy.looker import auth_header
from workspace_proxy.session import PinnedSession
from workspace_proxy.upstream import Pool, Upstream

if TYPE_CHECKING:
    from workspace_proxy.exchange import Exchange

log = structlog.get_logger("workspace_proxy.leg")
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
"""Methods sent once more on a new connection when a kept-alive one died before answering
(RFC 9110 9.2.2); anything else might have been acted on, so its caller gets the 502."""
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


@functools.lru_cache(maxsize=1024)
def _authorization(token: str) -> bytes:
    """The pinned session's Authorization line (sessions are few and long-lived)."""
    return b"Authorization: %s\r\n" % auth_header(Secret(token)).encode()


class Leg:
    """See the module docstring."""

    def __init__(self, exchange: Exchange, forward: Forward, pool: Pool) -> None:
        self.exchange = exchange
        self.forward = forward
        self.pool = pool
        self.loop = pool.loop
        self.conn = exchange.conn
        self.req = exchange.req
        self.upstream: Upstream | None = None
        self.session: PinnedSession | None = None
        self.attempts = 0
        self.reused = False
        self.status = 0
        self.body_sent = 0
        self.connecting = False
        self.connect_started = 0.0
        self.connect_timed_out = False
        self.up_held = False
        """Reading from the caller is held: Looker does not take the body as fast."""
        self.up_paused = False
        """Reading from Looker is paused: the caller does not take the answer as fast."""
        # upstream.Receiver
        self.head_out = False
        self.asked_head = self.req.head.method == b"HEAD"
        self.seen = 0.0
        self.sent_at = 0.0
        self.trace = exchange.trace
        self.traced = b""
        """The lines that name this trip's span to Looker (``traceparent``) while tracing."""

    # --- sending ------------------------------------------------------------------------------
    def go(self, session: PinnedSession | None) -> None:
        """Send the request under ``session`` on a pooled connection, or a new one."""
        self.session = session
        if self.trace is not None:
            generation = None if session is None else session.generation
            replay = self.exchange.outcome.replayed
            self.traced = self.trace.upstream(
                self.req.head.method, self.forward.route, generation, replay
            )
        conn = self.pool.take()
        if conn is not None:
            self._attach(conn)
            return
        self.connecting = True
        self.connect_started = self.loop.time()
        self.exchange.run(self._connect(), self._attach)

    async def _connect(self) -> Upstream:
        try:
            return await self.pool.connect()
        except asyncio.CancelledError:
            if not self.connect_timed_out:
                raise
            raise TimeoutError from None  # cancelled by ``tick``: connect_s has passed

    def _attach(self, conn: Upstream) -> None:
        forward, exchange = self.forward, self.exchange
        self.connecting = False
        self.upstream = conn
        self.attempts += 1
        self.reused = conn.used
        self.seen = self.sent_at = self.loop.time()
        exchange.sent()
        session = self.session
        auth = b"" if session is None else _authorization(session.token.reveal())
        data = (
            [forward.head, auth, self.traced, _CRLF] if self.traced else [forward.head, auth, _CRLF]
        )
        if forward.body is not BODY_NONE:
            data += self._framed(exchange.body)
            self.body_sent = exchange.buffered
            if forward.body is BODY_STREAM:
                exchange.body = []
                if self.req.complete and forward.chunked:
                    data.append(_LAST_CHUNK)
        conn.attach(self, data)
        if not self.conn.wire.batching:  # else it goes once the caller's bytes all parsed
            conn.flush()
        if self.conn.full_since:  # the caller is not reading what it was sent yet
            self.pause_upstream()
        if forward.body is BODY_STREAM and not self.req.complete:
            self.conn.interim_continue(self.req)
            exchange.unhold()

    def _framed(self, chunks: list[bytes]) -> list[bytes]:
        if not self.forward.chunked:
            return chunks
        out: list[bytes] = []
        for chunk in chunks:
            if chunk:
                out += (b"%x\r\n" % len(chunk), chunk, _CRLF)
        return out

    def body(self, chunk: bytes) -> bool:
        """Stream a body chunk now; False when there is no connection to stream it to yet."""
        if self.upstream is None:
            return False
        self.upstream.send(self._framed([chunk]))
        self.body_sent += len(chunk)
        if not self.conn.wire.batching:
            self.upstream.flush()
        return True

    def body_end(self) -> None:
        if self.upstream is not None and self.forward.chunked:
            self.upstream.send([_LAST_CHUNK])
            if not self.conn.wire.batching:
                self.upstream.flush()

    def flush(self) -> None:
        if self.upstream is not None:
            self.upstream.flush()

    def drop(self) -> None:
        """Give the connection up (its state is unknown, or its answer is discarded)."""
        if self.trace is not None:
            self.trace.upstream_end(self.status)
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.drop()

    # --- Looker's answer (upstream.Receiver) ----------------------------------------------------
    def upstream_head(self, status: int, conn: Upstream) -> None:
        team = self.exchange.outcome.team
        if team is not None:
            self.exchange.app.metrics.upstream_answered(team, self.loop.time() - self.sent_at)
        self.status = status
        self.exchange.looker_answered(status)

    def pass_head(self) -> None:
        """Looker's answer head for the caller: its headers minus hop-by-hop ones and those its
        Connection header names, our own request id and framing."""
        conn = self.upstream
        assert conn is not None
        lines: list[bytes] = []
        named = headers.named_beyond_hop_by_hop(tuple(conn.connection)) if conn.connection else ()
        if named:
            for name, value in conn.headers:
                if headers.passes_downstream(name, named):
                    lines += (name, b": ", value, _CRLF)
        else:
            for name, value in conn.headers:  # (hop-by-hop ones were never kept)
                lines += (name, b": ", value, _CRLF)
        length = int(conn.length) if conn.length is not None and not conn.chunked else None
        self.head_out = True
        self.conn.answer_head(self.req, self.status, conn.reason, lines, length)

    def upstream_body(self, data: bytes) -> None:
        if self.head_out:
            self.conn.answer_body(self.req, data)

    def upstream_begin(self) -> None:
        self.conn.wire.begin()

    def upstream_end(self) -> None:
        self.conn.wire.end()

    def upstream_done(self, conn: Upstream) -> None:
        self.upstream = None
        if self.trace is not None:
            self.trace.upstream_end(self.status)
        if not self.req.complete or self.body_sent < (self.forward.length or 0):
            conn.reusable = False  # Looker answered before the whole body was sent
        if self.up_paused:
            self.up_paused = False
            conn.transport.resume_reading()
        conn.pool.give_back(conn)
        if self.head_out:
            self.exchange.looker_done()

    def upstream_lost(self, conn: Upstream) -> None:
        self.upstream = None
        if self.trace is not None:
            self.trace.upstream_end(self.status, "upstream_broken")
        if (
            not self.head_out
            and self.reused
            and self.attempts < 2
            and self.req.complete
            and self.req.head.method in _IDEMPOTENT
        ):
            # A kept-alive connection Looker had closed: nothing was answered; once more.
            self.go(self.session)
            return
        if not self.head_out:
            self.exchange.looker_failed(LookerUnavailable(kind="upstream_broken"))
            return
        log.warning("upstream_stream_broken", request_id=self.req.rid)
        self.exchange.looker_cut("upstream_broken")

    # --- back-pressure and time ---------------------------------------------------------------
    def pause_caller(self) -> None:
        if not self.up_held:
            self.up_held = True
            self.conn.hold()

    def resume_caller(self) -> None:
        if self.up_held:
            self.up_held = False
            self.conn.unhold()

    def pause_upstream(self) -> None:
        if self.upstream is not None and not self.up_paused:
            self.up_paused = True
            self.upstream.transport.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None and self.up_paused:
            self.up_paused = False
            self.upstream.transport.resume_reading()

    def tick(self, now: float) -> None:
        """Timeouts: opening a connection to Looker, and Looker going quiet for longer than
        ``looker.timeouts.read_s``."""
        backend = self.exchange.view.backend
        if self.connecting:
            if backend.connect_s and now - self.connect_started >= backend.connect_s:
                self.connect_timed_out = True
                self.exchange.cancel_task()
            return
        if self.upstream is None or not backend.read_s or now - self.seen < backend.read_s:
            return
        if self.trace is not None:
            self.trace.upstream_end(self.status, "upstream_timeout")
        self.drop()
        if self.head_out:
            self.exchange.looker_cut("upstream_timeout")
        else:
            self.exchange.looker_failed(LookerUnavailable(status=504, kind="upstream_timeout"))
