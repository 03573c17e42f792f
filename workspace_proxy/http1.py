"""One caller's HTTP/1.1 connection as a state machine, without I/O of its own.

The transport feeds it the bytes it reads (``receive``) and the time (``tick``); it writes and
closes through the ``Wire`` it was given and tells its ``Exchanges`` when a request's turn comes,
when body bytes of that request arrive and when it is complete. Answers are written through it
(``answer_head``, ``answer_body``, ``answer_end``, ``refuse``), strictly in request order, with
its own framing (Content-Length, chunks, or until close for HTTP/1.0) and keep-alive decision.

Bytes become requests in ``reader`` (llhttp, and the limits llhttp does not apply). At most
``QUEUE_REQUESTS`` requests or ``QUEUE_BYTES`` of heads and bodies are read ahead of the one
being answered; reading pauses beyond that.

Connection states (``Conn``): ``OPEN`` reads and answers; ``CLOSING`` reads nothing more and
closes once its answers are out; ``LINGERING`` answered before the caller finished sending and
discards what still comes for ``LINGER_S`` (closing with unread bytes would reset the
connection, and the caller would see the reset instead of the answer); ``CLOSED``.
Requests (``reader.Req``): ``HEAD`` being parsed, ``BODY`` arriving, ``COMPLETE``. Answers
(``reader.Ans``): ``WAITING``, ``STREAMING`` (head out), ``DONE``.
"""

from __future__ import annotations

import enum
from collections import deque
from http import HTTPStatus
from typing import Final, Protocol

from workspace_proxy.config import Limits
from workspace_proxy.errors import BadRequest, ProxyError, answer
from workspace_proxy.outcome import request_id
from workspace_proxy.reader import (
    ANS_DONE,
    ANS_STREAMING,
    ANS_WAITING,
    REQ_BODY,
    Ans,
    Reader,
    Req,
    Request,
)

__all__ = ["Ans", "Conn", "Connection", "Exchanges", "Req", "Request", "Wire"]
QUEUE_BYTES: Final = 256 * 1024
"""Pipelined heads and bodies read ahead of the request being answered, at most."""
QUEUE_REQUESTS: Final = 16
"""Pipelined requests read ahead of the one being answered, at most."""
LINGER_S: Final = 2.0
KEEPALIVE_S: Final = 75.0
"""Idle connections, unfinished heads and callers that stop reading are cut after this."""
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


