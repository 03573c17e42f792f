"""One record per request: filled in as the call proceeds, written once at its end as the access
line and the request metrics (``finish``). Also the request id (the caller's sane
``X-Request-Id``, else a new one)."""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Final

from workspace_proxy.log import access
from workspace_proxy.metrics import Metrics

_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ID_PREFIX: Final = os.urandom(8).hex()
_ID_COUNTER: Final = itertools.count()


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class Outcome:
    """What the access line and the metrics say about one request."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "kind",
        "method",
        "replayed",
        "rid",
        "route",
        "session",
        "started",
        "status",
        "team",
        "trace_id",
    )

    def __init__(self, rid: str, method: str, started: float) -> None:
        self.rid = rid
        self.method = method
        self.started = started
        """perf_counter when the head was complete."""
        self.team: str | None = None
        self.route = "-"
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.session: str | None = None
        """``generation:fingerprint`` of the Looker session used; never a token."""
        self.replayed = False
        self.kind: str | None = None
        self.trace_id: str | None = None
        """The W3C trace id of the request's span while tracing is on (logs meet traces)."""
        """Why the call ended as it did, when not simply answered (``caller_gone``, ...)."""

    def finish(self, metrics: Metrics) -> None:
        """Count the request and write its access line: once, at its end."""
        status = self.status or 502
        metrics.request_done(self.team or "-", self.route, status)
        access(
            request_id=self.rid,
            team=self.team,
            method=self.method,
            route=self.route,
            status=status,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            session=self.session,
            replayed=self.replayed,
            outcome=self.kind,
            trace_id=self.trace_id,
        )
