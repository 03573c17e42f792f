"""The catch-all handler: route policy, caller auth, forwarding under the pinned session.

Bodies stream both ways in bounded chunks. Small request bodies are buffered so a call can be
replayed once after Looker rejects the team's session (401) and a fresh one is pinned.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from workspace_proxy.auth import CallerAuth, bearer_value, is_proxy_token
from workspace_proxy.config import WORKSPACES, Config, Secret, TeamConfig
from workspace_proxy.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    ProxyError,
    SessionUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from workspace_proxy.headers import downstream_headers, upstream_headers
from workspace_proxy.looker import LookerClient, auth_header
from workspace_proxy.metrics import Metrics
from workspace_proxy.passthrough import Passthrough, Pinned
from workspace_proxy.routes import (
    Action,
    Route,
    Target,
    TargetMismatch,
    check_sent,
    classify,
    parse_target,
    upstream_target,
)
from workspace_proxy.tokens import (
    PinnedSession,
    SessionEvents,
    SessionProvider,
    State,
    Status,
    SudoSessions,
    TokenManager,
)

log = structlog.get_logger("workspace_proxy.proxy")

CHUNK: Final = 256 * 1024
_SMALL_BODY: Final = 64 * 1024
_ONE_WRITE: Final = 64 * 1024
_USER_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_INVENTED: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
"""Headers aiohttp's client would add when the caller did not send them. Inventing
``Accept-Encoding: gzip`` would hand an uncompressing caller a gzip body (bodies pass through
untouched), so Looker sees the caller's own headers only."""
_NOT_UTF8: Final = re.compile("[\udc80-\udcff]")  # bytes aiohttp could not decode
DOCS_URL: Final = "https://cloud.google.com/looker/docs/"


@dataclass(slots=True)
class RequestInfo:
    """What the access log reports about one request; filled in as the request proceeds."""

    request_id: str
    route: str = "-"
    team: str | None = None
    session: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    replayed: bool = False
    outcome: str | None = None
    continued: bool = False
    """``100 Continue`` was sent."""


INFO: Final = web.RequestKey("workspace_proxy_info", RequestInfo)
TARGET: Final = web.RequestKey("workspace_proxy_target", Target)
"""The request's target as parsed by ``routes.parse_target``: what every forward is built from."""


@dataclass(frozen=True, slots=True)
class View:
    """Everything derived from one config; replaced as a whole on reload."""

    config: Config
    auth: CallerAuth
    sessions: TokenManager
    passthrough: Passthrough | None
    sudo: SudoSessions
    forward_timeout: aiohttp.ClientTimeout
    ssl: ssl.SSLContext | bool

    @classmethod
    def build(
        cls,
        config: Config,
        auth: CallerAuth,
        sessions: TokenManager,
        http: aiohttp.ClientSession,
        events: SessionEvents | None = None,
        passthrough: Passthrough | None = None,
    ) -> View:
        timeouts = config.looker.timeouts
        client = LookerClient(http, config.looker)
        return cls(
            config=config,
            auth=auth,
            sessions=sessions,
            passthrough=passthrough,
            sudo=SudoSessions(client, config.looker.retry, events=events),
            forward_timeout=aiohttp.ClientTimeout(
                total=None, connect=timeouts.connect_s, sock_read=timeouts.read_s
            ),
            ssl=config.looker.ssl_context(),
        )


@dataclass(slots=True)
class ProxyState:
    """App-lifetime state. ``view`` is swapped in one assignment, so each request sees one config
    from start to end (it takes ``state.view`` once)."""

    view: View
    http: aiohttp.ClientSession
    metrics: Metrics
    in_flight: dict[str, int] = field(default_factory=dict)
    relayed: bool = False
    """Set when the app sits behind the front (``front.FrontSite``), whose relayed requests
    carry the caller's address in ``X-Workspace-Proxy-Peer``."""

    def take_slot(self, team: TeamConfig) -> bool:
        """One of the team's ``max_concurrency`` slots (shared by the app and the front's fast
        path), or False when they are all taken."""
        busy = self.in_flight.get(team.name, 0)
        if busy >= team.max_concurrency:
            return False
        self.in_flight[team.name] = busy + 1
        return True

    def release_slot(self, team: str) -> None:
        self.in_flight[team] -= 1


