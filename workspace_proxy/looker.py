"""LookerClient: the proxy's own calls to Looker — login, pin the workspace, verify, logout.

Each failure becomes a LoginFailed or PinFailed with a ``kind`` (bounded, for metrics) and a
reason safe to show callers. Tokens travel as Secret; nothing here logs or echoes them. Each
call is a child span of the pin or request being traced (``tracing.child``, named ``looker
{METHOD} {path}`` with ids left out) and sends Looker its ``traceparent``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from workspace_proxy import tracing
from workspace_proxy.config import LookerConfig, Secret
from workspace_proxy.errors import LoginFailed, PinFailed, SessionUnavailable, Unauthenticated

_MAX_BODY: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class LookerToken:
    token: Secret
    expires_in: int


def auth_header(token: Secret) -> str:
    return f"token {token.reveal()}"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a Retry-After header (delta-seconds or HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _failure_kind(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status in (400, 401, 403, 404):
        return "rejected"
    return "looker_error"


def _token_kind(prefix: str) -> Callable[[int], str]:
    """``kind`` of a call made with a session's token: 401 means Looker does not accept the
    token (Unauthenticated), any other status is ``{prefix}_{status}``."""
    return lambda status: "unauthenticated" if status == 401 else f"{prefix}_{status}"


class LookerClient:
    """Talks to one Looker instance for session management (not for forwarding)."""

    def __init__(self, http: aiohttp.ClientSession, config: LookerConfig) -> None:
        self._http = http
        self._base = config.base_url
        self._api = f"{config.base_url}/api/{config.api_versions[0]}"
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeouts.session_s, connect=config.timeouts.connect_s
        )
        self._ssl = config.ssl_context()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        error: type[SessionUnavailable],
        kind: Callable[[int], str],
        token: Secret | None = None,
        payload: object = None,
        form: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        answered: str | None = None,
        span: str | None = None,
    ) -> dict[str, Any]:
        """One session-management call: 200 and a JSON object, or ``error`` saying why.

        ``kind`` names a non-200 status for metrics; 401 on a token raises Unauthenticated when
        ``kind`` says ``"unauthenticated"``. ``answered`` names the call in "Looker answered ..."
        (default ``what``); ``span`` names the call's span (default ``{method} {path}``)."""
        name = f"looker {span or f'{method} {path}'}"
        with tracing.child(name, {tracing.METHOD: method}) as step:
            headers = {"Accept": "application/json", **step.headers()}
            if token is not None:
                headers["Authorization"] = auth_header(token)
            data: object = form
            if payload is not None:
                headers["Content-Type"] = "application/json"
                data = json.dumps(payload)
            try:
                async with self._http.request(
                    method,
                    f"{self._api}{path}",
                    data=data,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    ssl=self._ssl,
                ) as resp:
                    step.answered(resp.status)
                    if resp.status != 200:
                        if kind(resp.status) == "unauthenticated":
                            raise Unauthenticated()
                        raise error(
                            f"Looker answered {answered or what} with HTTP {resp.status}",
                            retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                            kind=kind(resp.status),
                        )
                    return await _json_body(resp, error, what)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unreachable(error, what, exc) from None

    async def login(self, client_id: Secret, client_secret: Secret) -> LookerToken:
        form = {"client_id": client_id.reveal(), "client_secret": client_secret.reveal()}
        body = await self._call(
            "POST",
            "/login",
            what="login",
            answered="the team's login",
            error=LoginFailed,
            kind=_failure_kind,
            form=form,
        )
        return _access_token(body)

    async def login_user(self, token: Secret, user_id: str) -> LookerToken:
        """Sudo: ``POST /login/{user_id}`` with an admin's token; a new session (production)."""
        body = await self._call(
            "POST",
            f"/login/{quote(user_id, safe='')}",
            what="sudo login",
            answered=f"sudo to user {user_id!r}",
            span="POST /login/{user_id}",
            error=LoginFailed,
            kind=lambda status: (
                f"sudo_{status}" if status in (400, 401, 403, 404) else _failure_kind(status)
            ),
            token=token,
        )
        return _access_token(body)

    async def pin(self, token: Secret, workspace: str) -> None:
        """PATCH the session to ``workspace`` and verify it; raise PinFailed unless verified."""
        answer = await self._call(
            "PATCH",
            "/session",
            what="PATCH /session",
            error=PinFailed,
            kind=lambda status: f"patch_{status}",
            token=token,
            payload={"workspace_id": workspace},
        )
        # The PATCH answer is Looker's own statement of the session's workspace; only when it
        # says something else is the session read back.
        observed = answer.get("workspace_id")
        if observed != workspace:
            observed = (await self._session(token)).get("workspace_id")
        if observed != workspace:
            raise PinFailed(
                f"Looker reports workspace {observed!r} after PATCH /session to {workspace!r}",
                retry_after=0.0,
                kind="wrong_workspace",
            )

    async def checkout(self, token: Secret, project: str, branch: str) -> None:
        """PUT the dev branch (``name`` only: a checkout, never a ``ref`` reset) and verify it."""
        answer = await self._call(
            "PUT",
            f"/projects/{quote(project, safe='')}/git_branch",
            what=f"the checkout of branch {branch!r} in project {project!r}",
            error=PinFailed,
            kind=lambda status: f"branch_{status}",
            token=token,
            payload={"name": branch},
            span="PUT git_branch",
        )
        if answer.get("name") != branch:
            raise PinFailed(
                f"Looker reports branch {answer.get('name')!r} checked out in project "
                f"{project!r} after a checkout of {branch!r}",
                retry_after=0.0,
                kind="wrong_branch",
            )

    async def identify(self, token: Secret) -> list[str]:
        """The API client ids of the user behind a token (GET /user: credentials_api3).

        Raises Unauthenticated when Looker does not accept the token."""
        body = await self._call(
            "GET",
            "/user",
            what="GET /user",
            error=PinFailed,
            kind=_token_kind("identify"),
            token=token,
            params={"fields": "id,credentials_api3"},
        )
        creds = body.get("credentials_api3")
        if not isinstance(creds, list):
            return []
        return [
            c["client_id"]
            for c in creds
            if isinstance(c, dict) and isinstance(c.get("client_id"), str)
        ]

    async def session_state(
        self, token: Secret, project: str | None
    ) -> tuple[str | None, str | None]:
        """(workspace, checked-out branch of ``project`` or None) of a session, read back
        (``GET /session``, ``GET /projects/{id}/git_branch``). Unauthenticated on a 401."""
        session = await self._call(
            "GET",
            "/session",
            what="GET /session",
            error=PinFailed,
            kind=_token_kind("verify"),
            token=token,
        )
        workspace = session.get("workspace_id")
        branch = None
        if project is not None:
            answer = await self._call(
                "GET",
                f"/projects/{quote(project, safe='')}/git_branch",
                what=f"GET /projects/{project}/git_branch",
                span="GET git_branch",
                error=PinFailed,
                kind=_token_kind("branch"),
                token=token,
            )
            branch = answer.get("name") if isinstance(answer.get("name"), str) else None
        return (workspace if isinstance(workspace, str) else None), branch

    async def _session(self, token: Secret) -> dict[str, Any]:
        return await self._call(
            "GET",
            "/session",
            what="GET /session",
            error=PinFailed,
            kind=lambda status: f"verify_{status}",
            token=token,
        )

    async def logout(self, token: Secret) -> bool:
        """Best effort DELETE /logout; True when Looker confirmed."""
        with tracing.child("looker DELETE /logout", {tracing.METHOD: "DELETE"}) as step:
            try:
                async with self._http.delete(
                    f"{self._api}/logout",
                    headers={"Authorization": auth_header(token), **step.headers()},
                    timeout=self._timeout,
                    ssl=self._ssl,
                ) as resp:
                    step.answered(resp.status)
                    return resp.status in (200, 204)
            except (aiohttp.ClientError, TimeoutError) as exc:
                step.set(tracing.OUTCOME, type(exc).__name__)
                return False


