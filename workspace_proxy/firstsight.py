"""Raw Looker tokens of passthrough callers: identified and pinned on first sight, re-verified
every ``REVERIFY_S`` seconds.

A caller may bring a Looker token the proxy did not hand out (it logged in at Looker itself).
Before anything is forwarded with it, ``GET /user`` names its team (its API client id) and the
session is PATCHed to the team's workspace (and branch) and verified. Whoever holds such a token
can move its session directly at Looker, so the proxy reads ``GET /session`` (and the branch)
again every ``REVERIFY_S`` seconds, re-pins a session that drifted (warning
``passthrough_session_drifted``) and fails closed (503) when it cannot. Verification is single
flight per token; with ``--workers`` it runs once for the whole instance, in the supervisor
(``sharing``). Knows nothing of web requests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog

from workspace_proxy.callerpins import CallerPins
from workspace_proxy.config import Config, Secret, TeamConfig
from workspace_proxy.errors import Forbidden, Unauthenticated
from workspace_proxy.flight import SingleFlight
from workspace_proxy.looker import LookerClient
from workspace_proxy.session import Clock, fingerprint

log = structlog.get_logger("workspace_proxy.passthrough")
REVERIFY_S: Final = 30.0
"""How long a raw Looker token's verified pin is trusted before GET /session is read again: the
longest a session moved at Looker behind the proxy's back can serve calls through the proxy."""
_CACHE_MAX: Final = 10_000
NO_TEAM: Final = "workspace-proxy: this Looker user is not configured for any passthrough team."


@dataclass(frozen=True, slots=True)
class Verified:
    """A raw token's team, and for how long its pin may be trusted from now."""

    team: TeamConfig
    valid_for: float


Check = Callable[[Secret, TeamConfig | None], Awaitable[Verified]]
"""Verify (and pin) a token; the team it was verified for last time, or None on first sight."""


class Recheck:
    """A raw token's verification, cached until it is due again and single flight per token."""

    def __init__(self, check: Check, *, clock: Clock = time.monotonic) -> None:
        self._check = check
        self._clock = clock
        self._known: OrderedDict[str, tuple[TeamConfig, float]] = OrderedDict()
        self._flights: dict[str, SingleFlight[Verified]] = {}

    def known(self, token: Secret) -> Verified | None:
        """The verification of a token that is not due again yet, if any."""
        known = self._known.get(fingerprint(token))
        now = self._clock()
        if known is not None and now < known[1]:
            return Verified(known[0], known[1] - now)
        return None

    async def verify(self, token: Secret) -> Verified:
        key = fingerprint(token)
        known = self._known.get(key)
        now = self._clock()
        if known is not None and now < known[1]:
            return Verified(known[0], known[1] - now)
        flight = self._flights.get(key)
        if flight is None:

            def landed(_: BaseException | None) -> None:
                self._flights.pop(key, None)

            flight = self._flights[key] = SingleFlight(landed)
        return await flight.join(lambda: self._run(token, key, known[0] if known else None))

    def forget(self, token: Secret) -> None:
        """Looker rejected the token, or it was logged out."""
        self._known.pop(fingerprint(token), None)

    async def _run(self, token: Secret, key: str, team: TeamConfig | None) -> Verified:
        try:
            verified = await self._check(token, team)
        except Unauthenticated:
            self._known.pop(key, None)
            raise
        self._known[key] = (verified.team, self._clock() + verified.valid_for)
        self._known.move_to_end(key)
        while len(self._known) > _CACHE_MAX:
            self._known.popitem(last=False)
        return verified


def looker_check(config: Config, client: LookerClient, pins: CallerPins) -> Check:
    """Verification against Looker, by this process (one process, or the supervisor); the
    pins' outcomes are kept in ``pins``."""

    async def check(token: Secret, team: TeamConfig | None) -> Verified:
        session = fingerprint(token)
        if team is None or config.teams.get(team.name) != team:
            team, client_id = await _identify(config, client, token)
            pinned = team
            await pins.attempt(team, client_id, lambda: pin(client, token, pinned))
            log.info("passthrough_pinned_on_first_sight", team=team.name, session=session)
            return Verified(team, REVERIFY_S)
        project = team.git_branch.project if team.git_branch else None
        workspace, branch = await client.session_state(token, project)
        if workspace != team.workspace or (team.git_branch and branch != team.git_branch.name):
            log.warning(
                "passthrough_session_drifted",
                team=team.name,
                session=session,
                expected=team.workspace,
                observed=workspace,
                observed_branch=branch,
            )
            drifted = team
            await pins.attempt(team, session, lambda: pin(client, token, drifted))
        return Verified(team, REVERIFY_S)

    return check


async def pin(client: LookerClient, token: Secret, team: TeamConfig) -> None:
    """PATCH the session to the team's workspace (and check its branch out), verified."""
    await client.pin(token, team.workspace)
    if team.git_branch is not None:
        await client.checkout(token, team.git_branch.project, team.git_branch.name)


async def _identify(config: Config, client: LookerClient, token: Secret) -> tuple[TeamConfig, str]:
    """The passthrough team of the user behind a token, and the client id that names it."""
    client_ids = await client.identify(token)
    found = next(
        ((t, cid) for cid in client_ids if (t := config.passthrough_team(cid)) is not None),
        None,
    )
    if found is None:
        raise Forbidden(NO_TEAM)
    return found