STATE: Final = web.AppKey("workspace_proxy_state", ProxyState)


def error_body(message: str, **extra: Any) -> bytes:
    """A Looker-shaped JSON error body: ``{"message", "documentation_url"}`` (+ extra fields)."""
    return json.dumps({"message": message, **extra, "documentation_url": DOCS_URL}).encode()


def error_json(exc: ProxyError) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of the answer to a ProxyError."""
    return exc.status, error_body(exc.public_message), exc.headers


def looker_error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """A Looker-shaped JSON error response."""
    return web.Response(
        body=error_body(message, **extra),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def caller_address(request: web.Request) -> tuple[str | None, str, str | None]:
    """(peer address, scheme, Host) of the caller: as the front saw them, for a relayed request
    (an HTTP/1.0 caller may send no Host; the front then relays a placeholder and says so)."""
    if request.app[STATE].relayed:
        told = request.headers.get("X-Workspace-Proxy-Peer")
        if told:
            peer, scheme, *flags = told.split(" ")
            host = None if "nohost" in flags else request.host
            return peer or None, scheme or "http", host
    return request.remote, request.scheme, request.host


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    view = state.view  # one config for the whole request, even across a reload
    info = request[INFO]
    target = request[TARGET] = parse_target(request.raw_path)  # 400 unless origin-form
    _refuse_malformed(request)
    route = classify(request.method, target.path, view.config.looker.api_versions)
    info.route = route.name
    if route.action is Action.NOT_FOUND:
        raise NotFound()
    if route.action is Action.LOGIN:
        return await _login(request, view)
    if route.action is Action.VERSIONS:
        return await _forward(request, state, view, route, None, body=None, replayable=True)
    credentials = request.headers.getall("Authorization", ())
    if len(credentials) > 1:
        raise BadRequest("workspace-proxy: send exactly one Authorization header.")
    credential = credentials[0] if credentials else None
    caller_token = bearer_value(credential)
    if view.passthrough is not None and caller_token and not is_proxy_token(caller_token):
        return await _passthrough(
            request, state, view, route, view.passthrough, Secret(caller_token)
        )
    principal = view.auth.verify(credential)
    team = view.config.teams[principal.team]
    info.team = team.name
    if route.action is Action.LOGOUT:
        await view.auth.revoke(principal)
        return web.Response(status=204)
    provider: SessionProvider = view.sessions[team.name]
    if principal.sudo is not None:
        provider = view.sudo.get(provider, principal.sudo)
    if route.action is Action.SUDO and team.allow_sudo:
        user_id = _sudo_user(route)
        await view.sudo.get(view.sessions[team.name], user_id).get()  # pinned before answering
        issued = view.auth.issue(team.name, principal.caller, sudo=user_id)
        return web.json_response(issued.as_looker_json())
    return await _under_pin(request, state, view, route, provider)


def _refuse_malformed(request: web.Request) -> None:
    """What aiohttp's parser lets through but a proxy must not: HTTP/1.0 with Transfer-Encoding
    (ambiguous framing, RFC 9112 6.1) and header values that are not UTF-8 (they would be altered
    on the way to Looker). Targets other than origin-form are refused by ``parse_target``."""
    if request.version < aiohttp.HttpVersion11 and "Transfer-Encoding" in request.headers:
        raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests.", close=True)
    if any(_NOT_UTF8.search(v) for v in request.headers.values()):
        raise BadRequest("workspace-proxy: header values must be UTF-8.")


def _sudo_user(route: Route) -> str:
    user_id = route.path.rstrip("/").rsplit("/", 1)[-1]
    if not _USER_ID.fullmatch(user_id):
        raise NotFound()
    return user_id


async def _passthrough(
    request: web.Request,
    state: ProxyState,
    view: View,
    route: Route,
    passthrough: Passthrough,
    token: Secret,
) -> web.StreamResponse:
    """A passthrough caller's sealed token (or a raw Looker token, pinned on first sight and
    re-verified): the same policy as for managed teams; logout revokes the sealed token and
    ends the caller's Looker session."""
    pinned = await passthrough.resolve(token)
    request[INFO].team = pinned.team.name
    provider = _CallerSession(pinned, passthrough)
    if route.action is Action.SUDO and pinned.team.allow_sudo:
        issued = await passthrough.sudo(pinned, _sudo_user(route))
        return web.json_response(issued.as_looker_json())
    if route.action is Action.LOGOUT:
        await passthrough.logout(pinned)
        logout = Route(
            Action.FORWARD, f"/api/{view.config.looker.api_versions[0]}/logout", "logout"
        )
        return await _forward(request, state, view, logout, provider, body=None, replayable=False)
    return await _under_pin(request, state, view, route, provider)