def _access_token(body: dict[str, Any]) -> LookerToken:
    token, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not token or not isinstance(expires_in, int):
        raise LoginFailed(
            "Looker's login answer had no usable access_token/expires_in",
            retry_after=0.0,
            kind="bad_response",
        )
    if expires_in <= 0:
        raise LoginFailed(
            "Looker's login answer had a non-positive expires_in",
            retry_after=0.0,
            kind="bad_response",
        )
    return LookerToken(Secret(token), expires_in)


async def _json_body(
    resp: aiohttp.ClientResponse, error: type[SessionUnavailable], what: str
) -> dict[str, Any]:
    raw = await resp.content.read(_MAX_BODY + 1)
    try:
        if len(raw) > _MAX_BODY:
            raise ValueError("too large")
        body = json.loads(raw)
    except ValueError:
        raise error(
            f"Looker's answer to {what} was not valid JSON", retry_after=0.0, kind="bad_response"
        ) from None
    if not isinstance(body, dict):
        raise error(
            f"Looker's answer to {what} was not a JSON object", retry_after=0.0, kind="bad_response"
        )
    return body


def _unreachable(error: type[SessionUnavailable], what: str, exc: BaseException) -> Exception:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        reason = f"Looker's TLS certificate did not verify for {what} (see looker.ca_file)"
        return error(reason, retry_after=0.0, kind="tls")
    timeout = isinstance(exc, TimeoutError | asyncio.TimeoutError)
    reason = f"{what} to Looker timed out" if timeout else f"Looker is unreachable for {what}"
    return error(reason, retry_after=0.0, kind="timeout" if timeout else "unreachable")
