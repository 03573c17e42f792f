"""Team isolation: a caller of one team never reaches another team's Looker session, and one
team's bad credentials, failures or flood never affect another team.

Teams analytics (Looker user 2, dev) and finance (user 3, production) share one proxy and one
emulator; the emulator's audit (user_id, workspace) is the witness. Every case is recorded in
docs/reliability.md (see reliability.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import Counter
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestServer
from harness import (
    ENV,
    SIGNING_KEY,
    FakeClock,
    Proxy,
    ProxyServer,
    assert_every_call_pinned,
    forwarded,
    raw_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient
from reliability import (
    answer_of,
    audit_summary,
    install,
    raw_exchange,
    record,
    serve_proxy,
    short,
)

from workspace_proxy.app import create_app
from workspace_proxy.auth import CallerAuth
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import ConfigError
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)

USER: Final = "/api/4.0/user"
A, B = "analytics", "finance"
UID: Final = {A: "2", B: "3"}
WORKSPACE: Final = {A: "dev", B: "production"}


@pytest.fixture(scope="session", autouse=True)
def _reliability_table(pytestconfig: pytest.Config) -> None:
    """Write docs/reliability.md at the end of a complete run (see reliability.py)."""
    install(pytestconfig)


ONE_ATTEMPT: Final = {"retry": {"interval_s": 0.1, "deadline_s": 0}}
"""Each pin flight makes exactly one attempt, so login attempts can be counted exactly."""


async def answer(proxy: Proxy, token: str, path: str = USER) -> tuple[int, str, dict[str, Any]]:
    """(status, Retry-After or '', JSON body) of one GET through the proxy."""
    resp = await proxy.call("GET", path, token)
    text = await resp.text()
    body = json.loads(text) if text.startswith("{") else {}
    return resp.status, resp.headers.get("Retry-After", ""), body


def users_in(looker: LookerEmulator, mark: int = 0) -> list[tuple[str | None, str | None]]:
    """(user_id, workspace) of every forwarded call since ``mark`` (pin calls excluded)."""
    return [(e.user_id, e.workspace) for e in forwarded_since(looker, mark)]


def forwarded_since(looker: LookerEmulator, mark: int) -> list[Any]:
    seen = {id(e) for e in looker.audit[:mark]}
    return [e for e in forwarded(looker) if id(e) not in seen]


# --- forged and tampered proxy tokens ------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return parsed


def _sign(claims: dict[str, Any], key: str) -> str:
    signed = "wp1." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest())
    return f"{signed}.{mac}"


def forgeries(a: str, b: str) -> dict[str, str]:
    """Tokens a caller of team A (holding ``a``, and having seen ``b``) could try."""
    pa, pb = a.split("."), b.split(".")
    ca, cb = _claims(a), _claims(b)
    return {
        "B's claims with A's signature": f"wp1.{pb[1]}.{pa[2]}",
        "A's claims re-labelled team B, A's signature": ".".join(
            ["wp1", _b64(json.dumps({**ca, "t": B}, separators=(",", ":")).encode()), pa[2]]
        ),
        "A's claims with B's token id, A's signature": ".".join(
            ["wp1", _b64(json.dumps({**ca, "j": cb["j"]}, separators=(",", ":")).encode()), pa[2]]
        ),
        "team B with A's caller, validly signed": _sign({**ca, "t": B}, SIGNING_KEY),
        "B's claims signed with another key": _sign(cb, "another-key-0123456789abcdef-0123456"),
        "B's claims, empty signature": f"wp1.{pb[1]}.",
        "B's claims, no signature": f"wp1.{pb[1]}",
        "B's token with the prefix upper-cased": "WP1." + b.split(".", 1)[1],
        "B's token with padding added to the claims": f"wp1.{pb[1]}==.{pb[2]}",
        "B's signature on A's claims": f"wp1.{pa[1]}.{pb[2]}",
        "B's token truncated by one character": b[:-1],
    }


async def test_forged_tokens_never_reach_another_team(looker: LookerEmulator, proxy: Proxy) -> None:
    """Every forgery built from A's token and a seen B token is 401 and reaches nothing."""
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, a))[0] == 200
    for name, forged in forgeries(a, b).items():
        mark = len(looker.audit)
        status, _, body = await answer(proxy, forged)
        reached = looker.audit[mark:]
        record(
            "isolation",
            f"forged token: {name}",
            "401 Looker-shaped; nothing forwarded",
            status=str(status),
            answer=str(body.get("message", "")),
            looker=audit_summary(reached),
            afterwards="-",
        )
        assert status == 401, name
        assert body["message"] == "Requires authentication."
        assert reached == [], name
    assert users_in(looker) == [(UID[A], "dev")]


