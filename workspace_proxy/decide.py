"""The one decision: what happens to a request, from its parsed head alone. Pure: no I/O, no
sockets, no aiohttp types.

``decide(head, peer, view)`` applies, in this order and nowhere else: the target grammar
(``routes.parse_target``), the route and method policy (``routes.classify``), the caller's
credentials (exactly one ``Authorization``; a signed proxy token, a sealed passthrough token or
a raw Looker token), the team policy (sudo, ``PATCH /session``, pinned branches), the body
limits, and the header rules towards Looker (``headers``). It answers one of:

- ``Refuse``: a Looker-shaped error, nothing forwarded;
- ``Forward``: the exact request line and headers Looker gets (all but the pinned session's
  ``Authorization``, which the forwarding flow adds), under which session, with which body plan;
- ``Local``: the proxy answers itself (login, logout, sudo, ``PATCH /session``), possibly after
  reading a small body and calling Looker for its own purposes (``local``);
- ``Resolve``: a passthrough caller's token must first be opened or verified (``Passthrough``);
  then ``decide_pinned`` finishes the decision for the team it belongs to.

The target sent to Looker is built here from the classified path and parsed query
(``routes.upstream_target``) and checked once more before it is accepted (``routes.check_sent``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import TYPE_CHECKING, Final, TypeVar

from workspace_proxy import headers
from workspace_proxy.auth import bearer_value, is_proxy_token
from workspace_proxy.config import WORKSPACES, Secret, TeamConfig
from workspace_proxy.decision import (
    Act,
    Body,
    Caller,
    Decision,
    Forward,
    Head,
    Local,
    Managed,
    Peer,
    Policy,
    Refuse,
    Resolve,
    SessionKey,
)
from workspace_proxy.errors import (
    DOCS_URL,
    BadRequest,
    Forbidden,
    Invalid,
    NotFound,
    ProxyError,
    Unauthenticated,
)
from workspace_proxy.routes import (
    Action,
    Route,
    Target,
    check_sent,
    classify,
    parse_target,
    upstream_target,
)

if TYPE_CHECKING:
    from workspace_proxy.passthrough import Pinned

T = TypeVar("T")

_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Methods sent without Content-Length when they carry no body."""
_USER_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CRLF: Final = b"\r\n"
_NONE: Final[frozenset[bytes]] = frozenset()
SMALL_BODY: Final = 64 * 1024
"""The most a login or ``PATCH /session`` body may be (413 beyond)."""


MEMO_MAX: Final = 4096
"""Forwards remembered per configuration (``decision.Policy.memo``), at most."""


@functools.lru_cache(maxsize=4096)
def _route(method: bytes, path: str, versions: tuple[str, ...]) -> Route:
    return classify(method.decode("latin-1"), path, versions)


@functools.lru_cache(maxsize=4096)
def _target(raw: bytes) -> Target:
    """``parse_target`` of a raw target (a refusal is not cached: it raises)."""
    return parse_target(raw.decode("latin-1"))


@functools.lru_cache(maxsize=4096)
def _sent(base_path: str, route: Route, target: Target) -> bytes:
    """The target Looker gets, built from the classified route and the parsed query, and
    checked (``routes.check_sent``): the same inputs always give the same, checked, bytes."""
    sent = upstream_target(base_path, route, target)
    check_sent(sent, base_path, route, target)
    return sent.encode()


def decide(head: Head, peer: Peer, policy: Policy) -> Decision:
    """What to do with a request (see the module docstring)."""
    key = _memo_key(head, peer, policy)
    memo = policy.memo
    known = memo.get(key)
    if known is not None:
        principal, decided = known
        if principal is None or policy.auth.valid(principal):
            return decided
        del memo[key]
        return Refuse(Unauthenticated())
    try:
        decision = _decide(head, peer, policy)
    except ProxyError as exc:
        return Refuse(exc)
    if isinstance(decision, Forward) and decision.principal is not None:
        _remember(memo, key, (decision.principal, decision))
    return decision