async def _under_pin(
    request: web.Request,
    state: ProxyState,
    view: View,
    route: Route,
    provider: SessionProvider,
) -> web.StreamResponse:
    """The route policy for an authenticated caller of ``provider.team``, then forwarding."""
    team = provider.team
    if route.action is Action.SUDO:
        raise Forbidden(
            f"workspace-proxy: sudo (POST /login/{{user_id}}) is not allowed for team "
            f"{team.name!r} (allow_sudo is off)."
        )
    with _concurrency_slot(state, team):
        if route.action is Action.PATCH_SESSION:
            return await _patch_session(request, state, view, route, provider)
        if (
            route.action is Action.BRANCH_SWITCH
            and team.git_branch
            and not team.allow_branch_switch
        ):
            raise Forbidden(
                f"workspace-proxy pins team {team.name!r} to branch {team.git_branch.name!r} of "
                f"project {team.git_branch.project!r}; switching branches is not allowed."
            )
        body, replayable = await _request_body(request, view.config)
        return await _forward(request, state, view, route, provider, body, replayable)


class _CallerSession:
    """A passthrough caller's own pinned session, as a SessionProvider: Looker rejecting it
    (401) ends it — the caller must log in again, as with Looker itself."""

    def __init__(self, pinned: Pinned, passthrough: Passthrough) -> None:
        self._pinned = pinned
        self._passthrough = passthrough

    @property
    def team(self) -> TeamConfig:
        return self._pinned.team

    @property
    def current(self) -> PinnedSession:
        return self._pinned.session

    @property
    def healthy(self) -> bool:
        return True

    def status(self) -> Status:
        s = self._pinned.session
        return Status(
            state=State.OK,
            workspace=s.workspace,
            session_age_s=None,
            generation=s.generation,
            next_attempt_in_s=None,
            last_error=None,
            attempts=0,
        )

    def ready(self) -> PinnedSession | None:
        return self._pinned.session

    async def get(self) -> PinnedSession:
        return self._pinned.session

    async def replace(self, stale: PinnedSession) -> PinnedSession:
        self._passthrough.forget(self._pinned)
        raise Unauthenticated()

    async def close(self, *, wait: bool = False) -> None:
        return None


async def _login(request: web.Request, view: View) -> web.Response:
    """The caller's own login, answered like Looker would: a proxy token for a proxy caller; for
    a passthrough team's Looker client id, a sealed proxy token once its session is pinned."""
    form: dict[str, str] = {}
    if request.can_read_body:
        if (request.content_length or 0) > _SMALL_BODY:
            raise BadRequest("Login body too large.", status=413)
        await _continue(request)
        posted = await request.post()
        form = {k: v for k, v in posted.items() if isinstance(v, str)}
    client_id = form.get("client_id") or request.query.get("client_id")
    client_secret = form.get("client_secret") or request.query.get("client_secret")
    team = view.passthrough.team_for_login(client_id) if view.passthrough else None
    if view.passthrough is not None and team is not None and client_id:
        request[INFO].team = team.name
        issued = await view.passthrough.login(team, client_id, client_secret or "")
        return web.json_response(issued.as_looker_json())
    issued = view.auth.login(client_id, client_secret)
    return web.json_response(issued.as_looker_json())