def test_property_tampered_tokens_are_refused() -> None:
    """Property: any mix or one-character edit of A's and B's tokens, not a real one, is 401."""
    outcomes: Counter[str] = Counter()
    messages: set[str] = set()
    reached: list[str] = []

    @settings(
        database=None,
        deadline=None,
        derandomize=True,
        max_examples=60,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        parts=st.tuples(*(st.sampled_from([0, 1]) for _ in range(3))),
        edit=st.tuples(
            st.integers(min_value=0, max_value=400),
            st.sampled_from(["", "A", "-", "_", ".", "="]),
            st.booleans(),
        ),
    )
    def check(parts: tuple[int, int, int], edit: tuple[int, str, bool]) -> None:
        got = asyncio.run(_tampered_example(parts, edit))
        if got is not None:
            outcomes[str(got[0])] += 1
            messages.add(got[1])
            reached.extend(got[2])
            assert got[0] == 401
            assert got[2] == []

    check()
    record(
        "isolation",
        "tampered tokens (hypothesis, 60 derandomized recombinations + edits)",
        "401 for every token that is not exactly a real one; nothing forwarded",
        status=", ".join(sorted(outcomes)),
        answer=", ".join(sorted(messages)),
        looker=", ".join(reached) or "nothing",
        afterwards="-",
    )
    assert set(outcomes) == {"401"}


async def _tampered_example(
    parts: tuple[int, int, int], edit: tuple[int, str, bool]
) -> tuple[int, str, list[str]] | None:
    """(status, message, what reached Looker) for one tampered token; None if it is real."""
    looker = LookerEmulator()
    async with TestServer(looker.app, host="127.0.0.1") as upstream:
        looker.base_url = str(upstream.make_url("/")).rstrip("/")
        config = parse_config(raw_config(looker.base_url), env=ENV)
        auth = CallerAuth(config)
        real = [
            auth.issue(team, f"{team}-caller").access_token.reveal().split(".") for team in (A, B)
        ]
        token = ".".join(real[which][i] for i, which in enumerate(parts))
        at, insert, replace = edit
        at %= len(token) + 1
        token = token[:at] + insert + token[at + (1 if replace else 0) :]
        if token in (".".join(real[0]), ".".join(real[1])):
            return None
        async with ProxyServer(create_app(config), host="127.0.0.1") as server:
            url = str(server.make_url("/")).rstrip("/")
            got = await raw_exchange(
                url,
                f"GET {USER} HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
                f"Connection: close\r\n\r\n".encode(),
            )
    return got.status, got.message, [f"{e.method} {e.path}" for e in looker.audit]


# --- headers, parameters and paths cannot switch the team ----------------------------------------


SWITCHES: Final = {
    "X-Team / X-Looker-Team: finance": {"headers": {"X-Team": B, "X-Looker-Team": B}},
    "X-Looker-Workspace / X-Workspace: production": {
        "headers": {"X-Looker-Workspace": "production", "X-Workspace": "production"}
    },
    "query ?team=finance&workspace_id=production": {
        "params": {"team": B, "workspace_id": "production"}
    },
    "query with finance's caller credentials": {
        "params": {"client_id": "finance-caller", "client_secret": "finance-caller-secret"}
    },
    "Cookie with finance's proxy token": {"headers": {"Cookie": "access_token={b}"}},
    "X-Authorization / Proxy-Authorization: finance's token": {
        "headers": {"X-Authorization": "token {b}", "Proxy-Authorization": "token {b}"}
    },
    "X-Forwarded-User / X-Remote-User: finance-caller": {
        "headers": {"X-Forwarded-User": "finance-caller", "X-Remote-User": "finance-caller"}
    },
}