class Conn(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    LINGERING = "lingering"
    CLOSED = "closed"


# The members as module names too: on Python 3.11 every ``Class.MEMBER`` is a fresh
# attribute lookup (3.12 caches it), and the transport checks states many times per call.
OPEN: Final = Conn.OPEN
CLOSING: Final = Conn.CLOSING
LINGERING: Final = Conn.LINGERING
CLOSED: Final = Conn.CLOSED


class Wire(Protocol):
    """The transport's side: what the connection may do to its socket."""

    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes]) -> None: ...
    def flush(self) -> None:
        """Send what was written so far now (else it goes at the end of this loop turn)."""
        ...

    @property
    def batching(self) -> bool:
        """Inside a read of the caller's bytes: what is written goes out when it ends."""
        ...

    def begin(self) -> None:
        """Hold writes until ``end`` (a read of Looker's bytes), then send them at once."""
        ...

    def end(self) -> None: ...

    def half_close(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Exchanges(Protocol):
    """Who answers the requests (``exchange``): told in request order."""

    def turn(self, request: Request) -> None: ...
    def body(self, request: Request, chunk: bytes) -> None: ...
    def complete(self, request: Request) -> None: ...
    def lost(self, request: Request, error: ProxyError | None) -> None:
        """The request cannot go on: the caller left, or ``error`` is the answer it gets (a
        stalled body); nothing more may be written for it but that answer."""
        ...

    def answered(self, request: Request) -> None:
        """The answer of ``request`` is out (before the next request's turn)."""
        ...

    def refused(self, rid: str, status: int, size: int) -> None:
        """Bytes that never made a request were answered (``status``, ``size`` body bytes)."""
        ...


class Connection:
    """See the module docstring."""

    def __init__(
        self, wire: Wire, exchanges: Exchanges, limits: Limits, now: float, *, keepalive_s: float
    ) -> None:
        self.wire = wire
        self.exchanges = exchanges
        self.state = OPEN
        self.keepalive_s = keepalive_s
        self.body_idle_s = limits.body_idle_timeout_s
        self.body_total_s = limits.body_timeout_s
        self.reader = Reader(self, limits)
        self.queue: deque[Request] = deque()
        """Requests whose head is complete, oldest (the one being answered) first."""
        self.refusal: ProxyError | None = None
        """An answer to bytes that could not be parsed, due once the requests before them are."""
        self.paused = False
        self.idle_since = now
        self.full_since = 0.0
        """When writing to the caller had to pause; 0 while it reads."""
        self.linger_until = 0.0
        self.holds = 0
        """Reasons, other than the pipelining bound, not to read now (Looker is slow to take
        the body the caller sends)."""
        self._now = now

    # --- input ----------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> None:
        if self.state is not OPEN:
            return  # lingering: the rest of a body we already answered is discarded
        self._now = now
        try:
            upgraded = self.reader.feed(data, now)
        except ProxyError as exc:
            self.refuse(exc)
            return
        if upgraded:
            # CONNECT or Upgrade: answered as a plain request, never switched; what follows may
            # be another protocol, so nothing more is read.
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.state is OPEN:
            self.state = CLOSING
        self.paused = True
        self.wire.pause_reading()
        if not self.queue:
            self._close()

    # --- reader.Sink ------------------------------------------------------------------------
    def headed(self, req: Request) -> None:
        self.queue.append(req)
        if len(self.queue) == 1:
            self.exchanges.turn(req)
        else:
            self._bound_queue()

    def body(self, req: Request, chunk: bytes) -> None:
        if self.queue and self.queue[0] is req:
            self.exchanges.body(req, chunk)
        else:
            req.body.append(chunk)
            self._bound_queue()

    def completed(self, req: Request) -> None:
        if self.queue and self.queue[0] is req:
            self.exchanges.complete(req)

    def _bound_queue(self) -> None:
        """Stop reading while what the caller pipelined ahead is more than one connection may
        hold; reading resumes as answers go out."""
        if self.paused:
            return
        held = sum(len(r.head.target) + r.head_bytes + r.body_bytes for r in self.queue)
        if held > QUEUE_BYTES or len(self.queue) > QUEUE_REQUESTS:
            self.paused = True
            self.wire.pause_reading()

    # --- output -------------------------------------------------------------------------------
    def interim_continue(self, req: Request) -> None:
        """``100 Continue`` for the request being answered, if it asked and still sends."""
        if req.expect and req.state is REQ_BODY and req.ans is ANS_WAITING and self._live(req):
            req.expect = False
            self.wire.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def answer_head(
        self,
        req: Request,
        status: int,
        reason: bytes,
        lines: list[bytes],
        length: int | None,
        *,
        close: bool = False,
    ) -> None:
        """Start the answer of ``req`` (the oldest): status line, ``lines`` (header lines, each
        ending in CRLF), X-Request-Id and the framing; the body follows."""
        assert req.ans is ANS_WAITING
        assert self.queue[0] is req
        req.ans = ANS_STREAMING
        req.status = status
        bodyless = req.head.method == b"HEAD" or status in (204, 304)
        req.bodyless = bodyless
        # The connection closes after this answer when the caller or the error asks, when the
        # request is not all read, or when it stops taking requests and this is its last answer
        # (a refusal still due after it is written with its own Connection: close).
        last = len(self.queue) == 1 and self.refusal is None
        close = close or not req.keep_alive or not req.complete or (self.state is not OPEN and last)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _phrase(status)), *lines]
        out.append(b"X-Request-Id: %s\r\n" % req.rid.encode())
        if length is not None:
            out.append(b"Content-Length: %d\r\n" % length)
        elif not bodyless:
            if req.head.version == "1.1":
                req.chunked_out = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                close = True
        if close:
            out.append(b"Connection: close\r\n")
            req.keep_alive = False
        out.append(_CRLF)
        if self._live(req):
            self.wire.writelines(out)

    def answer_body(self, req: Request, data: bytes) -> None:
        if not self._live(req) or not data or req.bodyless:
            return
        req.bytes_out += len(data)
        if req.chunked_out:
            self.wire.writelines([b"%x\r\n" % len(data), data, _CRLF])
        else:
            self.wire.write(data)

    def answer_end(self, req: Request) -> None:
        """The answer of ``req`` is complete: the next request's turn, or close."""
        if req.chunked_out and self._live(req):
            self.wire.write(_LAST_CHUNK)
        self._done(req)

    def refuse_request(self, req: Request, error: ProxyError) -> None:
        """Answer ``req`` with the Looker-shaped error (it must not have started answering)."""
        status, extra, body = answer(error)
        lines = [*extra, b"Content-Type: application/json; charset=utf-8\r\n"]
        close = bool(getattr(error, "close", False))
        self.answer_head(req, status, b"", lines, len(body), close=close)
        self.answer_body(req, body)
        self._done(req)

    def cut(self, req: Request) -> None:
        """The answer's head is out and its body cannot be finished: cutting the connection is
        the only honest signal left (a truncated body never passes for a whole one)."""
        req.ans = ANS_DONE
        self.state = CLOSED
        self.wire.abort()

    def _live(self, req: Request) -> bool:
        return self.state is not CLOSED and bool(self.queue) and self.queue[0] is req

    def _done(self, req: Request) -> None:
        req.ans = ANS_DONE
        self.exchanges.answered(req)
        if not self.queue or self.queue[0] is not req:
            return
        self.queue.popleft()
        if self.state is CLOSED:
            return
        if not req.keep_alive:
            self.queue.clear()
            self._close(unread=not req.complete)
            return
        if self.refusal is not None and not self.queue:
            self._write_refusal()
            return
        if self.state is CLOSING and not self.queue:
            self._close()
            return
        self.idle_since = self._now
        if self.paused and self.state is OPEN:
            self.paused = False
            if not self.holds:
                self.wire.resume_reading()
        if self.queue:
            self.exchanges.turn(self.queue[0])

    # --- refusals -----------------------------------------------------------------------------
    def refuse(self, error: ProxyError) -> None:
        """Answer bytes that could not be parsed (or were refused), then close. Complete
        requests before them are answered first, in order; the one they belong to is not."""
        self.refusal = error
        self.state = CLOSING
        self.paused = True
        self.wire.pause_reading()
        self.reader.parsing = None
        current = self.queue[0] if self.queue else None
        if current is not None and not current.complete:
            # The refused bytes are part of the request being answered.
            self.queue = deque([current])
            self.exchanges.lost(current, error if current.ans is ANS_WAITING else None)
            return
        self.queue = deque(r for r in self.queue if r.complete)
        if not self.queue:
            self._write_refusal()

    def _write_refusal(self) -> None:
        error, self.refusal = self.refusal, None
        if error is None or self.state is CLOSED:
            return
        status, extra, body = answer(error)
        rid = request_id(None)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status)), *extra]
        out.append(b"Content-Type: application/json; charset=utf-8\r\n")
        out.append(b"Content-Length: %d\r\nX-Request-Id: %s\r\n" % (len(body), rid.encode()))
        out += (b"Connection: close\r\n\r\n", body)
        self.wire.writelines(out)
        self.exchanges.refused(rid, status, len(body))
        self._close()

    def _close(self, *, unread: bool = False) -> None:
        if self.state is CLOSED:
            return
        if unread and self.wire.half_close():
            self.state = LINGERING
            self.linger_until = self._now + LINGER_S
            self.paused = False
            self.wire.resume_reading()
            return
        self.state = CLOSED
        self.wire.close()

    # --- time and flow control ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Timeouts, about once a second: linger end, a caller that stopped reading, a body that
        stalls or trickles past its deadline, an idle connection or an unfinished head."""
        self._now = now
        if self.state is LINGERING:
            if now >= self.linger_until:
                self.state = CLOSED
                self.wire.close()
            return
        if self.state is CLOSED:
            return
        current = self.queue[0] if self.queue else None
        if self.full_since and now - self.full_since >= self.keepalive_s:
            # The caller stopped reading its answer: free what it holds.
            self.state = CLOSED
            self.wire.abort()
            if current is not None:
                self.exchanges.lost(current, None)
            return
        if current is not None:
            if (
                current.state is REQ_BODY
                and current.ans is ANS_WAITING
                and (
                    now - current.body_seen >= self.body_idle_s
                    or now - current.head_seen >= self.body_total_s
                )
            ):
                error = BadRequest(
                    "workspace-proxy: the request body did not arrive in time.",
                    status=408,
                    close=True,
                )
                self.exchanges.lost(current, error)
            return
        if now - self.idle_since >= self.keepalive_s:
            self.state = CLOSED
            self.wire.close()  # idle, or never finished its request's head

    def hold(self) -> None:
        """Stop reading until ``unhold`` (the body being forwarded cannot go out yet)."""
        self.holds += 1
        if self.holds == 1 and not self.paused:
            self.wire.pause_reading()

    def unhold(self) -> None:
        self.holds = max(0, self.holds - 1)
        if not self.holds and not self.paused and self.state in (OPEN, LINGERING):
            self.wire.resume_reading()

    def writing_paused(self, now: float) -> None:
        self.full_since = now

    def writing_resumed(self) -> None:
        self.full_since = 0.0

    def lost(self) -> None:
        """The caller's connection is gone."""
        self.state = CLOSED
        self.reader.close()
        current = self.queue[0] if self.queue else None
        self.queue.clear()
        if current is not None and current.ans is not ANS_DONE:
            self.exchanges.lost(current, None)

    def draining(self) -> bool:
        """Stop taking requests (shutdown): True when the connection can close right away."""
        if self.state is OPEN:
            self.state = CLOSING
        if not self.queue:
            self._close()
            return True
        return False


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
