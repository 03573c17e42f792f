"""One request, from its turn to the last byte of its answer: the I/O around the decision
(``decide``), the local answers (``local``) and the forwarding flow (``flow``), whose trips to
Looker are ``leg.Leg``s.

An exchange is a state machine (``Step``); the plain case — a decided forward whose pinned
session is ready and whose pooled connection is open — runs in callbacks without a task.
Anything that must wait (a passthrough token to verify, a session to pin, a connection to open,
a local answer's own Looker calls) runs as a task the exchange owns and cancels if the caller
leaves. Every end goes through ``_finish``: the slot is released and the one ``Outcome`` record
is written; every error answer goes through ``errors.answer`` (via ``Connection.refuse_request``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp
import structlog

from workspace_proxy.decide import SMALL_BODY, decide, decide_patch, decide_pinned
from workspace_proxy.decision import Act, Body, Decision, Forward, Local, Peer, Refuse, Resolve
from workspace_proxy.errors import (
    BadRequest,
    LookerUnavailable,
    ProxyError,
    TooManyRequests,
    outcome_of,
)
from workspace_proxy.flow import Flow, Replace, Send, Session, Slot, forward_flow
from workspace_proxy.http1 import QUEUE_BYTES, Connection, Request
from workspace_proxy.leg import Leg
from workspace_proxy.local import act, form_of, login
from workspace_proxy.outcome import Outcome
from workspace_proxy.reader import ANS_WAITING
from workspace_proxy.tracing import within

if TYPE_CHECKING:
    from workspace_proxy.app import Proxy
    from workspace_proxy.passthrough import Pinned
    from workspace_proxy.tracing import CallTrace

log = structlog.get_logger("workspace_proxy.exchange")
T = TypeVar("T")
_JSON: Final = b"Content-Type: application/json; charset=utf-8\r\n"


def too_large(limit: int) -> BadRequest:
    return BadRequest(f"Request body larger than {limit} bytes.", status=413, close=True)


class Step(enum.Enum):
    DECIDING = "deciding"
    """An async part of the decision runs (a passthrough token is opened or verified)."""
    READING = "reading"
    """A small body is read whole (login, PATCH /session, a replayable forward)."""
    LOCAL = "local"
    """A local answer's own Looker calls run."""
    SESSION = "session"
    """Waiting for a pinned session, or for one pinned in place of a rejected one."""
    CONNECTING = "connecting"
    SENT = "sent"
    """The request is out (its body may still stream); Looker's answer head is awaited."""
    STREAMING = "streaming"
    """The answer's head is out; its body streams to the caller."""
    DONE = "done"


# The members as module names too (Python 3.11 looks ``Step.SENT`` up anew at each use).
DECIDING: Final = Step.DECIDING
READING: Final = Step.READING
LOCAL: Final = Step.LOCAL
SESSION: Final = Step.SESSION
CONNECTING: Final = Step.CONNECTING
SENT: Final = Step.SENT
STREAMING: Final = Step.STREAMING
DONE: Final = Step.DONE


