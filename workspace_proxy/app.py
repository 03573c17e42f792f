"""The proxy application: its state for one process, the view of one configuration, reload,
and the admin app (health, readiness, metrics).

``create_app`` never binds, reads files or configures logging; ``server.Server`` serves the
proxied API with it, tests and ``serve`` alike. ``Proxy.start``/``stop`` own its resources
(the client for the proxy's own Looker calls, the pinned sessions, the upstream pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web

from workspace_proxy.auth import CallerAuth
from workspace_proxy.callerpins import CallerPins
from workspace_proxy.config import Config, TeamConfig
from workspace_proxy.decision import Caller, Looker, Managed, Policy, SessionKey
from workspace_proxy.firstsight import Check, Recheck, looker_check
from workspace_proxy.looker import LookerClient
from workspace_proxy.manager import TokenManager, close_all
from workspace_proxy.metrics import CONTENT_TYPE_LATEST, Metrics
from workspace_proxy.passthrough import CallerSession, Passthrough
from workspace_proxy.revocations import Revocations
from workspace_proxy.sealed import Sealer
from workspace_proxy.session import Clock, ProviderFactory, SessionProvider, Sleep
from workspace_proxy.sharing import WorkerLink
from workspace_proxy.status import Status, readiness
from workspace_proxy.sudo import SudoSessions
from workspace_proxy.tokens import local_sessions
from workspace_proxy.tracing import Tracer
from workspace_proxy.upstream import Backend, Pool

log = structlog.get_logger("workspace_proxy.app")
Providers = Callable[[aiohttp.ClientSession, Config, Clock, Sleep, Metrics], ProviderFactory]


@dataclass(frozen=True, slots=True)
class View:
    """Everything derived from one config; replaced as a whole on reload. A request takes the
    view once and keeps it to its end."""

    config: Config
    policy: Policy
    auth: CallerAuth
    sessions: TokenManager
    passthrough: Passthrough | None
    sudo: SudoSessions
    backend: Backend
    pool_size: int
    """The most idle connections to Looker kept (``Config.pool_size``)."""

    def provider(self, key: SessionKey) -> SessionProvider:
        """Where the pinned session for ``key`` comes from."""
        if isinstance(key, Caller):
            assert self.passthrough is not None
            return CallerSession(key.pinned, self.passthrough)
        assert isinstance(key, Managed)
        team = self.sessions[key.team]
        return team if key.sudo is None else self.sudo.get(team, key.sudo)


def upstream_session(config: Config) -> aiohttp.ClientSession:
    """The client for the proxy's own calls to Looker (login, PATCH, verify, identify, logout):
    bodies untouched, no cookies, no proxies from the environment."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


def local_providers(
    http: aiohttp.ClientSession, config: Config, clock: Clock, sleep: Sleep, metrics: Metrics
) -> ProviderFactory:
    """Sessions logged in and pinned by this process (one process, or the broker)."""
    return local_sessions(
        LookerClient(http, config.looker),
        config.looker.retry,
        clock=clock,
        sleep=sleep,
        events=metrics,
    )


