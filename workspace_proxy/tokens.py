"""Pinned Looker sessions, one per team.

A session is *published* (made visible to forwarding) only after LookerClient has logged in,
PATCHed ``/session`` to the team's workspace and verified it (and, for a team that pins a dev
branch, checked out and verified that branch), so nothing can ever observe a token between login
and pin. Logins are single-flight per team; refresh happens ahead of expiry in the
background while in-flight and new requests keep using the old, still valid, pinned session.
Each attempt is a ``pin`` span (``tracing.child``) when a traced request started it; its Looker
calls are its children. Knows nothing of web requests. The types shared with the session's
users are in ``session``, sudo sessions (built on ``TeamSession``) in ``sudo``, and every
team's session, by name, in ``manager``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Final

import structlog

from workspace_proxy import tracing
from workspace_proxy.config import Retry, TeamConfig
from workspace_proxy.errors import SessionUnavailable
from workspace_proxy.fixes import fix_for, permanent_wait
from workspace_proxy.flight import SingleFlight
from workspace_proxy.session import (
    Clock,
    PinnedSession,
    ProviderFactory,
    SessionEvents,
    SessionSource,
    Sleep,
    fingerprint,
)
from workspace_proxy.status import State, Status

log = structlog.get_logger("workspace_proxy.tokens")


class _NoEvents:
    def session_event(self, team: str, event: str, outcome: str) -> None:
        return None

    def pin_attempt(self, team: str, outcome: str) -> None:
        return None


def deadlines(now: float, expires_in: float) -> tuple[float, float]:
    """(refresh_at, usable_until) for a token Looker said lives ``expires_in`` seconds.

    Refresh starts when a quarter of the lifetime (at most 5 minutes) is left; the session stops
    being handed out when a tenth (at most 30 s) is left, so a forwarded call never starts on a
    token about to die.
    """
    usable_until = now + expires_in - min(30.0, expires_in * 0.1)
    refresh_at = now + expires_in - min(300.0, expires_in * 0.25)
    return refresh_at, usable_until


def next_wait(retry: Retry, hinted: float, *, rand: Callable[[], float]) -> float:
    """Seconds from a failed attempt to the next: uniform over half to one and a half times
    ``retry.interval_s`` (so the mean rate is one attempt per interval, and teams that failed
    together drift apart), never shorter than Looker's Retry-After."""
    return max(retry.interval_s * (0.5 + rand()), hinted)