async def _patch_session(
    request: web.Request, state: ProxyState, view: View, route: Route, provider: SessionProvider
) -> web.StreamResponse:
    """Keep the pin: the team's own workspace is answered with the pinned session."""
    team = provider.team
    body = await _small_json(request)
    wanted = body.get("workspace_id") if isinstance(body, dict) else None
    if wanted is not None and wanted not in WORKSPACES:
        return looker_error(
            422,
            "Validation Failed",
            errors=[
                {
                    "field": "workspace_id",
                    "code": "invalid",
                    "message": f"must be one of {', '.join(WORKSPACES)}",
                    "documentation_url": DOCS_URL,
                }
            ],
        )
    if wanted is not None and wanted != team.workspace:
        raise Forbidden(
            f"workspace-proxy pins team {team.name!r} to the {team.workspace!r} workspace; "
            f"switching this session to {wanted!r} is not allowed."
        )
    read = Route(Action.FORWARD, route.path, route.name)
    return await _forward(
        request, state, view, read, provider, body=None, replayable=True, method="GET"
    )


async def no_early_continue(request: web.Request) -> None:
    """The route's expect handler: aiohttp's default answers ``100 Continue`` before any rule
    has run; here it is sent by ``_continue``, once the request is going to be read."""


async def _continue(request: web.Request) -> None:
    """``100 Continue`` for a caller that asked for it, now that its body will be read."""
    info = request[INFO]
    if not info.continued and request.headers.get("Expect", "").lower() == "100-continue":
        info.continued = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _small_json(request: web.Request) -> object:
    if (request.content_length or 0) > _SMALL_BODY:
        raise BadRequest("Request body too large for this call.", status=413)
    await _continue(request)
    raw = await request.content.read(_SMALL_BODY + 1)
    if len(raw) > _SMALL_BODY:
        raise BadRequest("Request body too large for this call.", status=413)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise BadRequest("Request body is not valid JSON.") from None


class _Slot:
    def __init__(self, state: ProxyState, team: str) -> None:
        self._state, self._team = state, team

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._state.release_slot(self._team)


def _concurrency_slot(state: ProxyState, team: TeamConfig) -> _Slot:
    """Reserve one of the team's concurrent request slots, or 429 at once."""
    if not state.take_slot(team):
        raise TooManyRequests(
            f"workspace-proxy: team {team.name!r} already has {state.in_flight[team.name]} "
            f"requests in flight (limit {team.max_concurrency}).",
            headers={"Retry-After": "1"},
        )
    return _Slot(state, team.name)


async def _request_body(request: web.Request, config: Config) -> tuple[Any, bool]:
    """(body to send, replayable). Small bodies are read; larger ones stream once."""
    if not request.body_exists:
        return None, True
    length = request.content_length
    limit = config.limits.max_request_body_bytes
    if length is not None and length > limit:
        raise BadRequest(f"Request body larger than {limit} bytes.", status=413)
    idle = config.limits.body_idle_timeout_s
    await _continue(request)
    if length is not None and length <= config.limits.replay_buffer_bytes:
        try:
            async with asyncio.timeout(idle):
                body = await request.content.readexactly(length) if length else b""
        except (TimeoutError, asyncio.IncompleteReadError):
            raise _body_stalled() from None
        request[INFO].bytes_in = len(body)
        return body, True
    return _stream_body(request, limit, idle), False


def _body_stalled() -> BadRequest:
    # The rest of the body may never come: answer and close rather than wait to drain it.
    return BadRequest(
        "workspace-proxy: the request body did not arrive in time.", status=408, close=True
    )


async def _stream_body(request: web.Request, limit: int, idle: float) -> AsyncIterator[bytes]:
    """The caller's body in chunks; a stall longer than ``idle`` ends the request (408)."""
    info = request[INFO]
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise _body_stalled() from None
        if not chunk:
            return
        info.bytes_in += len(chunk)
        if info.bytes_in > limit:
            raise BadRequest(f"Request body larger than {limit} bytes.", status=413)
        yield chunk


