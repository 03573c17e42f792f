"""LookerClient: the proxy's own calls to Looker — login, pin the workspace, verify, logout.

Each failure becomes a LoginFailed or PinFailed with a ``kind`` (bounded, for metrics) and a
reason safe to show callers. Tokens travel as Secret; nothing here logs or echoes them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from workspace_proxy.config import LookerConfig, Secret
from workspace_proxy.errors import LoginFailed, PinFailed, SessionUnavailable, Unauthenticated

_JSON: Final = {"Content-Type": "application/json", "Accept": "application/json"}
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

    async def login(self, client_id: Secret, client_secret: Secret) -> LookerToken:
        form = {"client_id": client_id.reveal(), "client_secret": client_secret.reveal()}
        try:
            async with self._http.post(
                f"{self._api}/login", data=form, timeout=self._timeout, ssl=self._ssl
            ) as resp:
                if resp.status != 200:
                    raise LoginFailed(
                        f"Looker answered the team's login with HTTP {resp.status}",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                        kind=_failure_kind(resp.status),
                    )
                body = await _json_body(resp, LoginFailed, "login")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(LoginFailed, "login", exc) from None
        return _access_token(body)

    async def login_user(self, token: Secret, user_id: str) -> LookerToken:
        """Sudo: ``POST /login/{user_id}`` with an admin's token; a new session (production)."""
        url = f"{self._api}/login/{quote(user_id, safe='')}"
        try:
            async with self._http.post(
                url,
                headers={"Authorization": auth_header(token)},
                timeout=self._timeout,
                ssl=self._ssl,
            ) as resp:
                if resp.status != 200:
                    raise LoginFailed(
                        f"Looker answered sudo to user {user_id!r} with HTTP {resp.status}",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                        kind="sudo_401" if resp.status == 401 else _failure_kind(resp.status),
                    )
                body = await _json_body(resp, LoginFailed, "sudo login")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(LoginFailed, "sudo login", exc) from None
        return _access_token(body)

    async def pin(self, token: Secret, workspace: str) -> None:
        """PATCH the session to ``workspace`` and verify it; raise PinFailed unless verified."""
        headers = {**_JSON, "Authorization": auth_header(token)}
        payload = json.dumps({"workspace_id": workspace})
        try:
            async with self._http.patch(
                f"{self._api}/session",
                data=payload,
                headers=headers,
                timeout=self._timeout,
                ssl=self._ssl,
            ) as resp:
                if resp.status != 200:
                    raise PinFailed(
                        f"Looker answered PATCH /session with HTTP {resp.status}",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                        kind=f"patch_{resp.status}",
                    )
                answered = (await _json_body(resp, PinFailed, "PATCH /session")).get("workspace_id")
            if answered == workspace:
                # The PATCH answer is Looker's own statement of the session's workspace; a second
                # read would only add a round trip per login.
                return
            observed = await self.workspace(token)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(PinFailed, "PATCH /session", exc) from None
        if observed != workspace:
            raise PinFailed(
                f"Looker reports workspace {observed!r} after PATCH /session to {workspace!r}",
                retry_after=0.0,
                kind="wrong_workspace",
            )

    async def checkout(self, token: Secret, project: str, branch: str) -> None:
        """PUT the dev branch (``name`` only: a checkout, never a ``ref`` reset) and verify it."""
        url = f"{self._api}/projects/{quote(project, safe='')}/git_branch"
        headers = {**_JSON, "Authorization": auth_header(token)}
        try:
            async with self._http.put(
                url,
                data=json.dumps({"name": branch}),
                headers=headers,
                timeout=self._timeout,
                ssl=self._ssl,
            ) as resp:
                if resp.status != 200:
                    raise PinFailed(
                        f"Looker answered the checkout of branch {branch!r} in project "
                        f"{project!r} with HTTP {resp.status}",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                        kind=f"branch_{resp.status}",
                    )
                answered = (await _json_body(resp, PinFailed, "PUT git_branch")).get("name")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(PinFailed, "PUT git_branch", exc) from None
        if answered != branch:
            raise PinFailed(
                f"Looker reports branch {answered!r} checked out in project {project!r} "
                f"after a checkout of {branch!r}",
                retry_after=0.0,
                kind="wrong_branch",
            )

    async def identify(self, token: Secret) -> list[str]:
        """The API client ids of the user behind a token (GET /user: credentials_api3).

        Raises Unauthenticated when Looker does not accept the token."""
        try:
            async with self._http.get(
                f"{self._api}/user",
                params={"fields": "id,credentials_api3"},
                headers={"Accept": "application/json", "Authorization": auth_header(token)},
                timeout=self._timeout,
                ssl=self._ssl,
            ) as resp:
                if resp.status == 401:
                    raise Unauthenticated()
                if resp.status != 200:
                    raise PinFailed(
                        f"Looker answered GET /user with HTTP {resp.status}",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")) or 0.0,
                        kind=f"identify_{resp.status}",
                    )
                body = await _json_body(resp, PinFailed, "GET /user")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(PinFailed, "GET /user", exc) from None
        creds = body.get("credentials_api3")
        if not isinstance(creds, list):
            return []
        return [
            c["client_id"]
            for c in creds
            if isinstance(c, dict) and isinstance(c.get("client_id"), str)
        ]

    async def workspace(self, token: Secret) -> str | None:
        """GET /session and return its workspace_id."""
        async with self._http.get(
            f"{self._api}/session",
            headers={"Accept": "application/json", "Authorization": auth_header(token)},
            timeout=self._timeout,
            ssl=self._ssl,
        ) as resp:
            if resp.status != 200:
                raise PinFailed(
                    f"Looker answered GET /session with HTTP {resp.status}",
                    retry_after=0.0,
                    kind=f"verify_{resp.status}",
                )
            value = (await _json_body(resp, PinFailed, "GET /session")).get("workspace_id")
        return value if isinstance(value, str) else None

    async def logout(self, token: Secret) -> bool:
        """Best effort DELETE /logout; True when Looker confirmed."""
        try:
            async with self._http.delete(
                f"{self._api}/logout",
                headers={"Authorization": auth_header(token)},
                timeout=self._timeout,
                ssl=self._ssl,
            ) as resp:
                return resp.status in (200, 204)
        except (aiohttp.ClientError, TimeoutError):
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
