"""What a pinned session is, and the seams between the modules that pin one and those that use it.

``PinnedSession`` is a Looker token pinned to a team's workspace; ``SessionProvider`` is one
team's session, whoever pins it (``tokens.TeamSession``, a worker's view of the broker's in
``broker``, a passthrough caller's own in ``passthrough``); ``SessionSource`` is what pinning
needs from Looker and ``SessionEvents`` what it tells metrics; ``fingerprint`` names a token in
logs. Types only: the modules that pin sessions and those that forward with them (``flow``,
``leg``) import it, and it imports none of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from workspace_proxy.config import Secret, TeamConfig
from workspace_proxy.looker import LookerToken
from workspace_proxy.status import Status

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SessionSource(Protocol):
    """What TeamSession needs from Looker (LookerClient satisfies it)."""

    async def login(self, client_id: Secret, client_secret: Secret) -> LookerToken: ...
    async def pin(self, token: Secret, workspace: str) -> None: ...
    async def checkout(self, token: Secret, project: str, branch: str) -> None: ...
    async def logout(self, token: Secret) -> bool: ...


class SessionEvents(Protocol):
    """Observer for metrics; every method must be cheap and never raise."""

    def session_event(self, team: str, event: str, outcome: str) -> None: ...
    def pin_attempt(self, team: str, outcome: str) -> None: ...


def fingerprint(token: Secret) -> str:
    """A short, non-reversible name for a token, safe for logs and metrics."""
    return hashlib.sha256(token.reveal().encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class PinnedSession:
    token: Secret
    team: str
    workspace: str
    generation: int
    fingerprint: str
    pinned_at: float
    refresh_at: float
    """From here on a background refresh is started."""
    usable_until: float
    """After this the session is no longer handed out (a margin before Looker's expiry)."""


class SessionProvider(Protocol):
    """One team's pinned session: ``tokens.TeamSession``, or a worker's view of the broker's."""

    @property
    def team(self) -> TeamConfig: ...
    @property
    def current(self) -> PinnedSession | None: ...
    @property
    def healthy(self) -> bool: ...
    def status(self) -> Status: ...
    def ready(self) -> PinnedSession | None: ...
    async def get(self) -> PinnedSession: ...
    async def replace(self, stale: PinnedSession) -> PinnedSession: ...
    async def close(self, *, wait: bool = False) -> None: ...


ProviderFactory = Callable[[TeamConfig], SessionProvider]
