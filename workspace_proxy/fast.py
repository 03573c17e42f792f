"""The fast path's decisions: which parsed requests the front forwards to Looker itself
(``plan``), under which pinned session, with which request head (``Fast.head``, the same header
rules as the application's), and the access-log line and metrics of such a call."""

from __future__ import annotations

import functools
import time
from typing import Final

from workspace_proxy import headers
from workspace_proxy.app import request_id
from workspace_proxy.auth import bearer_value, is_proxy_token
from workspace_proxy.config import Config
from workspace_proxy.errors import Unauthenticated
from workspace_proxy.headers import dropped_upstream
from workspace_proxy.log import access as access_log
from workspace_proxy.looker import auth_header
from workspace_proxy.proxy import ProxyState, View
from workspace_proxy.routes import (
    Action,
    Route,
    Target,
    TargetMismatch,
    check_sent,
    classify,
    upstream_target,
)
from workspace_proxy.tokens import PinnedSession, SessionProvider
from workspace_proxy.upstream import Backend

_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Methods sent without Content-Length when they carry no body (as aiohttp's client does)."""
_CRLF: Final = b"\r\n"
_NONE: Final[frozenset[bytes]] = frozenset()


@functools.lru_cache(maxsize=4096)
def _route(method: str, raw_path: str, versions: tuple[str, ...]) -> Route:
    return classify(method, raw_path, versions)


class Request:
    """One request as parsed from the caller."""

    __slots__ = (
        "ascii",
        "auth",
        "auths",
        "body",
        "body_bytes",
        "body_seen",
        "chunked",
        "complete",
        "connection",
        "expect",
        "head_bytes",
        "head_done",
        "head_seen",
        "headers",
        "host",
        "hosts",
        "keep_alive",
        "last_url",
        "length",
        "method",
        "parsed",
        "rid",
        "started",
        "target",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.parsed: Target | None = None
        """The target as origin-form (``routes.parse_target``); set once the head is parsed."""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.length: int | None = None
        self.chunked = False
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.complete = False
        self.head_done = False
        """The head is parsed: header callbacks from here on are chunked trailers."""
        self.head_bytes = 0
        self.last_url = b""
        """The last piece of the target the parser handed over."""
        self.head_seen = 0.0
        """When the head was parsed (loop time): the body's overall deadline starts here."""
        self.body_seen = 0.0
        """When body bytes last arrived (loop time; the head's time until then)."""
        self.started = 0.0
        self.expect = False
        self.host = b""
        self.hosts = 0
        self.auth = b""
        self.auths = 0
        self.rid: bytes | None = None
        self.connection = False
        """It names headers in a Connection header (they are hop-by-hop too)."""
        self.ascii = True
        """Every header value is ASCII."""


class Fast:
    """A request the front forwards itself: who it is for and under which session."""

    __slots__ = (
        "backend",
        "peer",
        "provider",
        "replayed",
        "rid",
        "route",
        "scheme",
        "sent_target",
        "session",
        "slot",
        "team",
    )

    def __init__(
        self,
        backend: Backend,
        route: Route,
        provider: SessionProvider,
        session: PinnedSession,
        team: str,
        rid: str,
        peer: str,
        scheme: str,
        sent_target: bytes,
    ) -> None:
        self.backend = backend
        self.sent_target = sent_target
        """The request target for Looker, built from the classified route and checked."""
        self.route = route
        self.provider = provider
        self.session = session
        self.replayed = False
        self.team = team
        self.rid = rid
        self.peer = peer
        self.scheme = scheme
        self.slot = False

    def take_slot(self, state: ProxyState) -> bool:
        """One of the team's concurrency slots, or False (the app then answers 429)."""
        team = state.view.config.teams.get(self.team)
        self.slot = team is not None and state.take_slot(team)
        return self.slot

    def release(self, state: ProxyState) -> None:
        if self.slot:
            self.slot = False
            state.release_slot(self.team)

    def head(self, req: Request) -> bytes:
        """The request line and headers for Looker: the caller's headers minus everything
        ``headers.upstream_headers`` drops, plus the pinned session and X-Forwarded-*."""
        lines = [
            req.method,
            b" ",
            self.sent_target,
            b" HTTP/1.1\r\nHost: ",
            self.backend.host_header,
            _CRLF,
        ]
        named = _NONE
        if req.connection:
            listed = (v for n, v in req.headers if headers.kind(n) == headers.CONNECTION)
            named = headers.named_in_connection(listed)
        for name, value in req.headers:
            if not dropped_upstream(name, named):
                lines += (name, b": ", value, _CRLF)
        lines += (b"Authorization: ", auth_header(self.session.token).encode(), _CRLF)
        if req.body_bytes or req.method not in _NO_BODY_METHODS:
            lines += (b"Content-Length: %d\r\n" % req.body_bytes,)
        if self.peer:
            lines += (b"X-Forwarded-For: ", self.peer.encode(), _CRLF)
        lines += (b"X-Forwarded-Proto: ", self.scheme.encode(), _CRLF)
        if req.host:
            lines += (b"X-Forwarded-Host: ", req.host, _CRLF)
        lines.append(_CRLF)
        return b"".join(lines)

    def answered(self, state: ProxyState, seconds: float) -> None:
        state.metrics.upstream_answered(self.team, seconds)

    def done(
        self, state: ProxyState, req: Request, status: int, bytes_out: int, outcome: str | None
    ) -> None:
        """Count the call and write its access-log line."""
        status = status or 502
        state.metrics.request_done(self.team, self.route.name, status)
        s = self.session
        access_log(
            request_id=self.rid,
            team=self.team,
            method=req.method.decode(),
            route=self.route.name,
            status=status,
            bytes_in=req.body_bytes,
            bytes_out=bytes_out,
            duration_ms=round((time.perf_counter() - req.started) * 1000, 2),
            session=f"{s.generation}:{s.fingerprint}",
            replayed=self.replayed,
            outcome=outcome,
            via="front",
        )


def plan(state: ProxyState, req: Request, peer: str, scheme: str) -> Fast | None:
    """The fast path for this request, or None to relay it to the application.

    Only the plain case qualifies: HTTP/1.1, an origin-form ASCII target, ASCII header values, no
    Expect, a Content-Length body within the replay buffer (or none), exactly one Authorization
    header carrying a valid proxy token of a managed team (no sudo), a route that is simply
    forwarded and a pinned session ready now. Anything else is the application's to decide."""
    view: View = state.view
    limits = view.config.limits
    if (
        req.version != "1.1"
        or req.chunked
        or req.expect
        or (req.length or 0) > limits.replay_buffer_bytes
        or req.method == b"HEAD"
        or req.auths != 1
        or not req.ascii
        or req.parsed is None
    ):
        return None
    credential = req.auth.decode()
    token = bearer_value(credential)
    if token is None or not is_proxy_token(token):
        return None
    try:
        principal = view.auth.verify(credential)
    except Unauthenticated:
        return None
    if principal.sudo is not None:
        return None
    provider: SessionProvider | None = view.sessions.get(principal.team)
    if provider is None:
        return None
    target = req.parsed
    route = _route(req.method.decode(), target.path, view.config.looker.api_versions)
    if route.action is not Action.FORWARD:
        return None
    session = provider.ready()
    if session is None:
        return None
    backend = _looker_backend(view.config)
    sent = upstream_target(backend.base_path, route, target)
    try:
        check_sent(sent, backend.base_path, route, target)
    except TargetMismatch:
        return None  # the application refuses it, with the same check
    return Fast(
        backend,
        route,
        provider,
        session,
        principal.team,
        request_id(req.rid.decode() if req.rid is not None else None),
        peer,
        scheme,
        sent.encode(),
    )


_BACKEND: list[tuple[Config, Backend]] = []
"""The last config's Looker backend (the config is held, so identity cannot be reused)."""


def _looker_backend(config: Config) -> Backend:
    if not _BACKEND or _BACKEND[0][0] is not config:
        _BACKEND[:] = [(config, Backend.looker(config))]
    return _BACKEND[0][1]
