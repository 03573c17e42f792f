"""Logging: structlog configured once (by the CLI), JSON lines off a terminal, secrets redacted.

``redact_secrets`` is the last line of defence: values under secret-looking keys are masked and
any proxy token, ``token X``/``Bearer X`` credential or ``client_secret=`` pair inside a string
is cut out, whatever logged it (our code, aiohttp or a library).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRET_KEYS: Final = re.compile(
    r"(authorization|secret|password|access_token|^token$|signing_key|cookie)", re.IGNORECASE
)
_SECRET_TEXT: Final = re.compile(
    r"(?i)(\b(?:token|bearer)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bwp1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
    r"|((?:client_secret|access_token|client_id)=)[^&\s\"']+"
)
MASK: Final = "[redacted]"


def _scrub(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        prefix = m.group(1) or m.group(2) or ""
        return prefix + MASK

    return _SECRET_TEXT.sub(repl, text)


def redact_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Mask secret-looking keys and credential-looking substrings in every log event."""
    _redact(event)
    return event


def _redact(event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(key, str) and _SECRET_KEYS.search(key) and key != "event":
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = _scrub(value)
        elif isinstance(value, dict):
            event[key] = _redact(dict(value))
        elif isinstance(value, list | tuple):
            event[key] = [_scrub(v) if isinstance(v, str) else v for v in value]
    return event


def configure(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    static: dict[str, Any] | None = None,
) -> None:
    """Configure structlog and route stdlib logging (aiohttp's) through the same pipeline.

    ``static`` fields are added to every line (a worker adds its pid)."""
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
        cache_logger_on_first_use=False,
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would duplicate ours (and knows nothing of teams).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
