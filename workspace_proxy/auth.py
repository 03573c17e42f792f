"""Callers authenticate to the proxy the Looker way.

``POST /api/<v>/login`` with a caller's proxy credentials yields a *proxy token*: an HMAC-signed,
self-contained statement (team, caller, expiry) that every replica holding the same signing key
accepts, before and after restarts. Looker's own tokens never leave the proxy.
Knows nothing of aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from workspace_proxy.config import Caller, Config, Secret, TeamConfig
from workspace_proxy.errors import LoginRefused, Unauthenticated
from workspace_proxy.revocations import Revocations

PREFIX: Final = "wp1"
_SCHEMES: Final = ("token", "bearer")
_CACHE_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    team: str
    caller: str
    token_id: str
    expires_at: float
    sudo: str | None = None
    """The Looker user this token acts as (POST /login/{user_id}), if any."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: Secret
    expires_in: int

    def as_looker_json(self) -> dict[str, object]:
        return access_token_json(self.access_token, self.expires_in)


def access_token_json(token: Secret, expires_in: int) -> dict[str, object]:
    """A login answer with exactly the keys Looker returns (spectacles crashes on any other)."""
    return {"access_token": token.reveal(), "token_type": "Bearer", "expires_in": expires_in}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_proxy_token(token: str) -> bool:
    """Proxy tokens start with ``wp1.``; anything else is someone else's (Looker's) token."""
    return token.startswith(PREFIX + ".")


def bearer_value(header: str | None) -> str | None:
    """The token of ``Authorization: token X`` or ``Bearer X`` (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() not in _SCHEMES or not value or " " in value:
        return None
    return value


class CallerAuth:
    """Issues, verifies and revokes proxy tokens for one configuration."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        revocations: Revocations | None = None,
    ) -> None:
        """``revocations`` outlive one config (a reload keeps every logout); by default a new,
        unshared list."""
        self._key = config.token_signing_key.reveal().encode()
        self._ttl = config.caller_token_ttl_s
        self._clock = clock
        self._teams: Mapping[str, TeamConfig] = config.teams
        self._callers: dict[str, tuple[str, Caller]] = {
            c.client_id: (team.name, c) for team in config.teams.values() for c in team.callers
        }
        self._dummy = Secret(secrets.token_urlsafe(32))
        self._revoked = revocations if revocations is not None else Revocations(clock=clock)
        self._verified: dict[str, Principal] = {}

    def login(self, client_id: str | None, client_secret: str | None) -> IssuedToken:
        """Check caller credentials in constant time; 404 like Looker when wrong (its ``kind``
        says why, for the log)."""
        team_name, caller = self._callers.get(client_id or "", ("", None))
        expected = caller.client_secret if caller else self._dummy
        ok = hmac.compare_digest(expected.reveal().encode(), (client_secret or "").encode())
        if caller is None:
            raise LoginRefused("unknown_caller" if client_id else "no_credentials")
        if not ok:
            raise LoginRefused("wrong_secret")
        return self.issue(team_name, caller.client_id)

    def team_of(self, client_id: str | None) -> str | None:
        """The team of a caller id (None: no caller of ours)."""
        return self._callers.get(client_id or "", (None, None))[0]

    def issue(
        self, team: str, caller: str, *, sudo: str | None = None, ttl: int | None = None
    ) -> IssuedToken:
        ttl = self._ttl if ttl is None else min(ttl, self._ttl)
        claims: dict[str, object] = {
            "t": team,
            "c": caller,
            "e": int(self._clock()) + ttl,
            "j": secrets.token_urlsafe(12),
        }
        if sudo is not None:
            claims["s"] = sudo
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{PREFIX}.{body}"
        return IssuedToken(Secret(f"{signed}.{self._sign(signed)}"), ttl)

    def verify(self, authorization: str | None) -> Principal:
        """The caller behind an Authorization header, or Unauthenticated (401)."""
        return self.verify_token(bearer_value(authorization))

    def verify_token(self, token: str | None) -> Principal:
        """The caller behind a token (the Authorization header's value), or Unauthenticated."""
        if token is None:
            raise Unauthenticated()
        now = self._clock()
        principal = self._verified.get(token)
        if principal is None:
            principal = self._decode(token)
            if len(self._verified) >= _CACHE_MAX:
                self._verified.clear()
            self._verified[token] = principal
        if principal.expires_at <= now or principal.token_id in self._revoked:
            raise Unauthenticated()
        return principal

    def valid(self, principal: Principal) -> bool:
        """Whether a principal verified before is still good now (not expired, not logged out)."""
        return principal.expires_at > self._clock() and principal.token_id not in self._revoked

    async def revoke(self, principal: Principal) -> None:
        """End a proxy token (logout): on this replica, and with ``--workers`` on every worker
        of the instance before this returns."""
        await self._revoked.revoke(principal.token_id, principal.expires_at)

    def _sign(self, signed: str) -> str:
        return _b64(hmac.new(self._key, signed.encode(), hashlib.sha256).digest())

    def _decode(self, token: str) -> Principal:
        prefix, _, rest = token.partition(".")
        body, _, mac = rest.partition(".")
        if prefix != PREFIX or not body or not mac:
            raise Unauthenticated()
        if not hmac.compare_digest(self._sign(f"{prefix}.{body}").encode(), mac.encode()):
            raise Unauthenticated()
        try:
            claims = json.loads(_unb64(body))
            team, caller, exp, jti = claims["t"], claims["c"], claims["e"], claims["j"]
            sudo = claims.get("s")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise Unauthenticated() from None
        # Every claim is checked for its type before it is used (a list as team claim was a
        # TypeError, answered 500): a wrong type is a 401 like any other bad token.
        if not (
            isinstance(team, str)
            and isinstance(caller, str)
            and type(exp) is int
            and isinstance(jti, str)
            and (sudo is None or isinstance(sudo, str))
        ):
            raise Unauthenticated()
        known = self._teams.get(team)
        if known is None or not any(c.client_id == caller for c in known.callers):
            # The caller or team was removed from the config since the token was issued.
            raise Unauthenticated()
        if sudo is not None and not known.allow_sudo:
            raise Unauthenticated()  # sudo was allowed when issued, and is not any more
        return Principal(team=team, caller=caller, token_id=jti, expires_at=float(exp), sudo=sudo)
