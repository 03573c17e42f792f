"""Passthrough mode: callers bring their own Looker credentials; the proxy pins their sessions.

A caller's ``POST /login`` is forwarded to Looker; the new session is PATCHed to the team's
workspace (and branch) and verified, then sealed into a proxy token (``sealed``): the caller
gets a ``wp2.`` token and never Looker's, so it cannot move the session behind the proxy's back.
A sealed token is opened on every call (no Looker call, no shared state: replicas stay
stateless); a logout revokes its id and ends the Looker session. A raw Looker token the caller
got elsewhere is pinned on first sight and re-verified at a short interval (``firstsight``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Final

import structlog

from workspace_proxy.auth import IssuedToken
from workspace_proxy.callerpins import CallerPins
from workspace_proxy.config import Config, Secret, TeamConfig
from workspace_proxy.errors import Forbidden, LoginFailed, LoginRefused, Unauthenticated
from workspace_proxy.firstsight import NO_TEAM, Recheck, pin
from workspace_proxy.looker import LookerClient, LookerToken
from workspace_proxy.revocations import Revocations
from workspace_proxy.sealed import SealedSession, Sealer, is_sealed
from workspace_proxy.session import Clock, PinnedSession, fingerprint
from workspace_proxy.status import Status

log = structlog.get_logger("workspace_proxy.passthrough")
_OPENED_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Pinned:
    """A passthrough caller's team and pinned Looker session (``sealed``: from a ``wp2.``
    token; None for a raw Looker token)."""

    team: TeamConfig
    session: PinnedSession
    sealed: SealedSession | None = None


class Passthrough:
    """Logins, sudo, logouts and the pinned sessions of passthrough callers."""

    def __init__(
        self,
        config: Config,
        client: LookerClient,
        *,
        sealer: Sealer,
        revocations: Revocations,
        raw: Recheck,
        pins: CallerPins | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        """``raw`` verifies raw Looker tokens (here, or in the supervisor); ``pins`` keeps how
        the pins of each team go (``/readyz``); ``wall`` dates sealed tokens (they outlive this
        process), ``clock`` everything else."""
        self.pins = pins or CallerPins(clock=clock)
        self._config = config
        self._client = client
        self._sealer = sealer
        self._revocations = revocations
        self._raw = raw
        self._clock = clock
        self._wall = wall
        self._opened: dict[str, Pinned] = {}
        """Sealed tokens opened so far (the per-call cost is AES-GCM and a hash otherwise)."""

    def team_for_login(self, client_id: str | None) -> TeamConfig | None:
        return self._config.passthrough_team(client_id) if client_id else None

    async def login(self, team: TeamConfig, client_id: str, client_secret: str) -> IssuedToken:
        """Forward the caller's login, pin the new session, then seal it into a proxy token."""
        started = self._wall()
        self.pins.check(team, client_id)  # a configuration error stands: no call to Looker
        login = await self._looker_login(client_id, client_secret)
        await self.pins.attempt(team, client_id, lambda: self._pin_new(login, team))
        log.info("passthrough_login", team=team.name, session=fingerprint(login.token))
        return self._seal(team, login, started, sudo=None)

    async def refuse(self, client_id: str, client_secret: str) -> None:
        """A login whose client id is neither a caller's nor a passthrough team's: refused as
        Looker's answer says, 404 for credentials Looker refuses too, and for a Looker user in
        no team the 403 its tokens get (the session Looker opened is ended at once)."""
        try:
            login = await self._looker_login(client_id, client_secret)
        except LoginRefused:
            raise LoginRefused("unknown_caller") from None  # unknown here and at Looker
        await self._client.logout(login.token)
        raise Forbidden(NO_TEAM)

    async def _looker_login(self, client_id: str, client_secret: str) -> LookerToken:
        try:
            return await self._client.login(Secret(client_id), Secret(client_secret))
        except LoginFailed as exc:
            if exc.kind == "rejected":  # Looker's own answer to wrong credentials
                raise LoginRefused("looker_refused") from None
            raise

    async def sudo(self, caller: Pinned, user_id: str) -> IssuedToken:
        """Forward the caller's sudo login, pin the new session, seal it (acting as user_id)."""
        started = self._wall()
        login = await self._client.login_user(caller.session.token, user_id)
        team = caller.team
        await self.pins.attempt(team, f"sudo:{user_id}", lambda: self._pin_new(login, team))
        log.info("passthrough_sudo", team=caller.team.name, session=fingerprint(login.token))
        return self._seal(caller.team, login, started, sudo=user_id)

    def ready(self, token: Secret) -> Pinned | None:
        """The team and pinned session behind a token when no Looker call is needed: a sealed
        token, or a raw one verified recently; None when ``resolve`` must call Looker."""
        if is_sealed(token.reveal()):
            return self._open(token)
        verified = self._raw.known(token)
        if verified is None:
            return None
        now = self._clock()
        return Pinned(verified.team, self._session(token, verified.team, now + verified.valid_for))

    async def resolve(self, token: Secret) -> Pinned:
        """The team and pinned session behind a caller's sealed or raw Looker token."""
        known = self.ready(token)
        if known is not None:
            return known
        verified = await self._raw.verify(token)
        now = self._clock()
        return Pinned(verified.team, self._session(token, verified.team, now + verified.valid_for))

    async def logout(self, caller: Pinned) -> None:
        """The caller logs out: a sealed token is revoked (on every worker, before this
        returns); the Looker session itself is ended by forwarding the logout."""
        if caller.sealed is not None:
            await self._revocations.revoke(caller.sealed.token_id, caller.sealed.expires_at)
        else:
            self._raw.forget(caller.session.token)

    def forget(self, caller: Pinned) -> None:
        """Looker rejected the caller's session (401): it must log in again."""
        if caller.sealed is None:
            self._raw.forget(caller.session.token)

    def _open(self, token: Secret) -> Pinned:
        """A sealed token opened (once: opened tokens are remembered, bounded) and checked on
        every use: not logged out, not expired, its team still as it was sealed for."""
        text = token.reveal()
        pinned = self._opened.get(text)
        if pinned is not None:
            sealed = pinned.sealed
            assert sealed is not None
            if sealed.token_id in self._revocations or sealed.expires_at <= self._wall():
                del self._opened[text]
                raise Unauthenticated()
            return pinned
        pinned = self._unseal(token)
        if len(self._opened) >= _OPENED_MAX:
            self._opened.clear()
        self._opened[text] = pinned
        return pinned

    def _unseal(self, token: Secret) -> Pinned:
        sealed = self._sealer.open(token.reveal())
        team = self._config.teams.get(sealed.team)
        if (
            sealed.token_id in self._revocations
            or team is None
            or not team.passthrough
            or team.workspace != sealed.workspace
            or team.branch_label != sealed.branch
            or (sealed.sudo is not None and not team.allow_sudo)
        ):
            # Logged out, or the team is gone, managed now, or pinned elsewhere since.
            raise Unauthenticated()
        left = sealed.expires_at - self._wall()
        return Pinned(team, self._session(sealed.looker_token, team, self._clock() + left), sealed)

    async def _pin_new(self, login: LookerToken, team: TeamConfig) -> None:
        try:
            await pin(self._client, login.token, team)
        except BaseException:
            # Never leave an unpinned session behind; the caller never sees it.
            await asyncio.shield(self._client.logout(login.token))
            raise

    def _seal(
        self, team: TeamConfig, login: LookerToken, started: float, *, sudo: str | None
    ) -> IssuedToken:
        ttl = min(login.expires_in, self._config.caller_token_ttl_s)
        sealed = SealedSession(
            team=team.name,
            looker_token=login.token,
            expires_at=int(started) + ttl,
            token_id=secrets.token_urlsafe(12),
            workspace=team.workspace,
            branch=team.branch_label,
            sudo=sudo,
        )
        return IssuedToken(self._sealer.seal(sealed), ttl)

    def _session(self, token: Secret, team: TeamConfig, usable_until: float) -> PinnedSession:
        now = self._clock()
        return PinnedSession(
            token=token,
            team=team.name,
            workspace=team.workspace,
            generation=0,
            fingerprint=fingerprint(token),
            pinned_at=now,
            refresh_at=usable_until,
            usable_until=usable_until,
        )


class CallerSession:
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
        return self._passthrough.pins.status(self._pinned.team)[1]

    def ready(self) -> PinnedSession | None:
        return self._pinned.session

    async def get(self) -> PinnedSession:
        return self._pinned.session

    async def replace(self, stale: PinnedSession) -> PinnedSession:
        self._passthrough.forget(self._pinned)
        raise Unauthenticated()

    async def close(self, *, wait: bool = False) -> None:
        return None
