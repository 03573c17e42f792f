"""Application factories: the proxy app and its admin app (health, readiness, metrics).

``create_app`` never binds, reads files or configures logging; tests start the same app.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from workspace_proxy.auth import CallerAuth
from workspace_proxy.config import Config
from workspace_proxy.errors import ProxyError
from workspace_proxy.firstsight import Check, Recheck, looker_check
from workspace_proxy.log import access as access_log
from workspace_proxy.looker import LookerClient
from workspace_proxy.metrics import CONTENT_TYPE_LATEST, Metrics
from workspace_proxy.passthrough import Passthrough
from workspace_proxy.proxy import (
    CHUNK,
    INFO,
    STATE,
    ProxyState,
    RequestInfo,
    View,
    handle,
    looker_error,
    no_early_continue,
)
from workspace_proxy.revocations import Revocations
from workspace_proxy.sealed import Sealer
from workspace_proxy.sharing import WorkerLink
from workspace_proxy.tokens import (
    Clock,
    ProviderFactory,
    SessionProvider,
    Sleep,
    TokenManager,
    close_all,
    local_sessions,
)

log = structlog.get_logger("workspace_proxy.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG: Final = web.AppKey("workspace_proxy_config", Config)
METRICS: Final = web.AppKey("workspace_proxy_metrics", Metrics)
DRAINING: Final = web.AppKey("workspace_proxy_draining", list[bool])
Providers = Callable[[aiohttp.ClientSession, Config, Clock, Sleep, Metrics], ProviderFactory]
PROVIDERS: Final = web.AppKey[Providers]("workspace_proxy_providers")
REVOCATIONS: Final = web.AppKey("workspace_proxy_revocations", Revocations)
"""Logged-out token ids (proxy and sealed tokens): one list for the app's life, kept across
reloads, shared with the other workers of an instance (``sharing``)."""
LINK: Final = web.AppKey("workspace_proxy_link", WorkerLink)
"""A worker's link to its supervisor (``--workers``); absent in a single process."""
CLOCK: Final = web.AppKey[Clock]("workspace_proxy_clock")
SLEEP: Final = web.AppKey[Sleep]("workspace_proxy_sleep")
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


_ID_PREFIX: Final = os.urandom(8).hex()
_ID_COUNTER: Final = itertools.count()


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: request id, error mapping, request metrics and the access-log line."""
    info = RequestInfo(request_id=request_id(request.headers.get("X-Request-Id")))
    request[INFO] = info
    started = time.perf_counter()
    status = 500
    bound = structlog.contextvars.bind_contextvars(request_id=info.request_id)
    try:
        try:
            response = await handler(request)
        except (ProxyError, web.HTTPException, TimeoutError, aiohttp.ClientError) as exc:
            response = error_response(info, exc)
        status = response.status
        return response
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        duration = time.perf_counter() - started
        request.app[METRICS].request_done(info.team or "-", info.route, status)
        access_log(
            request_id=info.request_id,
            team=info.team,
            method=request.method,
            route=info.route,
            status=status,
            bytes_in=info.bytes_in,
            bytes_out=info.bytes_out,
            duration_ms=round(duration * 1000, 2),
            session=info.session,
            replayed=info.replayed,
            outcome=info.outcome,
            via="app",
        )


def error_response(info: RequestInfo, exc: Exception) -> web.Response:
    """The one place that maps errors to Looker-shaped answers; exception text never leaks."""
    if isinstance(exc, ProxyError):
        info.outcome = getattr(exc, "kind", None) or exc.__class__.__name__
        response = looker_error(exc.status, exc.public_message, headers=exc.headers)
        if getattr(exc, "close", False):
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return looker_error(exc.status, exc.reason)
    if isinstance(exc, TimeoutError):
        info.outcome = "upstream_timeout"
        return looker_error(504, "workspace-proxy: Looker did not answer in time.")
    info.outcome = "upstream_unreachable"
    log.warning("upstream_error", error=exc.__class__.__name__)
    return looker_error(502, "workspace-proxy: Looker is unavailable.")


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    info = request.get(INFO)
    if info is not None:
        response.headers["X-Request-Id"] = info.request_id


def upstream_session(config: Config) -> aiohttp.ClientSession:
    """The one client to Looker of a process: pooled, bodies untouched, no cookies, no proxies
    from the environment."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.pool_size, limit_per_host=0, enable_cleanup_closed=True
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        read_bufsize=CHUNK,  # larger reads from Looker: fewer, bigger writes to the caller
    )