class Exchange:
    """See the module docstring."""

    def __init__(
        self,
        app: Proxy,
        conn: Connection,
        req: Request,
        peer: Peer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app = app
        self.view = app.view  # one config for the whole request, even across a reload
        self.conn = conn
        self.req = req
        self.peer = peer
        self.loop = loop
        self.outcome = Outcome(req.rid, req.head.method.decode("latin-1"), req.started)
        self.step = DECIDING
        self.forward: Forward | None = None
        self.flow: Flow | None = None
        self.local: Local | None = None
        self.body: list[bytes] = req.body
        self.buffered = req.body_bytes
        self.held = False
        """Reading from the caller is held: a body is buffered beyond QUEUE_BYTES."""
        self.leg: Leg | None = None
        self.recorded = False
        self.slot: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.trace: CallTrace | None = None
        """The request's span while tracing is on (``tracing``); None otherwise."""

    # --- decision -----------------------------------------------------------------------------
    def start(self) -> None:
        self.outcome.bytes_in = self.buffered
        tracing = self.app.tracing
        if tracing is not None:
            self.trace = tracing.call(self.req)
            self.outcome.trace_id = self.trace.trace_id
        self._decided(decide(self.req.head, self.peer, self.view.policy))

    def _decided(self, decision: Decision) -> None:
        if isinstance(decision, Refuse):
            self._fail(decision.error)
        elif isinstance(decision, Forward):
            self._forward(decision)
        elif isinstance(decision, Local):
            self._local(decision)
        else:
            self._resolve(decision)

    def _resolve(self, resolve: Resolve) -> None:
        passthrough = self.view.passthrough
        assert passthrough is not None
        self.outcome.route = resolve.route.name

        def resolved(pinned: Pinned) -> None:
            self.outcome.team = pinned.team.name
            head, peer, policy = self.req.head, self.peer, self.view.policy
            self._decided(decide_pinned(head, peer, policy, resolve, pinned))

        try:
            known = passthrough.ready(resolve.token)
        except ProxyError as exc:
            self._fail(exc)
            return
        if known is not None:
            resolved(known)
            return
        self.step = DECIDING
        self.run(passthrough.resolve(resolve.token), resolved)

    # --- local answers ------------------------------------------------------------------------
    def _local(self, local: Local) -> None:
        self.local = local
        self.outcome.route = local.route
        self.outcome.team = local.team or self.outcome.team
        if local.reads_body:
            self.step = READING
            self.conn.interim_continue(self.req)  # the decision is made: the body may come
            if self.req.complete:
                self._body_read()
            return
        self.step = LOCAL
        self.run(act(self.view, local), self._local_done)

    def _body_read(self) -> None:
        if self.leg is not None:  # a replayable forward waited for its body
            self.step = CONNECTING
            self.leg.go(self.leg.session)
            return
        local = self.local
        assert local is not None
        body = b"".join(self.body)
        if local.act is Act.PATCH_SESSION:
            team = self.view.config.teams[local.team or ""]
            assert local.then is not None
            self._decided(decide_patch(body, team, local.then))
            return
        try:
            fields = form_of(body, local.query, self._header(b"content-type"))
        except ProxyError as exc:
            self._fail(exc)
            return
        self.step = LOCAL

        def logged_in(result: tuple[tuple[int, bytes | None], str | None]) -> None:
            self.outcome.team = result[1]
            self._local_done(result[0])

        self.run(login(self.view, fields, self.req.rid), logged_in)

    def _local_done(self, answer: tuple[int, bytes | None]) -> None:
        local = self.local
        if local is not None and local.then is not None:  # a passthrough logout: now Looker's
            self._forward(local.then)
            return
        status, body = answer
        length = None if body is None and status == 204 else len(body or b"")
        self.outcome.status = status
        self.conn.answer_head(self.req, status, b"", [_JSON] if body else [], length)
        self._end(body or b"")

    def _header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.req.head.headers if n.lower() == name), None)

    # --- forwarding ---------------------------------------------------------------------------
    def _forward(self, forward: Forward) -> None:
        self.forward = forward
        self.outcome.route = forward.route
        self.outcome.team = forward.team or self.outcome.team
        self.flow = forward_flow(forward)
        self._advance(None)

    def _advance(self, value: object) -> None:
        """Give the flow what it asked for; do what it asks next."""
        assert self.flow is not None
        try:
            need = self.flow.send(value)
        except StopIteration:
            assert self.leg is not None
            self.step = STREAMING
            self.outcome.status = self.leg.status
            self.leg.pass_head()
            return
        except ProxyError as exc:
            self._fail(exc)
            return
        if isinstance(need, Slot):
            self._take_slot(need.team)
        elif isinstance(need, Session):
            provider = self.view.provider(need.key)
            trace = self.trace  # (a refresh it starts is the recorded request's child)
            if trace is None or not trace.recording:
                session = provider.ready()
            else:
                session = within(trace, provider.ready)
            if session is not None:
                self._advance(session)
            else:
                self.step = SESSION
                self.run(provider.get(), self._advance)
        elif isinstance(need, Send):
            self._send(need)
        else:
            assert isinstance(need, Replace)
            self._drop_leg()  # the rejected answer is discarded with its connection
            self.step = SESSION
            self.run(self.view.provider(need.key).replace(need.stale), self._advance)

    def _take_slot(self, name: str) -> None:
        team = self.view.config.teams[name]
        if not self.app.take_slot(team):
            self._fail(
                TooManyRequests(
                    f"workspace-proxy: team {name!r} already has {self.app.in_flight[name]} "
                    f"requests in flight (limit {team.max_concurrency}).",
                    headers={"Retry-After": "1"},
                )
            )
            return
        self.slot = name
        self._advance(None)

    def _send(self, need: Send) -> None:
        forward = self.forward
        assert forward is not None
        session = need.session
        if session is not None:
            self.outcome.session = f"{session.generation}:{session.fingerprint}"
        if need.replay:
            self.outcome.replayed = True
            self.app.metrics.replays.labels(self.outcome.team or "-").inc()
        self.leg = Leg(self, forward, self.app.pool)
        self.leg.session = session
        if forward.body is Body.BUFFER and not self.req.complete:
            self.step = READING  # a replayable body is read whole first
            self.conn.interim_continue(self.req)
            return
        self.step = CONNECTING
        self.leg.go(session)

    def sent(self) -> None:
        """The request is on its way to Looker (called by the leg)."""
        self.step = SENT

    # --- the caller's body --------------------------------------------------------------------
    def body_data(self, chunk: bytes) -> None:
        self.outcome.bytes_in += len(chunk)
        forward = self.forward
        if forward is not None and forward.body is Body.STREAM:
            limit = self.view.config.limits.max_request_body_bytes
            if self.outcome.bytes_in > limit:
                self._fail(too_large(limit))
                return
            streaming = self.leg is not None and self.step in (SENT, STREAMING)
            if streaming and self.leg is not None and self.leg.body(chunk):
                return
        self.body.append(chunk)
        self.buffered += len(chunk)
        if self.local is not None and self.forward is None and self.buffered > SMALL_BODY:
            self._fail(too_large(SMALL_BODY))
            return
        if not self.held and self.buffered > QUEUE_BYTES:
            self.held = True
            self.conn.hold()

    def unhold(self) -> None:
        if self.held:
            self.held = False
            self.conn.unhold()

    def body_complete(self) -> None:
        if self.leg is not None and self.step in (SENT, STREAMING):
            self.leg.body_end()
        if self.step is READING:
            self._body_read()

    # --- what the leg reports -----------------------------------------------------------------
    def looker_answered(self, status: int) -> None:
        if self.step is SENT:
            self._advance(status)

    def looker_done(self) -> None:
        if self.step is STREAMING:
            self._end(b"")

    def looker_failed(self, error: ProxyError) -> None:
        self._fail(error)

    def looker_cut(self, kind: str) -> None:
        self._cut(kind)

    def flush_upstream(self) -> None:
        """Send Looker what this read of the caller's bytes produced (they all parsed)."""
        if self.leg is not None:
            self.leg.flush()

    def pause_upstream(self) -> None:
        if self.leg is not None:
            self.leg.pause_upstream()

    def resume_upstream(self) -> None:
        if self.leg is not None:
            self.leg.resume_upstream()

    # --- time, tasks, ends --------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.leg is not None:
            self.leg.tick(now)

    def run(self, work: Coroutine[Any, Any, T], then: Callable[[T], None]) -> None:
        """Run ``work`` as the exchange's task; ``then`` gets its result, errors end the
        request with their answer."""
        trace = self.trace
        if trace is None:
            task = self.loop.create_task(work)
        else:  # its pins and Looker calls are the request's child spans
            task = self.loop.create_task(work, context=trace.context())
        self.task = task

        def landed(done: asyncio.Task[T]) -> None:
            if self.task is done:
                self.task = None
            if done.cancelled() or self.step is DONE:
                return
            error = done.exception()
            if error is None:
                then(done.result())
            elif isinstance(error, ProxyError):
                self._fail(error)
            elif isinstance(error, TimeoutError):
                self._fail(LookerUnavailable(status=504, kind="connect_timeout"))
            elif isinstance(error, OSError | aiohttp.ClientError):
                rid = self.req.rid
                log.warning("upstream_error", error=error.__class__.__name__, request_id=rid)
                self._fail(LookerUnavailable(kind="connect"))
            else:
                log.error("exchange_failed", exc_info=error, request_id=self.req.rid)
                self._fail(ProxyError())

        task.add_done_callback(landed)

    def lost(self, error: ProxyError | None) -> None:
        """The caller left (or stalled: ``error`` is its answer)."""
        if self.step is DONE:
            return
        self._stop_work()
        if error is not None and self.req.ans is ANS_WAITING:
            self._fail(error)
            return
        self.outcome.kind = self.outcome.kind or "caller_gone"
        self._finish()
        self.answered()

    def cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def _stop_work(self) -> None:
        self.cancel_task()
        self._drop_leg()

    def _drop_leg(self) -> None:
        if self.leg is not None:
            self.leg.drop()

    def _fail(self, error: ProxyError) -> None:
        if self.step is DONE:
            return
        self._stop_work()
        self.outcome.kind = outcome_of(error)
        if self.req.ans is not ANS_WAITING:
            self._cut(self.outcome.kind)
            return
        self.outcome.status = error.status
        self._finish()
        self.conn.refuse_request(self.req, error)

    def _cut(self, kind: str) -> None:
        self.outcome.kind = kind
        self._stop_work()
        self._finish()
        self.conn.cut(self.req)
        self.answered()

    def _end(self, body: bytes) -> None:
        if body:
            self.conn.answer_body(self.req, body)
        self._finish()
        self.conn.answer_end(self.req)

    def _finish(self) -> None:
        """Free what the exchange holds (its slot first, for the next request's sake); the
        outcome is written once the answer is out (``answered``)."""
        self.step = DONE
        self.unhold()
        leg, self.leg = self.leg, None  # (the leg refers back: no cycle left for the collector)
        if leg is not None:
            leg.resume_caller()
        if self.slot is not None:
            self.app.release_slot(self.slot)
            self.slot = None

    def answered(self) -> None:
        """The answer is out (or never will be): write the request's one outcome record."""
        if self.recorded:
            return
        self.recorded = True
        self.outcome.bytes_out = self.req.bytes_out
        self.outcome.finish(self.app.metrics)
        if self.trace is not None:
            self.trace.finish(self.outcome)
