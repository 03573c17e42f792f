"""Passthrough mode: callers bring their own Looker credentials; the proxy pins their sessions.

A caller's ``POST /login`` is forwarded to Looker; the new session is PATCHed to the team's
workspace (and branch) and verified before its token is handed back. A token the proxy has not
seen (another replica, a restart) is identified (``GET /user``: its API client id names the team)
and pinned on first sight, before anything is forwarded with it. What was verified is cached by
token fingerprint for a bounded time, so replicas stay stateless.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import structlog

from workspace_proxy.config import Config, Secret, TeamConfig
from workspace_proxy.errors import Forbidden, LoginFailed, NotFound
from workspace_proxy.flight import SingleFlight
from workspace_proxy.looker import LookerClient, LookerToken
from workspace_proxy.tokens import Clock, PinnedSession, deadlines, fingerprint

log = structlog.get_logger("workspace_proxy.passthrough")
REVERIFY_S: Final = 600.0
"""A token pinned on first sight (lifetime unknown) is verified again after this long."""
_CACHE_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Pinned:
    team: TeamConfig
    session: PinnedSession


class Passthrough:
    """Pinned sessions of passthrough callers, keyed by token fingerprint."""

    def __init__(self, config: Config, client: LookerClient, *, clock: Clock = time.monotonic):
        self._config = config
        self._client = client
        self._clock = clock
        self._known: OrderedDict[str, Pinned] = OrderedDict()
        self._flights: dict[str, SingleFlight[Pinned]] = {}

    def team_for_login(self, client_id: str | None) -> TeamConfig | None:
        return self._config.passthrough_team(client_id) if client_id else None

    async def login(self, team: TeamConfig, client_id: str, client_secret: str) -> LookerToken:
        """Forward the caller's login, pin the new session, then hand the token back."""
        try:
            login = await self._client.login(Secret(client_id), Secret(client_secret))
        except LoginFailed as exc:
            if exc.kind == "rejected":
                raise NotFound() from None  # Looker's own answer to wrong credentials
            raise
        await self._pin(login.token, team)
        self._remember(login.token, team, login.expires_in)
        log.info("passthrough_login", team=team.name, session=fingerprint(login.token))
        return login

    async def sudo(self, token: Secret, user_id: str, team: TeamConfig) -> LookerToken:
        """Forward the caller's sudo login and pin the new session before handing it back."""
        login = await self._client.login_user(token, user_id)
        await self._pin(login.token, team)
        self._remember(login.token, team, login.expires_in)
        return login

    async def resolve(self, token: Secret) -> Pinned:
        """The team and pinned session of a caller's Looker token, pinning it on first sight."""
        key = fingerprint(token)
        known = self._known.get(key)
        if known is not None and self._clock() < known.session.usable_until:
            return known
        flight = self._flights.get(key)
        if flight is None:

            def landed(_: BaseException | None) -> None:
                self._flights.pop(key, None)

            flight = self._flights[key] = SingleFlight(landed)
        return await flight.join(lambda: self._first_sight(token))

    def forget(self, token: Secret) -> None:
        """Looker rejected the token, or the caller logged out."""
        self._known.pop(fingerprint(token), None)

    async def _first_sight(self, token: Secret) -> Pinned:
        client_ids = await self._client.identify(token)
        team = next(
            (t for cid in client_ids if (t := self._config.passthrough_team(cid)) is not None),
            None,
        )
        if team is None:
            raise Forbidden(
                "workspace-proxy: this Looker user is not configured for any passthrough team."
            )
        await self._pin(token, team)
        log.info("passthrough_pinned_on_first_sight", team=team.name, session=fingerprint(token))
        return self._remember(token, team, None)

    async def _pin(self, token: Secret, team: TeamConfig) -> None:
        await self._client.pin(token, team.workspace)
        if team.git_branch is not None:
            await self._client.checkout(token, team.git_branch.project, team.git_branch.name)

    def _remember(self, token: Secret, team: TeamConfig, expires_in: int | None) -> Pinned:
        now = self._clock()
        if expires_in is None:
            refresh_at = usable_until = now + REVERIFY_S
        else:
            refresh_at, usable_until = deadlines(now, expires_in)
        key = fingerprint(token)
        pinned = Pinned(
            team,
            PinnedSession(
                token=token,
                team=team.name,
                workspace=team.workspace,
                generation=0,
                fingerprint=key,
                pinned_at=now,
                refresh_at=refresh_at,
                usable_until=usable_until,
            ),
        )
        self._known[key] = pinned
        self._known.move_to_end(key)
        while len(self._known) > _CACHE_MAX:
            self._known.popitem(last=False)
        return pinned