async def test_headers_and_parameters_cannot_switch_team(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Team hints, B's credentials or B's token outside Authorization: calls still run as A."""
    a, b = await proxy.login(A), await proxy.login(B)
    for name, spec in SWITCHES.items():
        mark = len(looker.audit)
        headers = {k: v.replace("{b}", b) for k, v in spec.get("headers", {}).items()}
        resp = await proxy.call("GET", USER, a, headers=headers, params=spec.get("params", {}))
        body = await resp.json()
        users = users_in(looker, mark)
        record(
            "isolation",
            f"team switch attempt: {name}",
            "runs as team A (user 2, dev)",
            status=str(resp.status),
            answer=f"Looker answered for user {body.get('id')}",
            looker=audit_summary(forwarded_since(looker, mark)),
            afterwards="-",
        )
        assert resp.status == 200, name
        assert body["id"] == UID[A]
        assert users == [(UID[A], "dev")], name
    assert_every_call_pinned(looker)


async def test_paths_cannot_reach_another_teams_session(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Sudo, PATCH to B's workspace, odd spellings: refused or run as A; A's logout spares B."""
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, b))[0] == 200
    tries: list[tuple[str, str, str, dict[str, Any], tuple[int, ...]]] = [
        ("sudo as finance's user", "POST", "/api/4.0/login/3", {}, (403,)),
        (
            "PATCH /session to production",
            "PATCH",
            "/api/4.0/session",
            {"json": {"workspace_id": "production"}},
            (403,),
        ),
        (
            "PATCH /Session.json (spelling) to production",
            "PATCH",
            "/api/4.0/Session.json",
            {"json": {"workspace_id": "production"}},
            (403,),
        ),
        ("POST /%73ession (encoded)", "POST", "/api/4.0/%73ession", {}, (404,)),
        ("GET /api/3.1/user", "GET", "/api/3.1/user", {}, (200,)),
        ("GET //api/4.0//user", "GET", "//api/4.0//user", {}, (200,)),
        ("GET /users/3 (finance's user)", "GET", "/api/4.0/users/3", {}, (404,)),
    ]
    for name, method, path, kwargs, want in tries:
        mark = len(looker.audit)
        resp = await proxy.call(method, path, a, **kwargs)
        text = await resp.text()
        users = users_in(looker, mark)
        record(
            "isolation",
            f"path: {name}",
            f"{'/'.join(map(str, want))}; never as team B",
            status=str(resp.status),
            answer=answer_of(text.encode()),
            looker=audit_summary(forwarded_since(looker, mark)),
            afterwards="-",
        )
        assert resp.status in want, (name, text)
        assert all(user == (UID[A], "dev") for user in users), (name, users)
    logins = looker.logins
    resp = await proxy.call("DELETE", "/api/logout", a)
    after_a = (await answer(proxy, a))[0]
    after_b = (await answer(proxy, b))[0]
    record(
        "isolation",
        "team A logs out (DELETE /api/logout)",
        "A's proxy token ends (401); B keeps its session without a new login",
        status=str(resp.status),
        answer="-",
        looker=f"new Looker logins: {looker.logins - logins}",
        afterwards=f"A's token: {after_a}; B: {after_b}",
    )
    assert (resp.status, after_a, after_b) == (204, 401, 200)
    assert looker.logins == logins
    assert_every_call_pinned(looker)