class TeamSession:
    """The pinned Looker session of one team.

    While Looker fails, attempts to pin are spaced by ``retry.interval_s`` on average (see
    ``next_wait``), however many calls want a session: calls wait for the next attempt when it
    is due within their ``retry.deadline_s`` and are served by the first that succeeds;
    otherwise they get 503 with Retry-After = the time to the next attempt. A failure that is a
    configuration error (``fixes``: credentials refused, a workspace or branch Looker will not
    give) is not waited for, and the next attempt is minutes away."""

    def __init__(
        self,
        team: TeamConfig,
        source: SessionSource,
        retry: Retry,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        events: SessionEvents | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.team = team
        self._source = source
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._events = events or _NoEvents()
        self._rand = rand
        self._current: PinnedSession | None = None
        self._flight: SingleFlight[PinnedSession] = SingleFlight()
        self._generation = 0
        self._attempts = 0
        self._permanent = 0
        """Configuration errors in a row (``fixes.permanent_wait``)."""
        self._next_attempt = 0.0
        self._last_error: SessionUnavailable | None = None
        self._closed = False

    @property
    def current(self) -> PinnedSession | None:
        """The published session, if any (for health and metrics; may be past refresh_at)."""
        return self._current

    @property
    def healthy(self) -> bool:
        """True unless the team needed a session and cannot have one right now."""
        s = self._current
        if s is not None and self._clock() < s.usable_until:
            return True
        return self._last_error is None

    def status(self) -> Status:
        now = self._clock()
        s = self._current
        usable = s is not None and now < s.usable_until
        error = self._last_error
        if usable:
            state = State.REFRESHING if self._flight.running else State.OK
        elif self._flight.running:
            state = State.PINNING
        elif error is not None:
            state = State.FAILING if error.permanent else State.BACKING_OFF
        else:
            state = State.IDLE
        return Status(
            state=state,
            workspace=self.team.workspace,
            session_age_s=now - s.pinned_at if s is not None and usable else None,
            generation=s.generation if s is not None and usable else None,
            next_attempt_in_s=max(0.0, self._next_attempt - now) if error else None,
            last_error=error.reason if error is not None else None,
            attempts=self._attempts,
            branch=self.team.branch_label,
            verified=s.workspace if s is not None and usable else None,
            fix=error.fix if error is not None else None,
        )

    def ready(self) -> PinnedSession | None:
        """The session ``get`` would answer at once, or None when it would have to wait. Past
        its refresh time, a background refresh is started (when an attempt is due)."""
        s = self._current
        if s is None:
            return None
        now = self._clock()
        if now >= s.usable_until:
            return None
        if now >= s.refresh_at and not self._flight.running and now >= self._next_attempt:
            self._flight.start(lambda: self._attempt("refresh"))
        return s

    async def get(self) -> PinnedSession:
        """A verified session pinned to the team's workspace, or SessionUnavailable."""
        return self.ready() or await self._wait("login")

    async def replace(self, stale: PinnedSession) -> PinnedSession:
        """Looker rejected ``stale`` (401): re-pin (once, whoever else saw the 401)."""
        if self._current is stale:
            self._current = None
            self._events.session_event(self.team.name, "reauth", "started")
            log.info("session_rejected", team=self.team.name, generation=stale.generation)
            return await self._wait("reauth")
        return await self.get()

    async def close(self, *, wait: bool = False) -> None:
        """No new logins from now on; cancel a login under way, or let it finish (``wait``)."""
        self._closed = True
        await self._flight.close(wait=wait)

    async def _wait(self, reason: str) -> PinnedSession:
        """Wait for the attempts due within the deadline; the first success is the answer."""
        give_up_at = self._clock() + self._retry.deadline_s
        while True:
            if self._closed:
                raise SessionUnavailable(
                    "the proxy is shutting down", retry_after=1.0, kind="closed"
                )
            session = self.ready()
            if session is not None:
                return session
            wait = self._next_attempt - self._clock()
            if wait > 0 and not self._flight.running:
                error = self._last_error
                if error is None or error.permanent or self._clock() + wait > give_up_at:
                    raise _again(error or _NOT_YET, wait)
                await self._sleep(wait)
                continue
            try:
                return await self._flight.join(lambda: self._attempt(reason))
            except SessionUnavailable as exc:
                if exc.permanent:
                    # A configuration error: waiting for the next attempt will not change
                    # that; the call is answered now.
                    raise _again(exc, max(0.0, self._next_attempt - self._clock())) from None

    async def _attempt(self, reason: str) -> PinnedSession:
        """One attempt: login, PATCH, verify (and checkout); published on success, else the
        next attempt is scheduled."""
        self._attempts += 1
        team = self.team
        about: tracing.Attributes = {
            tracing.TEAM: team.name,
            tracing.WORKSPACE: team.workspace,
            tracing.REASON: reason,
            tracing.ATTEMPT: self._attempts,
        }
        try:
            with tracing.child("pin", about, client=False) as step:
                session = await self._pin_once(reason)
                step.set(tracing.GENERATION, session.generation)
        except SessionUnavailable as exc:
            fix = fix_for(self.team, exc.kind)
            if fix is None:
                self._permanent = 0
                delay = next_wait(self._retry, exc.retry_after, rand=self._rand)
            else:
                self._permanent += 1
                delay = max(permanent_wait(self._permanent), exc.retry_after)
            self._next_attempt = self._clock() + delay
            self._last_error = failure = _again(exc, delay, fix=fix)
            self._events.session_event(self.team.name, reason, exc.kind)
            self._events.pin_attempt(self.team.name, exc.kind)
            log.warning(
                "pin_failed",
                team=self.team.name,
                workspace=self.team.workspace,
                reason=exc.reason,
                kind=exc.kind,
                permanent=fix is not None,
                fix=fix,
                attempt=self._attempts,
                retry_in_s=round(delay, 3),
            )
            raise failure from None
        self._current = session
        self._next_attempt, self._last_error, self._permanent = 0.0, None, 0
        self._events.session_event(self.team.name, reason, "ok")
        self._events.pin_attempt(self.team.name, "ok")
        log.info(
            "session_published",
            team=self.team.name,
            workspace=session.workspace,
            generation=session.generation,
            session=session.fingerprint,
            reason=reason,
        )
        return session

    async def _pin_once(self, reason: str) -> PinnedSession:
        team = self.team
        started = self._clock()
        if team.looker_client_id is None or team.looker_client_secret is None:
            raise SessionUnavailable(
                "the team has no Looker credentials", retry_after=60.0, kind="no_credentials"
            )
        login = await self._source.login(team.looker_client_id, team.looker_client_secret)
        log.info("looker_login", team=team.name, session=fingerprint(login.token), reason=reason)
        try:
            await self._source.pin(login.token, team.workspace)
            if team.git_branch is not None:
                await self._source.checkout(
                    login.token, team.git_branch.project, team.git_branch.name
                )
        except BaseException:
            # Never leave an unpinned production session behind; it is never published.
            await asyncio.shield(self._source.logout(login.token))
            raise
        self._generation += 1
        refresh_at, usable_until = deadlines(started, login.expires_in)
        return PinnedSession(
            token=login.token,
            team=team.name,
            workspace=team.workspace,
            generation=self._generation,
            fingerprint=fingerprint(login.token),
            pinned_at=self._clock(),
            refresh_at=refresh_at,
            usable_until=usable_until,
        )


_NOT_YET: Final = SessionUnavailable(
    "the next attempt to pin a session is not due yet", retry_after=1.0, kind="backing_off"
)


def _again(
    exc: SessionUnavailable, retry_after: float, *, fix: str | None = None
) -> SessionUnavailable:
    """``exc`` again, answered with ``retry_after`` (and ``fix``, or the one it had)."""
    return type(exc)(exc.reason, retry_after=retry_after, kind=exc.kind, fix=fix or exc.fix)


def local_sessions(
    source: SessionSource,
    retry: Retry,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    events: SessionEvents | None = None,
) -> ProviderFactory:
    """Sessions logged in and pinned by this process."""
    return lambda team: TeamSession(team, source, retry, clock=clock, sleep=sleep, events=events)
