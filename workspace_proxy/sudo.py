"""Sudo sessions: a team's session acting as another Looker user, for teams with ``allow_sudo``.

Each (team session, Looker user) gets its own ``tokens.TeamSession`` whose logins are
``POST /login/{user_id}`` made with the team's pinned session (``SudoSource``), so a sudo session
is pinned, published, refreshed and re-pinned exactly as the team's own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from workspace_proxy.config import Retry, Secret
from workspace_proxy.errors import SessionUnavailable
from workspace_proxy.looker import LookerToken
from workspace_proxy.session import Clock, SessionEvents, SessionProvider, SessionSource, Sleep
from workspace_proxy.tokens import TeamSession


class SudoSource:
    """Sessions of another Looker user, made with the team's pinned session (sudo).

    ``login`` ignores the credentials TeamSession passes: it calls ``POST /login/{user_id}`` with
    the parent's token, re-pinning the parent once if Looker rejected it."""

    def __init__(self, parent: SessionProvider, user_id: str, client: SudoClient) -> None:
        self._parent = parent
        self._user_id = user_id
        self._client = client

    async def login(self, client_id: Secret, client_secret: Secret) -> LookerToken:
        parent = await self._parent.get()
        try:
            return await self._client.login_user(parent.token, self._user_id)
        except SessionUnavailable as exc:
            if exc.kind != "sudo_401":
                raise
        parent = await self._parent.replace(parent)
        return await self._client.login_user(parent.token, self._user_id)

    async def pin(self, token: Secret, workspace: str) -> None:
        await self._client.pin(token, workspace)

    async def checkout(self, token: Secret, project: str, branch: str) -> None:
        await self._client.checkout(token, project, branch)

    async def logout(self, token: Secret) -> bool:
        return await self._client.logout(token)


class SudoClient(SessionSource, Protocol):
    async def login_user(self, token: Secret, user_id: str) -> LookerToken: ...


class SudoSessions:
    """Pinned sudo sessions per (team session, Looker user), for teams with ``allow_sudo``."""

    def __init__(
        self,
        client: SudoClient,
        retry: Retry,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        events: SessionEvents | None = None,
        max_sessions: int = 1000,
    ) -> None:
        self._client = client
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._events = events
        self._max = max_sessions
        self._sessions: dict[tuple[int, str], TeamSession] = {}

    def get(self, parent: SessionProvider, user_id: str) -> TeamSession:
        key = (id(parent), user_id)
        session = self._sessions.get(key)
        if session is None or session.team is not parent.team:
            if len(self._sessions) >= self._max:
                self._sessions.pop(next(iter(self._sessions)))
            source = SudoSource(parent, user_id, self._client)
            session = TeamSession(
                parent.team,
                source,
                self._retry,
                clock=self._clock,
                sleep=self._sleep,
                events=self._events,
            )
            self._sessions[key] = session
        return session