@dataclass(eq=False)
class Proxy:
    """The application for one process: what every request of the proxied API reads."""

    config: Config
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    metrics: Metrics = field(default_factory=Metrics)
    providers: Providers = local_providers
    link: WorkerLink | None = None
    """A worker's link to its supervisor (``--workers``); None in a single process."""
    revocations: Revocations = field(default_factory=Revocations)
    """Logged-out token ids (proxy and sealed tokens): one list for the process's life, kept
    across reloads, shared with the other workers of an instance (``sharing``)."""
    draining: list[bool] = field(default_factory=lambda: [False])
    in_flight: dict[str, int] = field(default_factory=dict)
    pins: CallerPins = field(init=False)
    """How passthrough callers' pins go, per team (kept across reloads for unchanged teams)."""
    view: View = field(init=False)
    pool: Pool = field(init=False)
    http: aiohttp.ClientSession = field(init=False)
    tracing: Tracer | None = field(default=None, init=False)
    """OpenTelemetry tracing, when ``config.tracing`` turns it on (from ``start`` to ``stop``;
    a reload does not change it)."""
    started: bool = False

    async def start(self) -> None:
        if self.link is not None:
            # Every logout of the instance is known here before the first caller is served.
            await self.link.start(self.revocations)
        if self.config.tracing is not None:
            from workspace_proxy.spans import Spans  # the SDK is imported only when tracing

            self.tracing = Spans(self.config.tracing)
        self.http = upstream_session(self.config)
        self.pins = CallerPins(clock=self.clock)
        factory = self.providers(self.http, self.config, self.clock, self.sleep, self.metrics)
        self.view = self._view(self.config, TokenManager(self.config.managed_teams, factory))
        self.pool = Pool(self.view.backend, lambda: self.view.pool_size)
        self.metrics.in_flight_now = lambda: self.in_flight
        self.started = True

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self.pool.close()
        await self.view.sessions.close()
        await self.http.close()
        if self.link is not None:
            await self.link.close()
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # the spans still queued are exported

    def take_slot(self, team: TeamConfig) -> bool:
        """One of the team's ``max_concurrency`` slots, or False when they are all taken."""
        busy = self.in_flight.get(team.name, 0)
        if busy >= team.max_concurrency:
            return False
        self.in_flight[team.name] = busy + 1
        return True

    def release_slot(self, team: str) -> None:
        self.in_flight[team] -= 1

    def _view(self, config: Config, sessions: TokenManager) -> View:
        """Everything built from one config; logouts (``revocations``) carry over."""
        auth = CallerAuth(config, revocations=self.revocations)
        client = LookerClient(self.http, config.looker)
        passthrough = None
        self.pins.configure(config.teams)
        if any(t.passthrough for t in config.teams.values()):
            passthrough = Passthrough(
                config,
                client,
                sealer=Sealer(config.token_signing_key),
                revocations=self.revocations,
                raw=Recheck(self._raw_check(config, client), clock=self.clock),
                pins=self.pins,
                clock=self.clock,
            )
        return View(
            config=config,
            policy=Policy(
                config,
                auth,
                Looker.of(config),
                passthrough is not None,
                tracing=self.tracing is not None,
            ),
            auth=auth,
            sessions=sessions,
            passthrough=passthrough,
            sudo=SudoSessions(
                client, config.looker.retry, clock=self.clock, sleep=self.sleep, events=self.metrics
            ),
            backend=Backend.looker(config),
            pool_size=config.pool_size,
        )

    def _raw_check(self, config: Config, client: LookerClient) -> Check:
        """Raw passthrough tokens are verified by the supervisor (``--workers``) or here."""
        link = self.link
        return link.check(config) if link is not None else looker_check(config, client, self.pins)

    async def reload(self, config: Config) -> None:
        """Swap to a new, already validated config in one step.

        Unchanged teams keep their pinned sessions; changed teams re-pin on first use; removed
        teams stop taking requests (their callers' tokens no longer verify) while requests in
        flight finish on the session they already hold. Listener addresses need a restart."""
        old = self.view
        same_looker = config.looker == old.config.looker
        factory = self.providers(self.http, config, self.clock, self.sleep, self.metrics)
        sessions, retired = old.sessions.reconfigured(
            config.managed_teams, factory, same_looker=same_looker
        )
        self.view = self._view(config, sessions)
        if self.view.backend != old.backend:
            self.pool.close()
            self.pool = Pool(self.view.backend, lambda: self.view.pool_size)
        log.info(
            "config_reloaded",
            kept=sorted(
                n
                for n in old.config.managed_teams
                if n in config.managed_teams and sessions[n] is old.sessions[n]
            ),
            repinned=sorted(s.team.name for s in retired if s.team.name in config.teams),
            added=sorted(set(config.teams) - set(old.config.teams)),
            removed=sorted(set(old.config.teams) - set(config.teams)),
        )
        if (config.listen, config.admin) != (old.config.listen, old.config.admin):
            log.warning("listen_change_needs_restart")
        if config.tracing != old.config.tracing:
            log.warning("tracing_change_needs_restart")
        await close_all(retired, wait=True)

    def teams(self) -> Rows | None:
        """Every team's (ready, status), passthrough teams too (None until started)."""
        return team_rows(self.view.config, self.view.sessions, self.pins) if self.started else None


Rows = dict[str, tuple[bool, Status]]


def team_rows(config: Config, sessions: TokenManager, pins: CallerPins) -> Rows:
    """(ready, status) of every team of ``config``, in its order: managed teams from their
    pinned sessions, passthrough teams from how their callers' pins go."""
    rows: Rows = {}
    for name, team in config.teams.items():
        provider = sessions.get(name)
        if team.passthrough or provider is None:
            rows[name] = pins.status(team)
        else:
            rows[name] = (provider.healthy, provider.status())
    return rows


def create_app(
    config: Config,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    metrics: Metrics | None = None,
    providers: Providers = local_providers,
    link: WorkerLink | None = None,
) -> Proxy:
    """The proxy application for one validated config.

    ``providers`` decides where pinned sessions come from: this process (default) or, for
    ``--workers``, the supervisor's session broker; ``link`` (``--workers``) shares logouts and
    raw passthrough tokens' verification with the other workers. ``clock`` and ``sleep`` are the
    time of session lifetimes and of the waits between attempts to pin (tests move both)."""
    return Proxy(
        config,
        clock=clock,
        sleep=sleep,
        metrics=metrics or Metrics(),
        providers=providers,
        link=link,
    )


async def reload(app: Proxy, config: Config) -> None:
    await app.reload(config)


def create_admin_app(
    *,
    teams: Callable[[], Rows | None],
    draining: list[bool],
    metrics: Metrics,
) -> web.Application:
    """Liveness, readiness (cached state only, never calls Looker) and Prometheus metrics.
    ``teams`` gives every team's (ready, status), None while starting."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        if draining[0]:
            return web.json_response({"status": "draining"}, status=503)
        rows = teams()
        if rows is None:
            return web.json_response({"status": "starting"}, status=503)
        status, body = readiness(rows)
        return web.json_response(body, status=status)

    async def render(_: web.Request) -> web.Response:
        for name, (_ready, status) in (teams() or {}).items():
            metrics.team_status(name, status)
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    admin = web.Application()
    admin.router.add_get("/healthz", live)
    admin.router.add_get("/readyz", ready)
    admin.router.add_get("/metrics", render)
    return admin
