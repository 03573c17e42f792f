"""The forwarding flow, written once and without I/O (sans-IO, as httpx's auth flows are).

``forward_flow`` is a generator: it yields what it needs (``Slot``, ``Session``, ``Send``,
``Replace``), the transport does it and sends the result back (or throws the error it met into
the generator). It returns when the answer Looker gave may go to the caller; it raises the
ProxyError the caller gets instead (the transport maps it with ``errors.answer``). The flow:

1. take the team's concurrency slot (``Slot``; 429 when they are all taken);
2. obtain the pinned session (``Session``; fail closed with 503 + Retry-After when none can be
   had — the session manager decides how long to wait);
3. send the request (``Send``) and look at the status of Looker's answer;
4. on 401, have the session re-pinned (``Replace``, single flight: a 401 for a session already
   replaced reuses the new one), then replay the request once if its body was buffered; a
   streamed body cannot be replayed (503, Retry-After 1: the new session is ready); a second
   401 is a 503.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Final

from workspace_proxy.decision import Body, Forward, SessionKey
from workspace_proxy.errors import SessionUnavailable
from workspace_proxy.session import PinnedSession

REJECTED: Final = 401


@dataclass(frozen=True, slots=True)
class Slot:
    """Take one of ``team``'s concurrency slots (the transport releases it at the end)."""

    team: str


@dataclass(frozen=True, slots=True)
class Session:
    """The pinned session for ``key``; the answer is a PinnedSession."""

    key: SessionKey


@dataclass(frozen=True, slots=True)
class Send:
    """Send the request under ``session`` (None: without credentials); the answer is the status
    of Looker's answer, once its head has arrived."""

    session: PinnedSession | None
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Replace:
    """Looker rejected ``stale``: the answer is the session pinned in its place. The transport
    discards the rejected answer."""

    key: SessionKey
    stale: PinnedSession


Need = Slot | Session | Send | Replace
Flow = Generator[Need, object, None]


def forward_flow(forward: Forward) -> Flow:
    """See the module docstring. Sent values: None for Slot, a PinnedSession for Session and
    Replace, the int status for Send."""
    if forward.team is not None:
        yield Slot(forward.team)
    if forward.key is None:
        yield Send(None)
        return
    session = yield Session(forward.key)
    assert isinstance(session, PinnedSession)
    status = yield Send(session)
    if status != REJECTED:
        return
    fresh = yield Replace(forward.key, session)
    assert isinstance(fresh, PinnedSession)
    if forward.body is Body.STREAM:
        raise SessionUnavailable(
            "Looker ended the team's session while this request's body was being streamed; "
            "a new pinned session is ready",
            retry_after=1.0,
            kind="not_replayable",
        )
    status = yield Send(fresh, replay=True)
    if status == REJECTED:
        raise SessionUnavailable(
            "Looker rejected a freshly pinned session", retry_after=5.0, kind="rejected"
        )
