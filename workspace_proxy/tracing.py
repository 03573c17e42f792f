"""Tracing's seam: what the rest of the proxy calls to trace, at no cost while tracing is off.

Tracing is opt-in (``Config.tracing``: the YAML block or the standard OTEL_* variables). When
it is off, nothing of OpenTelemetry is imported: ``app.Proxy.tracing`` is None, each request
tests that once (``exchange``, ``leg``), and the proxy's own Looker calls (``looker``) and pins
(``tokens``) look up one context variable, ``ACTIVE``, which is never set. When it is on,
``spans.Spans`` (the OpenTelemetry SDK) implements the protocols below:

- ``Tracer.call`` starts a request's span, continuing the caller's W3C ``traceparent``;
- ``CallTrace`` is that span: the leg opens and ends a child span for each trip to Looker and
  sends Looker its ``traceparent``; tasks the request runs (a session to pin, a connection to
  open, a local answer's Looker calls) run in ``CallTrace.context()``, where ``ACTIVE`` is the
  tracer and the request's span is the current span, so the pin and Looker calls they make
  are its children (``child``).

Spans carry bounded names and attributes only: never a token, a body or a header value.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from workspace_proxy.outcome import Outcome
    from workspace_proxy.reader import Request

T = TypeVar("T")
Attributes = Mapping[str, str | bool | int | float]

# Attribute names (OpenTelemetry's HTTP semantic conventions where they have one).
METHOD: Final = "http.request.method"
STATUS: Final = "http.response.status_code"
TEAM: Final = "workspace_proxy.team"
ROUTE: Final = "workspace_proxy.route"
BYTES_IN: Final = "workspace_proxy.bytes_in"
BYTES_OUT: Final = "workspace_proxy.bytes_out"
REPLAYED: Final = "workspace_proxy.replayed"
GENERATION: Final = "workspace_proxy.session.generation"
OUTCOME: Final = "workspace_proxy.outcome"
WORKSPACE: Final = "workspace_proxy.workspace"
REASON: Final = "workspace_proxy.pin.reason"
ATTEMPT: Final = "workspace_proxy.pin.attempt"


class Step(Protocol):
    """One child span as its code sees it."""

    def headers(self) -> Mapping[str, str]:
        """The W3C trace context headers that name this span (to send with a call)."""
        ...

    def answered(self, status: int) -> None:
        """The HTTP status a call got (4xx and 5xx mark the span as an error)."""
        ...

    def set(self, key: str, value: str | bool | int | float) -> None: ...


class CallTrace(Protocol):
    """A request's span (see the module docstring)."""

    recording: bool
    """The span is recorded (sampled); an unrecorded one costs as little as it can."""
    trace_id: str
    """Its W3C trace id (32 lowercase hex digits; the caller's when it sent a traceparent),
    written in the access line whether or not the span is recorded."""

    def context(self) -> contextvars.Context:
        """A new context where the tracer is ``ACTIVE`` and this span is the current one."""
        ...

    def upstream(self, method: bytes, route: str, generation: int | None, replay: bool) -> bytes:
        """Open the span of a trip to Looker; answer the header lines that carry it."""
        ...

    def upstream_end(self, status: int, kind: str | None = None) -> None:
        """End the open trip's span (status 0: no answer; ``kind``: why it failed). Once."""
        ...

    def finish(self, outcome: Outcome) -> None:
        """End the request's span with what its one outcome record says."""
        ...


class Tracer(Protocol):
    """One process's tracing (``spans.Spans``), owned by ``app.Proxy``."""

    def call(self, req: Request) -> CallTrace: ...

    def child(
        self, name: str, attributes: Attributes, *, client: bool
    ) -> AbstractContextManager[Step]:
        """A child span of the current one, current itself while the block runs; an exception
        leaving the block marks it as an error, named by the exception's ``kind`` (or class),
        never its message."""
        ...

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every ended span now (blocking: run it in a thread)."""
        ...

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking: run it in a thread)."""
        ...


ACTIVE: Final[contextvars.ContextVar[Tracer | None]] = contextvars.ContextVar(
    "workspace_proxy.tracing", default=None
)
"""The tracer, in the contexts of a traced request's tasks (``CallTrace.context``)."""


class _Off:
    """The step of a span not taken: every method does nothing."""

    __slots__ = ()
    _NONE: Final[Mapping[str, str]] = {}

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def headers(self) -> Mapping[str, str]:
        return self._NONE

    def answered(self, status: int) -> None:
        return None

    def set(self, key: str, value: str | bool | int | float) -> None:
        return None


OFF: Final = _Off()


def child(
    name: str, attributes: Attributes | None = None, *, client: bool = True
) -> AbstractContextManager[Step]:
    """A child span of the request being traced (``Tracer.child``); ``OFF`` when there is none:
    tracing is off, or this code does not run for a traced request."""
    tracer = ACTIVE.get()
    if tracer is None:
        return OFF
    return tracer.child(name, attributes or {}, client=client)


def within(trace: CallTrace | None, fn: Callable[[], T]) -> T:
    """``fn()``, in the request's tracing context when it is recorded (for work it starts that
    outlives the call, such as a background refresh, which is then its child)."""
    return fn() if trace is None or not trace.recording else trace.context().run(fn)
