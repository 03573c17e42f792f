"""How the pins of passthrough callers' sessions go, per team: what ``/readyz`` shows for a
passthrough team, the ``pin_failed`` events, and the wait after a configuration error.

A passthrough team has no session of its own: each caller's login (and each raw Looker token)
is pinned on its own. ``CallerPins.attempt`` runs one such pin and keeps the team's record: the
attempts, the sessions pinned, the newest one's age, the last failure. A failure that is a
configuration error (``fixes``: a branch or project that does not exist, a workspace the Looker
user may not use) is remembered for that Looker user: its next logins are answered with the
same 503 at once, without a call to Looker, until the next attempt is due
(``fixes.permanent_wait``), so a caller retrying in a loop does not become a loop at Looker.
Knows nothing of web requests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import structlog

from workspace_proxy.config import TeamConfig
from workspace_proxy.errors import SessionUnavailable
from workspace_proxy.fixes import fix_for, permanent_wait
from workspace_proxy.status import PASSTHROUGH, State, Status

log = structlog.get_logger("workspace_proxy.passthrough")
Clock = Callable[[], float]
_HELD_MAX: Final = 10_000


@dataclass(slots=True)
class _Record:
    team: TeamConfig
    attempts: int = 0
    pinned: int = 0
    pinned_at: float | None = None
    error: SessionUnavailable | None = None
    """The last attempt's failure (None once one succeeds)."""
    held: dict[str, tuple[float, int, SessionUnavailable]] = field(default_factory=dict)
    """Looker users whose last attempt was a configuration error: (next attempt due, errors in
    a row, the error)."""


class CallerPins:
    """The records of every passthrough team (kept across reloads for unchanged teams)."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def configure(self, teams: Mapping[str, TeamConfig]) -> None:
        """Keep the records of teams whose settings are unchanged; start the others afresh."""
        records = {}
        for name, team in teams.items():
            if not team.passthrough:
                continue
            old = self._records.get(name)
            records[name] = old if old is not None and old.team == team else _Record(team)
        self._records = records

    def check(self, team: TeamConfig, who: str) -> None:
        """Raise the configuration error that still stands for ``who`` of ``team``, if any:
        the 503 it got, with the time left to its next attempt."""
        held = self._record(team).held.get(who)
        now = self._clock()
        if held is not None and now < held[0]:
            raise _again(held[2], held[0] - now)

    async def attempt(self, team: TeamConfig, who: str, pin: Callable[[], Awaitable[None]]) -> None:
        """Run ``pin`` for ``who`` (a Looker client id, or a token's fingerprint) of ``team``,
        unless its configuration error still stands (``check``)."""
        self.check(team, who)
        record = self._record(team)
        held = record.held.get(who)
        record.attempts += 1
        try:
            await pin()
        except SessionUnavailable as exc:
            fix = fix_for(team, exc.kind, caller=True)
            delay = exc.retry_after
            if fix is not None:
                failures = (held[1] if held is not None else 0) + 1
                delay = max(delay, permanent_wait(failures))
                if len(record.held) >= _HELD_MAX:
                    record.held.clear()
                record.held[who] = (self._clock() + delay, failures, exc)
            record.error = failure = _again(exc, delay, fix)
            log.warning(
                "pin_failed",
                team=team.name,
                mode=PASSTHROUGH,
                workspace=team.workspace,
                reason=exc.reason,
                kind=exc.kind,
                permanent=fix is not None,
                fix=fix,
                attempt=record.attempts,
                retry_in_s=round(delay, 3),
            )
            raise failure from None
        record.held.pop(who, None)
        record.error = None
        record.pinned += 1
        record.pinned_at = self._clock()

    def status(self, team: TeamConfig) -> tuple[bool, Status]:
        """(ready, status) of a passthrough team: ready unless its last attempt failed."""
        record = self._record(team)
        now = self._clock()
        error = record.error
        if error is not None:
            state = State.FAILING if error.permanent else State.BACKING_OFF
        else:
            state = State.OK if record.pinned else State.IDLE
        due = [until for until, _, _ in record.held.values() if until > now]
        return error is None, Status(
            state=state,
            workspace=team.workspace,
            session_age_s=None if record.pinned_at is None else now - record.pinned_at,
            generation=record.pinned or None,
            next_attempt_in_s=min(due) - now if due and error is not None else None,
            last_error=error.reason if error is not None else None,
            attempts=record.attempts,
            mode=PASSTHROUGH,
            branch=team.branch_label,
            verified=team.workspace if record.pinned and error is None else None,
            fix=error.fix if error is not None else None,
        )

    def _record(self, team: TeamConfig) -> _Record:
        record = self._records.get(team.name)
        if record is None or record.team != team:
            record = self._records[team.name] = _Record(team)
        return record


def _again(
    exc: SessionUnavailable, retry_after: float, fix: str | None = None
) -> SessionUnavailable:
    return type(exc)(exc.reason, retry_after=retry_after, kind=exc.kind, fix=fix or exc.fix)
