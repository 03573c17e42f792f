"""What a user hits first, each said in one line that says what to do: a port that is taken,
a Looker that cannot be reached when the proxy starts, a reload that needs a restart.

(A config's own problems say what to do in ``config``: a variable that is not set, a secret
file that does not exist.)
"""

from __future__ import annotations

import asyncio
import errno
import re
import ssl
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import structlog

from workspace_proxy.config import Config, LookerConfig

log = structlog.get_logger("workspace_proxy")
_ADDRESS: Final = re.compile(r"\('([^']*)', (\d+)")


def listen_problem(host: str, port: int, exc: OSError, option: str) -> str:
    """Why ``host:port`` cannot be listened on, and what to do (``option`` moves the port)."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use: stop what listens there (an earlier proxy or "
            f"emulator? `ss -ltnp 'sport = :{port}'` names it), or choose another port with "
            f"{option}"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; choose a port above 1023 ({option})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: this machine has no such address; fix the host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def serve_listen_problem(exc: OSError, config: Config) -> str:
    """``listen_problem`` for ``serve``: which of its listeners failed, from the error."""
    found = _ADDRESS.search(str(exc))
    host, port = (found.group(1), int(found.group(2))) if found else ("?", 0)
    admin = port == config.admin.port and port != config.listen.port
    option = "admin.port or --admin-port" if admin else "listen.port or --port"
    if found is None:
        host, port = config.listen.host, config.listen.port
    return listen_problem(host, port, exc, option)


async def check_looker(looker: LookerConfig) -> bool:
    """Whether Looker's host takes a connection (and a TLS handshake, for https), once, at
    start: logs ``looker_reachable``, or ``looker_unreachable`` with what to check. Sends no
    request (Looker sees nothing); the proxy serves either way (calls get 503 until Looker
    answers)."""
    url = urlsplit(looker.base_url)
    tls = url.scheme == "https"
    host, port = url.hostname or "", url.port or (443 if tls else 80)
    context: ssl.SSLContext | None = None
    if tls:
        wanted = looker.ssl_context()  # False: not verified; True: the system's CAs
        context = wanted if isinstance(wanted, ssl.SSLContext) else ssl.create_default_context()
        if wanted is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        async with asyncio.timeout(looker.timeouts.connect_s):
            _, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if tls else None
            )
        writer.close()
    except ssl.SSLError as exc:
        log.warning(
            "looker_unreachable",
            looker=looker.base_url,
            error=f"{exc.__class__.__name__}: {exc.reason or exc}",
            hint="Looker's TLS certificate does not verify: set looker.ca_file to the CA "
            "bundle that signed it",
        )
        return False
    except (OSError, TimeoutError) as exc:
        log.warning(
            "looker_unreachable",
            looker=looker.base_url,
            error=str(exc) or exc.__class__.__name__,
            hint="check looker.base_url, and that Looker (or `workspace-proxy emulator`) is "
            "running and reachable from here; calls get 503 until it answers",
        )
        return False
    log.info("looker_reachable", looker=looker.base_url)
    return True


def reload_hint(problems: Sequence[str]) -> str | None:
    """What to do about a reload refused for a variable that is not set."""
    if any("environment variable" in p and "is not set" in p for p in problems):
        return (
            "a running proxy keeps the environment it was started with: restart it to use "
            "variables exported since, or use {file: ...} secrets, which a reload reads again"
        )
    return None