def _resources() -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        link = app.get(LINK)
        if link is not None:
            # Every logout of the instance is known here before the first caller is served.
            await link.start(app[REVOCATIONS])
        async with upstream_session(config) as http:
            sessions = TokenManager(
                config.managed_teams,
                app[PROVIDERS](http, config, app[CLOCK], app[SLEEP], app[METRICS]),
            )
            state = ProxyState(
                view=_view(app, config, sessions, http, app[METRICS], app[CLOCK]),
                http=http,
                metrics=app[METRICS],
            )
            app[STATE] = state
            app[METRICS].in_flight_now = lambda: state.in_flight
            yield
            await state.view.sessions.close()
        if link is not None:
            await link.close()

    return resources


async def reload(app: web.Application, config: Config) -> None:
    """Swap to a new, already validated config in one step.

    Unchanged teams keep their pinned sessions; changed teams re-pin on first use; removed teams
    stop taking requests (their callers' tokens no longer verify) while requests in flight finish
    on the session they already hold. Listener addresses need a restart.
    """
    state = app[STATE]
    old = state.view
    same_looker = config.looker == old.config.looker
    factory = app[PROVIDERS](state.http, config, app[CLOCK], app[SLEEP], state.metrics)
    sessions, retired = old.sessions.reconfigured(
        config.managed_teams, factory, same_looker=same_looker
    )
    state.view = _view(app, config, sessions, state.http, state.metrics, app[CLOCK])
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
    if config.pool_size > old.config.pool_size:
        log.warning(
            "pool_size_change_needs_restart",
            pool_size=old.config.pool_size,
            wanted=config.pool_size,
        )
    await close_all(retired, wait=True)


def _view(
    app: web.Application,
    config: Config,
    sessions: TokenManager,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    clock: Clock,
) -> View:
    """Everything built from one config; logouts (``REVOCATIONS``) carry over."""
    auth = CallerAuth(config, revocations=app[REVOCATIONS])
    passthrough = None
    if any(t.passthrough for t in config.teams.values()):
        client = LookerClient(http, config.looker)
        passthrough = Passthrough(
            config,
            client,
            sealer=Sealer(config.token_signing_key),
            revocations=app[REVOCATIONS],
            raw=Recheck(_raw_check(app, config, client), clock=clock),
            clock=clock,
        )
    return View.build(config, auth, sessions, http, metrics, passthrough)


def _raw_check(app: web.Application, config: Config, client: LookerClient) -> Check:
    """Raw passthrough tokens are verified by the supervisor (``--workers``) or here."""
    link = app.get(LINK)
    return link.check(config) if link is not None else looker_check(config, client)


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


def create_app(
    config: Config,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    metrics: Metrics | None = None,
    providers: Providers = local_providers,
    link: WorkerLink | None = None,
) -> web.Application:
    """The proxy application for one validated config.

    ``providers`` decides where pinned sessions come from: this process (default) or, for
    ``--workers``, the supervisor's session broker; ``link`` (``--workers``) shares logouts and
    raw passthrough tokens' verification with the other workers. ``clock`` and ``sleep`` are the
    time of session lifetimes and of the waits between attempts to pin (tests move both)."""
    app = web.Application(middlewares=[edge])
    app[CONFIG] = config
    app[CLOCK] = clock
    app[SLEEP] = sleep
    app[PROVIDERS] = providers
    app[METRICS] = metrics or Metrics()
    app[DRAINING] = [False]
    app[REVOCATIONS] = Revocations()
    if link is not None:
        app[LINK] = link
    app.cleanup_ctx.append(_resources())
    app.on_response_prepare.append(_add_request_id)
    app.router.add_route("*", "/{tail:.*}", handle, expect_handler=no_early_continue)
    return app


def proxy_sessions(proxy: web.Application) -> Callable[[], list[SessionProvider] | None]:
    """The proxy app's current team sessions (None until it has started)."""

    def teams() -> list[SessionProvider] | None:
        state = proxy.get(STATE)
        return None if state is None else state.view.sessions.teams()

    return teams


def create_admin_app(
    *,
    sessions: Callable[[], list[SessionProvider] | None],
    draining: list[bool],
    metrics: Metrics,
) -> web.Application:
    """Liveness, readiness (cached state only, never calls Looker) and Prometheus metrics."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        if draining[0]:
            return web.json_response({"status": "draining"}, status=503)
        teams = sessions()
        if teams is None:
            return web.json_response({"status": "starting"}, status=503)
        health = {t.team.name: {"ready": t.healthy, **t.status().as_json()} for t in teams}
        ok = all(h["ready"] for h in health.values())
        return web.json_response(
            {"status": "ok" if ok else "degraded", "teams": health}, status=200 if ok else 503
        )

    async def render(_: web.Request) -> web.Response:
        for team in sessions() or ():
            metrics.team_status(team.team.name, team.status())
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    admin = web.Application()
    admin.router.add_get("/healthz", live)
    admin.router.add_get("/readyz", ready)
    admin.router.add_get("/metrics", render)
    return admin
