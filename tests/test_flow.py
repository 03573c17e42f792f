"""The forwarding flow (``flow.forward_flow``) without I/O: the test plays the transport, sending
each answer into the generator and checking what it asks for next."""

from __future__ import annotations

from typing import Final

import pytest

from workspace_proxy.config import Secret
from workspace_proxy.decision import Body, Forward, Managed, SessionKey
from workspace_proxy.errors import LookerUnavailable, SessionUnavailable, TooManyRequests
from workspace_proxy.flow import Flow, Replace, Send, Session, Slot, forward_flow
from workspace_proxy.session import PinnedSession

KEY: Final = Managed("analytics")
HEAD: Final = b"GET /api/4.0/user HTTP/1.1\r\nHost: looker.test\r\n"


def pinned(generation: int) -> PinnedSession:
    return PinnedSession(
        token=Secret(f"looker-token-{generation}"),
        team="analytics",
        workspace="dev",
        generation=generation,
        fingerprint=f"fp{generation}",
        pinned_at=0.0,
        refresh_at=1e9,
        usable_until=1e9,
    )


OLD: Final = pinned(1)
NEW: Final = pinned(2)


def make_forward(
    body: Body = Body.NONE,
    *,
    team: str | None = "analytics",
    key: SessionKey | None = KEY,
    length: int | None = None,
    chunked: bool = False,
) -> Forward:
    return Forward("user", team, key, HEAD, body, length, chunked)


def until_send(forward: Forward) -> tuple[Flow, list[object]]:
    """Start the flow and answer its Slot and Session; returns it with what it asked so far
    (ending with its first Send)."""
    flow = forward_flow(forward)
    asked: list[object] = [next(flow)]
    asked.append(flow.send(None))
    asked.append(flow.send(OLD))
    return flow, asked


def returns(flow: Flow, value: object) -> None:
    """Sending ``value`` ends the flow: Looker's answer may go to the caller."""
    with pytest.raises(StopIteration):
        flow.send(value)


def test_the_slot_comes_first_then_the_session_then_the_send() -> None:
    """A team's call takes its concurrency slot before anything else, then the pinned session,
    then sends under it."""
    _, asked = until_send(make_forward())
    assert asked == [Slot("analytics"), Session(KEY), Send(OLD)]


@pytest.mark.parametrize("status", [200, 201, 204, 304, 400, 403, 404, 422, 429, 500, 503])
def test_any_answer_but_401_is_the_callers(status: int) -> None:
    """Looker's answer other than 401 ends the flow at once: no replace, no replay."""
    flow, _ = until_send(make_forward(Body.BUFFER, length=10))
    returns(flow, status)


@pytest.mark.parametrize(("body", "length"), [(Body.NONE, None), (Body.BUFFER, 10)])
def test_a_401_replaces_the_session_and_replays_once(body: Body, length: int | None) -> None:
    """Looker rejects the session: the flow asks for the one pinned in its place (naming the
    rejected one, for single flight), then replays the call once under it."""
    flow, _ = until_send(make_forward(body, length=length))
    assert flow.send(401) == Replace(KEY, OLD)
    assert flow.send(NEW) == Send(NEW, replay=True)
    returns(flow, 200)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_401_with_a_streamed_body_is_not_replayable(chunked: bool) -> None:
    """A streamed body is gone: the session is still replaced (for the next call), then the
    caller gets 503 with Retry-After 1, never a replay."""
    forward = make_forward(Body.STREAM, length=None if chunked else 10_000_000, chunked=chunked)
    flow, _ = until_send(forward)
    assert flow.send(401) == Replace(KEY, OLD)
    with pytest.raises(SessionUnavailable) as raised:
        flow.send(NEW)
    error = raised.value
    assert (error.status, error.kind, error.retry_after) == (503, "not_replayable", 1.0)
    assert error.headers == {"Retry-After": "1"}


def test_a_second_401_is_a_503_not_a_loop() -> None:
    """A freshly pinned session rejected too: 503 rejected with Retry-After 5; the flow asked
    for exactly one replacement and one replay."""
    flow, asked = until_send(make_forward())
    asked.append(flow.send(401))
    asked.append(flow.send(NEW))
    with pytest.raises(SessionUnavailable) as raised:
        flow.send(401)
    assert asked[-2:] == [Replace(KEY, OLD), Send(NEW, replay=True)]
    error = raised.value
    assert (error.status, error.kind) == (503, "rejected")
    assert error.headers == {"Retry-After": "5"}
    assert "rejected a freshly pinned session" in error.public_message


def test_a_public_call_is_sent_without_slot_or_session() -> None:
    """No team and no key (GET /versions): the only step is Send(None)."""
    flow = forward_flow(make_forward(team=None, key=None))
    assert next(flow) == Send(None)
    returns(flow, 200)


def test_a_public_call_is_never_replayed() -> None:
    """Without a session there is nothing to replace: Looker's 401 is the caller's."""
    flow = forward_flow(make_forward(team=None, key=None))
    assert next(flow) == Send(None)
    returns(flow, 401)


def test_the_session_key_is_passed_through() -> None:
    """A sudo key (or a passthrough caller's) is what Session and Replace name."""
    sudo = Managed("analytics", "3")
    flow = forward_flow(make_forward(key=sudo))
    assert next(flow) == Slot("analytics")
    assert flow.send(None) == Session(sudo)
    assert flow.send(OLD) == Send(OLD)
    assert flow.send(401) == Replace(sudo, OLD)


@pytest.mark.parametrize(
    "error",
    [
        TooManyRequests(),
        SessionUnavailable("no session", retry_after=2.0),
        LookerUnavailable(status=504, kind="upstream_timeout"),
    ],
)
def test_errors_thrown_in_by_the_transport_end_the_flow(error: Exception) -> None:
    """What the transport met doing a step (the slot taken, no session, Looker gone) is thrown
    into the flow and comes out unchanged: the flow adds no retry of its own."""
    flow = forward_flow(make_forward())
    next(flow)
    with pytest.raises(type(error)) as raised:
        flow.throw(error)
    assert raised.value is error


def test_a_failed_replacement_ends_the_flow() -> None:
    """No session can be pinned in place of the rejected one: that error is the caller's."""
    flow, _ = until_send(make_forward(Body.BUFFER, length=5))
    assert isinstance(flow.send(401), Replace)
    failure = SessionUnavailable("login refused", retry_after=3.0, kind="rejected")
    with pytest.raises(SessionUnavailable) as raised:
        flow.throw(failure)
    assert raised.value is failure
