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


class _AccessLog:
    """The per-request line. In JSON mode it is written directly — same fields, same redaction,
    one ``json.dumps`` and one write — because structlog's processor chain, run for every
    request, was the largest single cost of a proxied call. Elsewhere it goes through structlog."""

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

    def __call__(self, **fields: Any) -> None:
        if not self.enabled:
            return
        if self.stream is None:
            structlog.get_logger("workspace_proxy.access").info("request", **fields)
            return
        fields.update(self.static)
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = self._timestamp()
        # Every other value of this line comes from a bounded, validated set (team and route
        # names, methods, status, session fingerprint, outcome kind); the request id is the one
        # string a caller chooses, so it alone is scrubbed.
        rid = fields.get("request_id")
        if isinstance(rid, str) and not rid.isalnum():
            fields["request_id"] = _scrub(rid)
        line = dumps(fields) + "\n"
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
"""``log.access(request_id=..., status=..., ...)``: one line per proxied request."""
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
    access.flush()
    access.batch_s = access_batch_s
    access.stream = stream if as_json else None
    access.static = fields
    access.enabled = numeric <= logging.INFO
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would duplicate ours (and knows nothing of teams).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
