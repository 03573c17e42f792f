"""What the workers of one ``--workers`` instance share besides sessions: logouts and the
verification of raw passthrough tokens.

The supervisor's ``Hub`` serves three calls on the broker's Unix socket:

- ``POST /workers`` ``{"pid", "control"}``: a worker registers its control socket before it
  serves, and gets every unexpired revocation (``{"revoked": [[id, expires_at], ...]}``).
  ``DELETE /workers/{pid}``: it leaves (at shutdown, once it no longer serves).
- ``POST /revocations`` ``{"id", "expires_at"}``: a logout. The hub remembers it, sends it to
  every registered worker's control socket (``POST /revocations``, same body) and answers ``204``
  only once each has acknowledged. A live worker that does not within ``ACK_TIMEOUT_S`` is
  killed (the supervisor restarts it, and it loads the revocations before it serves), so a
  caller that has the ``204`` of its logout gets ``401`` for that token on every worker.
- ``POST /passthrough/verify`` ``{"token"}``: a raw Looker token, identified and pinned on
  first sight and re-verified (``firstsight``) once for the whole instance (single flight per
  token). ``200 {"team", "valid_for"}``; ``401``/``403 {"message"}``; ``503 {"kind", "reason",
  "retry_after"}``.

``WorkerLink`` is the worker's side: its control server and its calls to the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from workspace_proxy.broker import unavailable, unavailable_json
from workspace_proxy.config import Config, Secret, TeamConfig
from workspace_proxy.errors import Forbidden, SessionUnavailable, Unauthenticated
from workspace_proxy.firstsight import Check, Recheck, Verified
from workspace_proxy.revocations import Revocations

log = structlog.get_logger("workspace_proxy.sharing")
ACK_TIMEOUT_S: Final = 2.0
"""How long the hub waits for each worker to acknowledge a revocation."""
Evict = Callable[[int], Awaitable[None]]


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest() from None


def _revocation(body: object) -> tuple[str, float]:
    if isinstance(body, dict):
        token_id, expires_at = body.get("id"), body.get("expires_at")
        if isinstance(token_id, str) and isinstance(expires_at, int | float):
            return token_id, float(expires_at)
    raise web.HTTPBadRequest()


def _unix(path: str, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=path),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


class Hub:
    """The supervisor's side: revocations of the instance, worker control sockets, and the
    verification of raw passthrough tokens (``raw``, replaced on reload)."""

    def __init__(self, evict: Evict) -> None:
        self.revocations = Revocations()
        self.raw: Recheck | None = None
        self._evict = evict
        self._workers: dict[int, aiohttp.ClientSession] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/workers", self._register)
        app.router.add_delete("/workers/{pid}", self._leave)
        app.router.add_post("/revocations", self._revoke)
        app.router.add_post("/passthrough/verify", self._verify)
        app.on_cleanup.append(self._close)

    async def _register(self, request: web.Request) -> web.Response:
        body = await _json(request)
        pid, control = (body.get("pid"), body.get("control")) if isinstance(body, dict) else (0, 0)
        if not isinstance(pid, int) or not isinstance(control, str):
            raise web.HTTPBadRequest()
        old = self._workers.pop(pid, None)
        # No await between joining the fan-out and reading the list: a revocation is either
        # in the answer or sent to this worker.
        self._workers[pid] = _unix(control, ACK_TIMEOUT_S)
        revoked = self.revocations.entries()
        if old is not None:
            await old.close()
        return web.json_response({"revoked": revoked})

    async def _leave(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        session = self._workers.pop(int(pid), None) if pid.isdigit() else None
        if session is not None:
            await session.close()
        return web.Response(status=204)

    async def _revoke(self, request: web.Request) -> web.Response:
        token_id, expires_at = _revocation(await _json(request))
        self.revocations.add(token_id, expires_at)
        workers = list(self._workers.items())
        acks = await asyncio.gather(*(_send(s, token_id, expires_at) for _, s in workers))
        for (pid, session), acked in zip(workers, acks, strict=True):
            if not acked and self._workers.get(pid) is session:
                log.error("revocation_not_acknowledged", worker=pid, timeout_s=ACK_TIMEOUT_S)
                del self._workers[pid]
                await session.close()
                await self._evict(pid)
        return web.Response(status=204)

    async def _verify(self, request: web.Request) -> web.Response:
        body = await _json(request)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise web.HTTPBadRequest()
        if self.raw is None:
            return web.json_response({"message": Forbidden.public_message}, status=403)
        try:
            verified = await self.raw.verify(Secret(token))
        except (Unauthenticated, Forbidden) as exc:
            return web.json_response({"message": exc.public_message}, status=exc.status)
        except SessionUnavailable as exc:
            return web.json_response(unavailable_json(exc), status=503)
        return web.json_response({"team": verified.team.name, "valid_for": verified.valid_for})

    async def _close(self, _: web.Application) -> None:
        for session in self._workers.values():
            await session.close()
        self._workers.clear()


async def _send(session: aiohttp.ClientSession, token_id: str, expires_at: float) -> bool:
    try:
        async with session.post(
            "http://worker/revocations", json={"id": token_id, "expires_at": expires_at}
        ) as resp:
            return resp.status == 204
    except (aiohttp.ClientError, TimeoutError):
        return False


class WorkerLink:
    """A worker's side: it takes the hub's revocations on its control socket, publishes its
    own logouts through the hub, and has raw passthrough tokens verified there."""

    def __init__(self, broker: str, *, timeout_s: float) -> None:
        self._broker = broker
        self._timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._control: web.AppRunner | None = None

    async def start(self, revocations: Revocations) -> None:
        """Serve the control socket, register, load every revocation; before serving callers."""

        async def take(request: web.Request) -> web.Response:
            revocations.add(*_revocation(await _json(request)))
            return web.Response(status=204)

        control = web.Application()
        control.router.add_post("/revocations", take)
        self._control = web.AppRunner(control, access_log=None)
        await self._control.setup()
        path = os.path.join(os.path.dirname(self._broker), f"control-{os.getpid()}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await web.UnixSite(self._control, path).start()
        os.chmod(path, 0o600)
        self._http = _unix(self._broker, self._timeout_s)
        answer = await self._call("POST", "/workers", {"pid": os.getpid(), "control": path})
        revocations.add_all((str(i), float(e)) for i, e in answer["revoked"])
        revocations.publish = self.publish

    async def close(self) -> None:
        if self._http is not None:
            with contextlib.suppress(SessionUnavailable):
                await self._call("DELETE", f"/workers/{os.getpid()}", None)
            await self._http.close()
        if self._control is not None:
            await self._control.cleanup()

    async def publish(self, token_id: str, expires_at: float) -> None:
        """A logout here: returns once every worker of the instance holds it."""
        await self._call("POST", "/revocations", {"id": token_id, "expires_at": expires_at})

    def check(self, config: Config) -> Check:
        """Raw passthrough tokens verified by the hub, for this worker's config."""

        async def check(token: Secret, _: TeamConfig | None) -> Verified:
            answer = await self._call("POST", "/passthrough/verify", {"token": token.reveal()})
            team = config.teams.get(str(answer.get("team")))
            if team is None or not team.passthrough:
                raise SessionUnavailable(
                    "the configuration is being reloaded", retry_after=1.0, kind="reloading"
                )
            return Verified(team, float(answer["valid_for"]))

        return check

    async def _call(self, method: str, path: str, body: object) -> dict[str, Any]:
        if self._http is None:
            raise RuntimeError("WorkerLink.start() was not called")
        try:
            async with self._http.request(method, f"http://broker{path}", json=body) as resp:
                answer = await resp.json() if resp.status != 204 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise SessionUnavailable(
                "the supervisor's session broker did not answer", retry_after=1.0, kind="broker"
            ) from None
        if resp.status in (200, 204):
            return dict(answer)
        message = str(answer.get("message", ""))
        if resp.status == 401:
            raise Unauthenticated()
        if resp.status == 403:
            raise Forbidden(message or None)
        raise unavailable(answer, "broker")
