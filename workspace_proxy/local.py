"""What the proxy answers itself, once ``decide`` said so: the caller's login and logout, sudo,
and the passthrough caller's sudo and logout. Each needs the proxy's own calls to Looker or the
shared logouts (I/O), so each is a coroutine the exchange runs; each returns the answer's
status and JSON body (None: no body), or raises the ProxyError the caller gets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import structlog

from workspace_proxy.auth import IssuedToken
from workspace_proxy.decision import Act, Caller, Local
from workspace_proxy.errors import BadRequest, Forbidden, LoginRefused

if TYPE_CHECKING:
    from workspace_proxy.app import View

log = structlog.get_logger("workspace_proxy.local")
Answer = tuple[int, bytes | None]


def _token(issued: IssuedToken) -> Answer:
    return 200, json.dumps(issued.as_looker_json()).encode()


def form_of(body: bytes, query: str | None, content_type: bytes | None) -> dict[str, str]:
    """The login's client_id and client_secret: form body fields first, then the query."""
    fields: dict[str, str] = {}
    for pair in parse_qsl(query or "", keep_blank_values=True):
        fields.setdefault(*pair)
    if body:
        kind = (content_type or b"").split(b";")[0].strip().lower()
        if kind not in (b"", b"application/x-www-form-urlencoded"):
            raise BadRequest(
                "workspace-proxy: log in with an application/x-www-form-urlencoded body."
            )
        try:
            posted = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("Login body is not UTF-8.") from None
        fields.update({k: v for k, v in posted if k in ("client_id", "client_secret")})
    return fields


async def login(view: View, fields: dict[str, str], rid: str) -> tuple[Answer, str | None]:
    """The caller's own login, answered like Looker would (and the team it belongs to): a proxy
    token for a proxy caller; for a passthrough team's Looker client id, a sealed proxy token
    once its Looker session is pinned. Wrong credentials: 404, as Looker answers; with
    passthrough teams, a Looker user in none of them: 403, as its tokens get. A refusal is
    logged (``login_refused``) with the caller id and why, never the secret."""
    client_id = fields.get("client_id") or None
    client_secret = fields.get("client_secret") or None
    passthrough = view.passthrough
    team = passthrough.team_for_login(client_id) if passthrough is not None else None
    owner = team.name if team is not None else view.auth.team_of(client_id)
    try:
        if passthrough is not None and team is not None and client_id:
            issued = await passthrough.login(team, client_id, client_secret or "")
            return _token(issued), team.name
        if passthrough is not None and client_id and owner is None:
            await passthrough.refuse(client_id, client_secret or "")
        return _token(view.auth.login(client_id, client_secret)), owner
    except (LoginRefused, Forbidden) as exc:
        reason = exc.kind if isinstance(exc, LoginRefused) else "looker_user_in_no_team"
        log.warning(
            "login_refused", request_id=rid, caller=_shown(client_id), team=owner, reason=reason
        )
        raise


def _shown(client_id: str | None) -> str | None:
    """A caller id as logged: printable, at most 64 characters (it is not a secret, but it
    is the caller's input)."""
    if client_id is None:
        return None
    text = "".join(c if c.isprintable() else "?" for c in client_id[:64])
    return text + ("..." if len(client_id) > 64 else "")


async def act(view: View, local: Local) -> Answer:
    """Logout, sudo, and the passthrough caller's sudo and logout (its ``then`` is forwarded
    by the exchange afterwards)."""
    if local.act is Act.LOGOUT:
        assert local.principal is not None
        await view.auth.revoke(local.principal)
        return 204, None
    if local.act is Act.SUDO:
        assert local.principal is not None
        assert local.team is not None
        assert local.user_id is not None
        provider = view.sessions[local.team]
        await view.sudo.get(provider, local.user_id).get()  # pinned before answering
        issued = view.auth.issue(local.team, local.principal.caller, sudo=local.user_id)
        return _token(issued)
    passthrough = view.passthrough
    assert passthrough is not None
    assert isinstance(local.key, Caller)
    if local.act is Act.PASSTHROUGH_SUDO:
        assert local.user_id is not None
        return _token(await passthrough.sudo(local.key.pinned, local.user_id))
    assert local.act is Act.PASSTHROUGH_LOGOUT
    await passthrough.logout(local.key.pinned)
    return 204, None