async def _forward(
    request: web.Request,
    state: ProxyState,
    view: View,
    route: Route,
    sessions: SessionProvider | None,
    body: Any,
    replayable: bool,
    *,
    method: str | None = None,
) -> web.StreamResponse:
    """Send under the team's pinned session (none for public routes) and stream the answer."""
    info = request[INFO]
    session = await sessions.get() if sessions is not None else None
    upstream = await _send(request, state, view, route, session, body, method)
    if upstream.status == 401 and sessions is not None and session is not None:
        upstream.release()
        session = await sessions.replace(session)
        if not replayable:
            raise SessionUnavailable(
                "Looker ended the team's session while this request's body was being streamed; "
                "a new pinned session is ready",
                retry_after=1.0,
                kind="not_replayable",
            )
        info.replayed = True
        state.metrics.replays.labels(session.team).inc()
        upstream = await _send(request, state, view, route, session, body, method)
        if upstream.status == 401:
            upstream.release()
            raise SessionUnavailable(
                "Looker rejected a freshly pinned session", retry_after=5.0, kind="rejected"
            )
    return await _stream_back(request, upstream)


async def _send(
    request: web.Request,
    state: ProxyState,
    view: View,
    route: Route,
    session: PinnedSession | None,
    body: Any,
    method: str | None,
) -> aiohttp.ClientResponse:
    info = request[INFO]
    if session is not None:
        info.session = f"{session.generation}:{session.fingerprint}"
    target = request[TARGET]
    url = URL(view.config.looker.base_url + upstream_target("", route, target), encoded=True)
    sent = url.raw_path + (f"?{url.raw_query_string}" if url.raw_query_string else "")
    if url.raw_fragment:
        raise TargetMismatch()
    check_sent(sent, "", route, target)
    peer, proto, host = caller_address(request)
    headers = upstream_headers(
        request.headers,
        auth_header(session.token) if session is not None else None,
        peer=peer,
        proto=proto,
        host=host,
        content_length=_length(body, request),
    )
    started = time.perf_counter()
    try:
        upstream = await state.http.request(
            method or request.method,
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=view.forward_timeout,
            ssl=view.ssl,
            auto_decompress=False,
            skip_auto_headers=_NOT_INVENTED,
        )
    except aiohttp.ClientError as exc:
        if isinstance(exc.__cause__, BadRequest):  # the caller's streamed body was too large
            raise exc.__cause__ from None
        raise
    if session is not None:
        state.metrics.upstream_answered(session.team, time.perf_counter() - started)
    return upstream


def _length(body: Any, request: web.Request) -> int | None:
    """Content-Length to send: a buffered body's own, none for no body (a PATCH answered with
    a GET must not announce the PATCH's length), else the caller's for a streamed body."""
    if body is None:
        return None
    return len(body) if isinstance(body, bytes) else request.content_length


def _has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


async def _stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    """Stream Looker's answer; a broken upstream stream breaks the caller's connection too."""
    info = request[INFO]
    try:
        headers = downstream_headers(upstream.headers)
        length = upstream.content_length
        if (
            length is not None
            and length <= _ONE_WRITE
            and _has_body(request.method, upstream.status)
        ):
            # A small body of known size goes out with the headers in one write (bounded: at
            # most _ONE_WRITE bytes held per request).
            try:
                body = await upstream.content.readexactly(length) if length else b""
            except asyncio.IncompleteReadError:
                raise aiohttp.ClientPayloadError("Looker's answer was cut short") from None
            info.bytes_out = len(body)
            headers.popall("Content-Length", None)
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                info.bytes_out += len(chunk)
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    info.outcome = "caller_gone"
                    log.info("caller_disconnected", bytes_out=info.bytes_out)
                    return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            info.outcome = "upstream_broken"
            log.warning("upstream_stream_broken", error=exc.__class__.__name__)
            # Headers are gone: the only honest signal left is to cut the caller's connection,
            # so a truncated body can never pass for a complete one.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        upstream.release()
