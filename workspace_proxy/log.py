"""Logging: structlog configured once (by the CLI), JSON lines off a terminal, secrets redacted.

``redact_secrets`` is the last line of defence: values under secret-looking keys are masked and
any proxy token (signed ``wp1.`` or sealed ``wp2.``), ``token X``/``Bearer X`` credential or
``client_secret=`` pair inside a string is cut out, whatever logged it (our code, aiohttp or a
library).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from json import dumps
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRET_KEYS: Final = re.compile(
    r"(authorization|secret|password|access_token|^token$|signing_key|cookie)", re.IGNORECASE
)
_SECRET_TEXT: Final = re.compile(
    r"(?i)(\b(?:token|bearer)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bwp1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
    r"|\bwp2\.[A-Za-z0-9_-]{8,}"
    r"|((?:client_secret|access_token|client_id)=)[^&\s\"']+"
)
MASK: Final = "[redacted]"
_BATCH_BYTES: Final = 64 * 1024


def _scrub(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        prefix = m.group(1) or m.group(2) or ""
        return prefix + MASK

    return _SECRET_TEXT.sub(repl, text)


def redact_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Mask secret-looking keys and credential-looking substrings in every log event."""
    _redact(event)
    return event


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    return key != "event" and _SECRET_KEYS.search(key) is not None


def _redact(event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(key, str) and _secret_key(key):
            event[key] = MASK
        elif isinstance(value, str):
            # Every pattern needs whitespace, "=" or ".": letters and digits alone never match.
            if not value.isalnum():
                event[key] = _scrub(value)
        elif isinstance(value, dict):
            event[key] = _redact(dict(value))
        elif isinstance(value, list | tuple):
            event[key] = [_scrub(v) if isinstance(v, str) else v for v in value]
    return event


@functools.lru_cache(maxsize=4096)
def _json_text(value: str) -> str:
    """A JSON string literal; cached, for the bounded values of the access line."""
    return dumps(value)


class _AccessLog:
    """The per-request line. In JSON mode it is written directly — same fields, same redaction,
    one string and one (batched) write — because structlog's processor chain, and even one
    ``json.dumps`` of the whole line, run for every request, were the largest single costs of a
    proxied call. Every value but the request id comes from a bounded, validated set (team and
    route names, methods, status, session fingerprint, outcome kind) and is JSON-encoded once
    and cached; the request id is ``[A-Za-z0-9._:-]`` (``outcome.request_id``), which JSON needs
    no escaping for, and is scrubbed like any other text. Elsewhere the line goes through
    structlog."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self.static: dict[str, Any] = {}
        self.enabled = True
        self.batch_s: float | None = None
        """Write lines in batches at most this old (None: each line at once)."""
        self._batch: list[str] = []
        self._second = -1
        self._prefix = ""
        self._batch_bytes = 0
        self._tail = ', "event": "request", "level": "info", "timestamp": "'

    def configure(self, stream: TextIO | None, static: dict[str, Any], enabled: bool) -> None:
        self.flush()
        self.stream, self.static, self.enabled = stream, static, enabled
        extra = "".join(f", {dumps(k)}: {dumps(v)}" for k, v in static.items())
        self._tail = extra + ', "event": "request", "level": "info", "timestamp": "'

    def __call__(
        self,
        request_id: str,
        team: str | None,
        method: str,
        route: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_ms: float,
        session: str | None,
        replayed: bool,
        outcome: str | None,
        trace_id: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        if self.stream is None:
            structlog.get_logger("workspace_proxy.access").info(
                "request",
                request_id=request_id,
                team=team,
                method=method,
                route=route,
                status=status,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                duration_ms=duration_ms,
                session=session,
                replayed=replayed,
                outcome=outcome,
                **({} if trace_id is None else {"trace_id": trace_id}),
            )
            return
        if not request_id.isalnum():
            request_id = _scrub(request_id)  # (a token sent as X-Request-Id is cut out)
        trace = "" if trace_id is None else f', "trace_id": "{trace_id}"'  # (hex digits)
        line = (
            f'{{"request_id": "{request_id}", '
            f'"team": {"null" if team is None else _json_text(team)}, '
            f'"method": {_json_text(method)}, "route": {_json_text(route)}, '
            f'"status": {status}, "bytes_in": {bytes_in}, "bytes_out": {bytes_out}, '
            f'"duration_ms": {duration_ms:.2f}, '
            f'"session": {"null" if session is None else _json_text(session)}, '
            f'"replayed": {"true" if replayed else "false"}, '
            f'"outcome": {"null" if outcome is None else _json_text(outcome)}'
            f"{trace}"
            f'{self._tail}{self._timestamp()}"}}\n'
        )
        if self.batch_s is None:
            self.stream.write(line)
            self.stream.flush()
            return
        if not self._batch:
            asyncio.get_running_loop().call_later(self.batch_s, self.flush)
        self._batch.append(line)
        self._batch_bytes += len(line)
        if self._batch_bytes >= _BATCH_BYTES:
            self.flush()

    def _timestamp(self) -> str:
        """ISO 8601 UTC with microseconds; the date and time of day are formatted once a
        second (``datetime.isoformat`` per line was a measurable part of a request)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"

    def flush(self) -> None:
        """Write the lines batched so far (the CLI also calls this on shutdown)."""
        if self._batch and self.stream is not None:
            self.stream.write("".join(self._batch))
            self.stream.flush()
        self._batch.clear()
        self._batch_bytes = 0


access = _AccessLog()
"""``log.access(...)``: one line per proxied request (``outcome.Outcome.finish``)."""
_settings: dict[str, Any] = {}


def set_level(level: str) -> None:
    """Change the level only (SIGHUP with a new ``log_level``), keeping every other setting."""
    configure(level, **_settings)


def configure(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    static: dict[str, Any] | None = None,
    cache: bool = False,
    access_batch_s: float | None = None,
) -> None:
    """Configure structlog and route stdlib logging (aiohttp's) through the same pipeline.

    ``static`` fields are added to every line (a worker adds its pid). ``cache`` freezes each
    logger's processor chain on first use: faster, for a process that configures logging once.
    ``access_batch_s`` batches access lines (JSON mode) into one write at most that often, as
    nginx's ``access_log ... buffer= flush=`` does: one write per request was a syscall each."""
    stream = stream or sys.stdout
    as_json = not stream.isatty() if json is None else json
    fields = dict(static or {})

    def add_static(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.update(fields)
        return event

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_static,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(stream),  # one write per line
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    _settings.update(
        stream=stream, json=json, static=static, cache=cache, access_batch_s=access_batch_s
    )
    access.batch_s = access_batch_s
    access.configure(stream if as_json else None, fields, numeric <= logging.INFO)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would duplicate ours (and knows nothing of teams).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