async def test_concurrent_callers_of_two_teams_get_their_own_sessions(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """60 interleaved concurrent calls of two teams: each answered as its own team, pinned."""
    tokens = {A: await proxy.login(A), B: await proxy.login(B)}
    order = [A, B] * 30
    results = await asyncio.gather(*(answer(proxy, tokens[team]) for team in order))
    mixed = [
        team
        for team, (status, _, body) in zip(order, results, strict=True)
        if body.get("id") != UID[team]
    ]
    record(
        "isolation",
        "60 concurrent calls, both teams, cold start",
        "each caller answered as its own team; one login per team",
        status=", ".join(sorted({str(r[0]) for r in results})),
        answer=f"answers for the other team's user: {len(mixed)}",
        looker=f"{looker.logins} logins; {assert_every_call_pinned(looker)} calls, all pinned",
        afterwards="-",
    )
    assert [r[0] for r in results] == [200] * 60
    assert mixed == []
    assert looker.logins == 2


# --- one team's trouble is not another team's ----------------------------------------------------


async def test_flood_at_max_concurrency_gets_429_while_the_other_team_is_served(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """analytics (limit 4) floods while its login hangs: 4 wait, 46 get 429; finance served."""
    proxy = await serve_proxy(aiohttp_client, looker.base_url, teams={A: {"max_concurrency": 4}})
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, b))[0] == 200  # finance is pinned before the trouble starts
    hold = looker.faults.hold_login = asyncio.Event()
    flood = [asyncio.ensure_future(answer(proxy, a)) for _ in range(50)]
    async with asyncio.timeout(20):  # bounded: 46 must be refused at once
        while sum(f.done() for f in flood) < 46:
            await asyncio.wait(
                [f for f in flood if not f.done()], return_when=asyncio.FIRST_COMPLETED
            )
    refused = [f.result() for f in flood if f.done()]
    during = [(await answer(proxy, b))[0] for _ in range(5)]
    still_waiting = sum(not f.done() for f in flood)
    hold.set()
    held = await asyncio.gather(*(f for f in flood if not f.done()))
    after = (await answer(proxy, a))[0]
    record(
        "isolation",
        "flood: analytics 50 concurrent at max_concurrency 4, its login hanging",
        "4 wait, 46 get 429 + Retry-After at once; finance served meanwhile",
        status=", ".join(
            f"{n}x {s}" + (f" Retry-After {ra}" if ra else "")
            for (s, ra), n in sorted(Counter((s, ra) for s, ra, _ in refused).items())
        )
        + f"; {still_waiting} waiting, then {sorted({s for s, _, _ in held})}",
        answer=str(refused[0][2].get("message", "")),
        looker=f"finance during the flood: {sorted(set(during))}; "
        + f"{assert_every_call_pinned(looker)} calls, all pinned",
        afterwards=f"analytics after: {after}",
    )
    assert [(s, ra) for s, ra, _ in refused] == [(429, "1")] * 46
    assert refused[0][2]["message"].startswith("workspace-proxy: team 'analytics' already has 4")
    assert still_waiting == 4
    assert during == [200] * 5
    assert [s for s, _, _ in held] == [200] * 4
    assert after == 200
    assert users_in(looker).count((UID[B], "production")) == 6


async def test_bad_credentials_of_one_team_do_not_affect_another(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """analytics' Looker secret is wrong: 503 after one attempt per burst; finance is served."""
    proxy = await serve_proxy(
        aiohttp_client,
        looker.base_url,
        clock=FakeClock(),
        env={"ANALYTICS_LOOKER_SECRET": "not-the-secret"},
        looker=ONE_ATTEMPT,
    )
    a, b = await proxy.login(A), await proxy.login(B)
    burst = await asyncio.gather(*(answer(proxy, a) for _ in range(20)))
    attempts = looker.login_attempts
    finance = await answer(proxy, b)
    record(
        "isolation",
        "analytics' Looker credentials wrong (burst of 20)",
        "analytics 503 saying what to fix, Retry-After 30, one login attempt; finance served",
        status=", ".join(sorted({f"{s}, Retry-After: {ra}" for s, ra, _ in burst})),
        answer=short(str(burst[0][2].get("message", ""))),
        looker=f"analytics login attempts: {attempts}; {audit_summary(forwarded(looker))}",
        afterwards=f"finance: {finance[0]}",
    )
    # Refused credentials are a configuration error: the next attempt is 30 s away.
    assert {(s, ra) for s, ra, _ in burst} == {(503, "30")}
    assert "HTTP 404" in burst[0][2]["message"]
    assert "looker_client_secret" in burst[0][2]["message"]
    assert attempts == 1
    assert finance[0] == 200
    assert users_in(looker) == [(UID[B], "production")]


async def test_failing_pin_of_one_team_does_not_affect_another(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """PATCH /session fails while analytics pins: analytics 503, pinned finance still served."""
    proxy = await serve_proxy(
        aiohttp_client, looker.base_url, clock=FakeClock(), looker=ONE_ATTEMPT
    )
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, b))[0] == 200
    looker.faults.patch_session_failures = 1000
    failed = await answer(proxy, a)
    finance = [(await answer(proxy, b))[0] for _ in range(3)]
    record(
        "isolation",
        "analytics' PATCH /session fails (500)",
        "analytics 503, nothing forwarded for it; finance served",
        status=f"{failed[0]}, Retry-After: {failed[1]}",
        answer=short(str(failed[2].get("message", ""))),
        looker=audit_summary(forwarded(looker)),
        afterwards=f"finance: {sorted(set(finance))}",
    )
    assert failed[0] == 503
    assert finance == [200] * 3
    assert set(users_in(looker)) == {(UID[B], "production")}


