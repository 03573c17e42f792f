"""Every team's session, by team name, and what a configuration reload keeps of them.

Which kind of session a team has (``tokens.local_sessions``, or a worker's view of the broker's)
is the factory's business; the manager only holds them, carries unchanged teams' sessions over
to the next configuration and hands back the ones it no longer uses, for closing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from workspace_proxy.config import TeamConfig
from workspace_proxy.session import ProviderFactory, SessionProvider


class TokenManager:
    """All teams' sessions. Teams are looked up by name; unknown names are a programming error."""

    def __init__(
        self,
        teams: Mapping[str, TeamConfig],
        factory: ProviderFactory,
        *,
        keep: Mapping[str, SessionProvider] | None = None,
    ) -> None:
        """``keep``: sessions of a previous manager to carry over (same team config)."""
        keep = keep or {}
        self._sessions = {name: keep.get(name) or factory(team) for name, team in teams.items()}

    def __getitem__(self, team: str) -> SessionProvider:
        return self._sessions[team]

    def get(self, team: str) -> SessionProvider | None:
        return self._sessions.get(team)

    def teams(self) -> list[SessionProvider]:
        return list(self._sessions.values())

    def reconfigured(
        self, teams: Mapping[str, TeamConfig], factory: ProviderFactory, *, same_looker: bool
    ) -> tuple[TokenManager, list[SessionProvider]]:
        """A manager for a new config, and the sessions it no longer uses.

        Teams whose settings (and Looker) are unchanged keep their pinned session; changed teams
        get a new one, pinned on first use; removed teams' sessions are returned for closing.
        """
        keep = {
            name: old
            for name, old in self._sessions.items()
            if same_looker and teams.get(name) == old.team
        }
        new = TokenManager(teams, factory, keep=keep)
        retired = [old for name, old in self._sessions.items() if keep.get(name) is not old]
        return new, retired

    async def close(self) -> None:
        await close_all(self._sessions.values())


async def close_all(sessions: Iterable[SessionProvider], *, wait: bool = False) -> None:
    await asyncio.gather(*(s.close(wait=wait) for s in sessions))