def _memo_key(head: Head, peer: Peer, policy: Policy) -> tuple[object, ...]:
    lines = tuple(head.headers)
    if policy.tracing and head.trace_context:  # a forward does not depend on them then
        lines = tuple(h for h in lines if not headers.trace_context(h[0]))
    return (head.method, head.target, lines, head.length, head.chunked, peer.lines)


def _remember(memo: dict[tuple[object, ...], T], key: tuple[object, ...], value: T) -> None:
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo[key] = value


def _decide(head: Head, peer: Peer, policy: Policy) -> Decision:
    target = _target(head.target)  # 400 unless origin-form
    config = policy.config
    route = _route(head.method, target.path, config.looker.api_versions)
    action = route.action
    if action is Action.NOT_FOUND:
        raise NotFound()
    if action is Action.LOGIN:
        if (head.length or 0) > SMALL_BODY:
            raise BadRequest("Login body too large.", status=413)
        return Local(Act.LOGIN, route.name, reads_body=True, query=target.query)
    if action is Action.VERSIONS:
        return _forward(head, peer, policy, route, target, None, None)
    if len(head.auths) > 1:
        raise BadRequest("workspace-proxy: send exactly one Authorization header.")
    credential = head.auths[0].decode("latin-1") if head.auths else None
    token = bearer_value(credential)
    if policy.passthrough and token is not None and not is_proxy_token(token):
        return Resolve(Secret(token), route, target)
    principal = policy.auth.verify_token(token)
    team = config.teams[principal.team]
    if action is Action.LOGOUT:
        return Local(Act.LOGOUT, route.name, team=team.name, principal=principal)
    key = Managed(team.name, principal.sudo)
    if action is Action.SUDO and team.allow_sudo:
        user_id = _sudo_user(route)
        return Local(Act.SUDO, route.name, team.name, key, principal, user_id)
    decision = _under_pin(head, peer, policy, route, target, team, key)
    if isinstance(decision, Forward):
        return dataclasses.replace(decision, principal=principal)
    return decision


def decide_pinned(
    head: Head, peer: Peer, policy: Policy, resolve: Resolve, pinned: Pinned
) -> Decision:
    """The rest of the decision for a passthrough caller whose session was resolved. A forward
    for a sealed session is remembered with that session (the same ``Pinned`` object: a key of
    its ``id`` is only trusted when the remembered object is this one)."""
    if pinned.sealed is None:
        return _decide_pinned(head, peer, policy, resolve, pinned)
    key = _memo_key(head, peer, policy)
    pinned_key = (*key, id(pinned))
    known = policy.pinned_memo.get(pinned_key)
    if known is not None and known[0] is pinned:
        return known[1]
    decision = _decide_pinned(head, peer, policy, resolve, pinned)
    if isinstance(decision, Forward):
        # Only now, its token opened: random tokens never fill the memo.
        _remember(policy.memo, key, (None, resolve))
        _remember(policy.pinned_memo, pinned_key, (pinned, decision))
    return decision


def _decide_pinned(
    head: Head, peer: Peer, policy: Policy, resolve: Resolve, pinned: Pinned
) -> Decision:
    try:
        route, target, team = resolve.route, resolve.target, pinned.team
        key = Caller(pinned)
        if route.action is Action.SUDO and team.allow_sudo:
            user_id = _sudo_user(route)
            return Local(Act.PASSTHROUGH_SUDO, route.name, team.name, key, user_id=user_id)
        if route.action is Action.LOGOUT:
            version = policy.config.looker.api_versions[0]
            logout = Route(Action.FORWARD, f"/api/{version}/logout", "logout")
            bare = Head(b"DELETE", head.target, head.version, head.headers, host=head.host)
            then = _forward(bare, peer, policy, logout, Target(logout.path, None), None, key)
            return Local(Act.PASSTHROUGH_LOGOUT, route.name, team.name, key, then=then)
        return _under_pin(head, peer, policy, route, target, team, key)
    except ProxyError as exc:
        return Refuse(exc)