async def test_backoff_of_one_team_does_not_delay_another(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """analytics backing off after a 429 login (Retry-After 30) does not delay finance."""
    proxy = await serve_proxy(
        aiohttp_client, looker.base_url, clock=FakeClock(), looker=ONE_ATTEMPT
    )
    a, b = await proxy.login(A), await proxy.login(B)
    looker.faults.login_failures = 1
    looker.faults.login_failure_status = 429
    looker.faults.login_retry_after = 30
    limited = await answer(proxy, a)
    again = await answer(proxy, a)
    attempts = looker.login_attempts
    finance = await answer(proxy, b)
    record(
        "isolation",
        "analytics rate-limited at login (429, Retry-After 30)",
        "analytics 503 + Retry-After 30, backing off; finance logs in and is served",
        status=f"{limited[0]}, Retry-After: {limited[1]}; again: {again[0]}, {again[1]}",
        answer=short(str(limited[2].get("message", ""))),
        looker=f"analytics login attempts: {attempts}; finance's login: "
        + f"{looker.login_attempts - attempts}",
        afterwards=f"finance: {finance[0]}",
    )
    assert (limited[0], limited[1]) == (503, "30")
    assert again[0] == 503
    assert int(again[1]) >= 29
    assert attempts == 1
    assert finance[0] == 200
    assert looker.login_attempts == 2


async def test_revoked_session_of_one_team_is_replaced_alone(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Looker revokes only analytics' session: it re-pins once; finance keeps its session."""
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, a))[0] == (await answer(proxy, b))[0] == 200
    for issued in looker.issued_tokens():
        session = looker.session_for(issued)
        if session is not None and session.user.id == UID[A]:
            looker.tokens.revoke(issued)
    logins = looker.logins
    statuses = [(await answer(proxy, team))[0] for team in (a, b, a, b)]
    record(
        "isolation",
        "Looker revokes only analytics' session",
        "analytics re-pins once (call replayed); finance untouched",
        status=", ".join(map(str, statuses)),
        answer="-",
        looker=f"new logins: {looker.logins - logins}; "
        + f"{assert_every_call_pinned(looker)} calls, all pinned",
        afterwards="-",
    )
    assert statuses == [200] * 4
    assert looker.logins == logins + 1


async def test_one_teams_slow_streams_do_not_starve_another(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """analytics' stalled streams hold every pooled connection: finance is still served."""
    case = "analytics holds 4 slow result streams, looker.max_connections 4"
    expected = "finance still served (200), or the config refused up front"
    try:
        proxy = await serve_proxy(aiohttp_client, looker.base_url, looker={"max_connections": 4})
    except ConfigError as exc:  # also a fix: the operator is told the pool is too small
        refused = [p for p in exc.problems if "max_connections" in p]
        if not refused:
            raise
        record(
            "isolation",
            case,
            expected,
            status="config refused",
            answer=refused[0],
            looker="nothing",
            afterwards="-",
        )
        return
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await answer(proxy, b))[0] == 200
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    qid = (await (await proxy.call("POST", "/api/4.0/queries", a, json=query)).json())["id"]
    url = f"/api/4.0/queries/{qid}/run/csv?emulator_bytes={256 * 1024 * 1024}"
    stalled = [await proxy.call("GET", url, a) for _ in range(4)]  # headers read, body not
    try:
        async with asyncio.timeout(15):  # bounded: the pool wait ends at timeouts.connect_s
            finance = await answer(proxy, b)
    finally:
        for resp in stalled:
            resp.close()
    record(
        "isolation",
        case,
        expected,
        status=f"analytics streams: {sorted({r.status for r in stalled})}; finance: {finance[0]}",
        answer=short(str(finance[2].get("message", ""))) or "-",
        looker="finance: " + audit_summary(e for e in forwarded(looker) if e.user_id == UID[B]),
        afterwards="-",
    )
    assert finance[0] == 200
