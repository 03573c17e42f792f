"""`/_emulator/*`: control and inspect a running emulator over HTTP; never audited.

GET audit[?since=N], GET stats, GET faults (the knobs as JSON), POST faults (a JSON object of
Faults fields to change), POST revoke, POST restart, POST reset. ``ENDPOINTS`` describes them
(the emulator's start-up banner prints it)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .model import Faults

if TYPE_CHECKING:
    from .server import LookerEmulator

# field -> (accepted JSON types, may be null); hold_login is an asyncio.Event: not settable here
_FAULT_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "login_failures": ((int,), False),
    "login_failure_status": ((int,), False),
    "login_retry_after": ((int,), True),
    "login_timeout": ((bool,), False),
    "patch_session_failures": ((int,), False),
    "patch_session_status": ((int,), False),
    "patch_session_wrong_workspace": ((str,), True),
    "latency_s": ((int, float), False),
    "reset_after_bytes": ((int,), True),
    "token_ttl_override": ((int, float), True),
}
_IGNORED_FAULTS = frozenset({"hold_login", "hold_session_patch"})


ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("GET  /_emulator/audit[?since=N]", "every call: method, path, user, workspace it ran in"),
    ("GET  /_emulator/stats", "login attempts, logins, PATCHes, live tokens"),
    ("GET  /_emulator/faults", "the fault knobs and their values"),
    ("POST /_emulator/faults", 'change knobs: {"login_failures": 3, "latency_s": 0.5}'),
    ("POST /_emulator/revoke", "every token answers 401 from now on"),
    ("POST /_emulator/restart", "forget sessions and tokens (git state stays)"),
    ("POST /_emulator/reset", "clear the audit, counters and faults"),
)
"""The admin endpoints and what each does (for the start-up banner)."""


def fault_changes(body: object) -> dict[str, Any]:
    """Validated Faults fields to set; ValueError names the first bad field."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object of Faults fields")
    changes: dict[str, Any] = {}
    for name, value in body.items():
        if name in _IGNORED_FAULTS:
            continue
        if name not in _FAULT_TYPES:
            raise ValueError(f"unknown fault {name!r}")
        types, nullable = _FAULT_TYPES[name]
        if value is None and nullable:
            changes[name] = None
        elif isinstance(value, types) and (bool in types or not isinstance(value, bool)):
            changes[name] = (
                float(value) if isinstance(value, int | float) and float in types else value
            )
        else:
            kind = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
            raise ValueError(f"fault {name!r} must be {kind}, got {value!r}")
    return changes


def faults_json(faults: Faults) -> dict[str, Any]:
    return {name: getattr(faults, name) for name in _FAULT_TYPES}


def _bad_request(message: str) -> web.Response:
    return web.json_response({"message": message}, status=400)


def routes(emu: LookerEmulator) -> list[web.RouteDef]:
    async def audit(request: web.Request) -> web.Response:
        since = request.query.get("since", "0")
        if not since.isdigit():
            return _bad_request("since must be a non-negative integer")
        return web.json_response([dataclasses.asdict(e) for e in emu.audit[int(since) :]])

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(emu.stats())

    async def current_faults(_request: web.Request) -> web.Response:
        return web.json_response(faults_json(emu.faults))

    async def faults(request: web.Request) -> web.Response:
        try:
            changes = fault_changes(json.loads(await request.read() or b"{}"))
        except ValueError as exc:
            return _bad_request(str(exc))
        for name, value in changes.items():
            setattr(emu.faults, name, value)
        return web.json_response(faults_json(emu.faults))

    async def revoke(_request: web.Request) -> web.Response:
        emu.revoke_all_tokens()
        return web.Response(status=204)

    async def restart(_request: web.Request) -> web.Response:
        emu.restart()
        return web.Response(status=204)

    async def reset(_request: web.Request) -> web.Response:
        emu.reset()
        return web.Response(status=204)

    return [
        web.get("/_emulator/audit", audit),
        web.get("/_emulator/stats", stats),
        web.get("/_emulator/faults", current_faults),
        web.post("/_emulator/faults", faults),
        web.post("/_emulator/revoke", revoke),
        web.post("/_emulator/restart", restart),
        web.post("/_emulator/reset", reset),
    ]