def _under_pin(
    head: Head,
    peer: Peer,
    policy: Policy,
    route: Route,
    target: Target,
    team: TeamConfig,
    key: SessionKey,
) -> Decision:
    """The team policy for an authenticated caller, then the forward."""
    action = route.action
    if action is Action.SUDO:
        raise Forbidden(
            f"workspace-proxy: sudo (POST /login/{{user_id}}) is not allowed for team "
            f"{team.name!r} (allow_sudo is off)."
        )
    if action is Action.PATCH_SESSION:
        if (head.length or 0) > SMALL_BODY:
            raise BadRequest("Request body too large for this call.", status=413)
        # Answered with the pinned session: the same path read with GET, no body.
        read = Route(Action.FORWARD, route.path, route.name)
        bare = Head(b"GET", head.target, head.version, head.headers, host=head.host)
        then = _forward(bare, peer, policy, read, target, team.name, key)
        return Local(Act.PATCH_SESSION, route.name, team.name, key, reads_body=True, then=then)
    if action is Action.BRANCH_SWITCH and team.git_branch and not team.allow_branch_switch:
        raise Forbidden(
            f"workspace-proxy pins team {team.name!r} to branch {team.git_branch.name!r} of "
            f"project {team.git_branch.project!r}; switching branches is not allowed."
        )
    return _forward(head, peer, policy, route, target, team.name, key)


def _sudo_user(route: Route) -> str:
    user_id = route.path.rstrip("/").rsplit("/", 1)[-1]
    if not _USER_ID.fullmatch(user_id):
        raise NotFound()
    return user_id


def _forward(
    head: Head,
    peer: Peer,
    policy: Policy,
    route: Route,
    target: Target,
    team: str | None,
    key: SessionKey | None,
) -> Forward:
    """The request Looker gets, built from what was decided: the classified target, the
    caller's headers minus everything ``headers.dropped_upstream`` drops (and their trace
    context while the proxy traces), Looker's Host, the body's framing and the proxy's own
    X-Forwarded-*."""
    looker = policy.looker
    sent = _sent(looker.base_path, route, target)
    limits = policy.config.limits
    length, chunked = head.length, head.chunked
    if length is not None and length > limits.max_request_body_bytes:
        raise BadRequest(
            f"Request body larger than {limits.max_request_body_bytes} bytes.", status=413
        )
    if chunked:
        body = Body.STREAM
    elif not length:
        body = Body.NONE
    elif length <= limits.replay_buffer_bytes:
        body = Body.BUFFER
    else:
        body = Body.STREAM
    lines = [head.method, b" ", sent, b" HTTP/1.1\r\nHost: ", looker.host_header, _CRLF]
    named = headers.named_in_connection(head.connection) if head.connection else _NONE
    tracing = policy.tracing
    for name, value in head.headers:
        dropped = headers.dropped_upstream(name, named)
        if not dropped and not (tracing and headers.trace_context(name)):
            lines += (name, b": ", value, _CRLF)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif length or head.method not in _NO_BODY_METHODS:
        lines.append(b"Content-Length: %d\r\n" % (length or 0))
    lines.append(peer.lines)
    if head.host:
        lines += (b"X-Forwarded-Host: ", head.host, _CRLF)
    return Forward(route.name, team, key, b"".join(lines), body, length, chunked)


def decide_patch(body: bytes, team: TeamConfig, then: Forward) -> Refuse | Forward:
    """``PATCH /session`` keeps the pin: the team's own workspace (or none) is answered with
    the pinned session (``then``: GET /session), another one is a 403, an unknown one a 422."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return Refuse(BadRequest("Request body is not valid JSON."))
    wanted = parsed.get("workspace_id") if isinstance(parsed, dict) else None
    if wanted is not None and wanted not in WORKSPACES:
        return Refuse(
            Invalid(
                [
                    {
                        "field": "workspace_id",
                        "code": "invalid",
                        "message": f"must be one of {', '.join(WORKSPACES)}",
                        "documentation_url": DOCS_URL,
                    }
                ]
            )
        )
    if wanted is not None and wanted != team.workspace:
        return Refuse(
            Forbidden(
                f"workspace-proxy pins team {team.name!r} to the {team.workspace!r} workspace; "
                f"switching this session to {wanted!r} is not allowed."
            )
        )
    return then
