"""Session broker: with ``--workers N`` the supervisor owns the pinned sessions, workers ask it.

Looker logins stay single-flight across all worker processes (N workers, one login and one PATCH
per team). The supervisor serves a tiny JSON API on a Unix socket in a private (0700) directory;
each worker keeps the answer until its refresh time and asks again after a 401, naming the
generation Looker rejected so the broker re-pins at most once per session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from aiohttp import web

from workspace_proxy.config import Config, Secret, TeamConfig
from workspace_proxy.errors import SessionUnavailable
from workspace_proxy.flight import SingleFlight
from workspace_proxy.manager import TokenManager
from workspace_proxy.metrics import Metrics
from workspace_proxy.session import Clock, PinnedSession, ProviderFactory, Sleep
from workspace_proxy.status import State, Status

_RECHECK_S: Final = 1.0
"""After the broker's refresh time, a worker asks at most this often until a new session lands."""

Manager = Callable[[], TokenManager]


def create_broker_app(manager: Manager, *, clock: Clock = time.monotonic) -> web.Application:
    """The broker's API, served by the supervisor on its Unix socket."""

    async def session(request: web.Request) -> web.Response:
        provider = manager().get(request.match_info["team"])
        if provider is None:
            return web.json_response(
                {"kind": "unknown_team", "reason": "the team is not configured", "retry_after": 1},
                status=404,
            )
        body = await request.json() if request.can_read_body else {}
        stale = body.get("stale") if isinstance(body, dict) else None
        try:
            current = provider.current
            if stale is not None and current is not None and current.generation == stale:
                pinned = await provider.replace(current)
            else:
                pinned = await provider.get()
        except SessionUnavailable as exc:
            return web.json_response(unavailable_json(exc), status=503)
        now = clock()
        return web.json_response(
            {
                "token": pinned.token.reveal(),
                "workspace": pinned.workspace,
                "generation": pinned.generation,
                "fingerprint": pinned.fingerprint,
                "refresh_in": pinned.refresh_at - now,
                "usable_for": pinned.usable_until - now,
            }
        )

    app = web.Application()
    app.router.add_post("/teams/{team}/session", session)
    return app


def unavailable_json(exc: SessionUnavailable) -> dict[str, object]:
    """A SessionUnavailable as the broker and the hub send it to workers (``unavailable``)."""
    return {"kind": exc.kind, "reason": exc.reason, "retry_after": exc.retry_after, "fix": exc.fix}


def unavailable(body: dict[str, Any], default_kind: str) -> SessionUnavailable:
    """The SessionUnavailable a worker raises for the broker's or the hub's 503."""
    fix = body.get("fix")
    return SessionUnavailable(
        str(body.get("reason", "unavailable")),
        retry_after=float(body.get("retry_after", 1.0)),
        kind=str(body.get("kind", default_kind)),
        fix=fix if isinstance(fix, str) else None,
    )


class RemoteTeamSession:
    """A worker's view of one team's session held by the broker (a SessionProvider)."""

    def __init__(self, team: TeamConfig, client: BrokerClient, clock: Clock) -> None:
        self._team = team
        self._client = client
        self._clock = clock
        self._current: PinnedSession | None = None
        self._next_check = 0.0
        self._failed = False
        self._flight: SingleFlight[PinnedSession] = SingleFlight(self._done)

    @property
    def team(self) -> TeamConfig:
        return self._team

    @property
    def current(self) -> PinnedSession | None:
        return self._current

    @property
    def healthy(self) -> bool:
        return not self._failed

    def status(self) -> Status:
        """What this worker knows (the supervisor's own sessions answer /readyz)."""
        s = self._current
        now = self._clock()
        usable = s is not None and now < s.usable_until
        state = State.OK if usable else State.BACKING_OFF if self._failed else State.IDLE
        return Status(
            state=state,
            workspace=self._team.workspace,
            session_age_s=now - s.pinned_at if s is not None and usable else None,
            generation=s.generation if s is not None and usable else None,
            next_attempt_in_s=None,
            last_error=None,
            attempts=0,
            branch=self._team.branch_label,
            verified=s.workspace if s is not None and usable else None,
        )

    def ready(self) -> PinnedSession | None:
        s = self._current
        if s is None:
            return None
        now = self._clock()
        if now >= s.usable_until:
            return None
        if now >= max(s.refresh_at, self._next_check) and not self._flight.running:
            self._flight.start(lambda: self._ask(None))  # the broker refreshes meanwhile
        return s

    async def get(self) -> PinnedSession:
        return self.ready() or await self._wait(None)

    async def replace(self, stale: PinnedSession) -> PinnedSession:
        if self._current is stale:
            self._current = None
            return await self._wait(stale.generation)
        return await self.get()

    async def close(self, *, wait: bool = False) -> None:
        await self._flight.close(wait=wait)

    def _done(self, error: BaseException | None) -> None:
        self._failed = error is not None

    async def _wait(self, stale: int | None) -> PinnedSession:
        return await self._flight.join(lambda: self._ask(stale))

    async def _ask(self, stale: int | None) -> PinnedSession:
        answer = await self._client.ask(self._team.name, stale)
        now = self._clock()
        previous = self._current
        if previous is not None and previous.generation == answer["generation"]:
            self._next_check = now + _RECHECK_S
            return previous
        session = PinnedSession(
            token=Secret(answer["token"]),
            team=self._team.name,
            workspace=answer["workspace"],
            generation=answer["generation"],
            fingerprint=answer["fingerprint"],
            pinned_at=now,
            refresh_at=now + answer["refresh_in"],
            usable_until=now + answer["usable_for"],
        )
        if session.workspace != self._team.workspace:
            # The broker pins by the supervisor's config; a worker that has not reloaded yet
            # must not forward under another workspace.
            raise SessionUnavailable(
                "the configuration is being reloaded", retry_after=1.0, kind="reloading"
            )
        self._current = session
        return session


class BrokerClient:
    """Talks to the broker over its Unix socket; a Providers callable for ``create_app``."""

    def __init__(self, socket_path: str, *, timeout_s: float) -> None:
        self._path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    def __call__(
        self,
        http: aiohttp.ClientSession,
        config: Config,
        clock: Clock,
        sleep: Sleep,
        metrics: Metrics,
    ) -> ProviderFactory:
        return lambda team: RemoteTeamSession(team, self, clock)

    async def ask(self, team: str, stale: int | None) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self._path))
        try:
            async with self._http.post(
                f"http://broker/teams/{team}/session", json={"stale": stale}, timeout=self._timeout
            ) as resp:
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise SessionUnavailable(
                "the supervisor's session broker did not answer", retry_after=1.0, kind="broker"
            ) from None
        if resp.status != 200:
            raise unavailable(body, "broker")
        return dict(body)

    async def close(self, _: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()
