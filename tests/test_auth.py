"""Caller authentication: Looker-shaped login, signed proxy tokens, expiry and revocation."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import harness
import pytest
from harness import FakeClock, Proxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workspace_proxy.auth import PREFIX, CallerAuth, IssuedToken, Principal, bearer_value
from workspace_proxy.config import Config
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import NotFound, Unauthenticated
from workspace_proxy.validation import parse_config

MakeProxy = Callable[..., Awaitable[Proxy]]

SIGNING_KEY = "auth-test-signing-key-0123456789abcdef0123"
OTHER_KEY = "another-signing-key-fedcba9876543210-fedcba"
ENV = {
    "WP_SIGNING_KEY": SIGNING_KEY,
    "OTHER_KEY": OTHER_KEY,
    "LOOKER_SECRET": "looker-secret",
    "ANALYTICS_CALLER_SECRET": "analytics-caller-secret",
    "NOTEBOOK_CALLER_SECRET": "notebook-caller-secret",
    "FINANCE_CALLER_SECRET": "finance-caller-secret",
}
T0 = 1_800_000_000.0
TTL = 600


def make_config(
    *,
    key_env: str = "WP_SIGNING_KEY",
    analytics_callers: tuple[str, ...] = ("analytics-caller", "analytics-notebook"),
    with_finance: bool = True,
) -> Config:
    """Two teams: analytics (dev) with up to two callers, finance (production) with one."""
    secrets = {
        "analytics-caller": "ANALYTICS_CALLER_SECRET",
        "analytics-notebook": "NOTEBOOK_CALLER_SECRET",
    }
    teams: dict[str, Any] = {
        "analytics": {
            "workspace": "dev",
            "looker_client_id": "analytics-looker-id",
            "looker_client_secret": {"env": "LOOKER_SECRET"},
            "callers": [
                {"client_id": c, "client_secret": {"env": secrets[c]}} for c in analytics_callers
            ],
        }
    }
    if with_finance:
        teams["finance"] = {
            "workspace": "production",
            "looker_client_id": "finance-looker-id",
            "looker_client_secret": {"env": "LOOKER_SECRET"},
            "callers": [
                {"client_id": "finance-caller", "client_secret": {"env": "FINANCE_CALLER_SECRET"}}
            ],
        }
    raw = {
        "looker": {"base_url": "https://example.cloud.looker.com"},
        "token_signing_key": {"env": key_env},
        "caller_token_ttl_s": TTL,
        "teams": teams,
    }
    return parse_config(raw, env=ENV)


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(name="auth")
def _auth(clock: FakeClock) -> CallerAuth:
    return CallerAuth(make_config(), clock=clock)


def login(auth: CallerAuth, caller: str = "analytics-caller") -> str:
    """A fresh proxy token for ``caller`` (its secret is the ``*_CALLER_SECRET`` value)."""
    secret = {
        "analytics-caller": ENV["ANALYTICS_CALLER_SECRET"],
        "analytics-notebook": ENV["NOTEBOOK_CALLER_SECRET"],
        "finance-caller": ENV["FINANCE_CALLER_SECRET"],
    }[caller]
    return auth.login(caller, secret).access_token.reveal()


# --- login ----------------------------------------------------------------------------------


def test_login_answers_exactly_lookers_access_token_shape(auth: CallerAuth) -> None:
    """Right credentials give a token whose JSON has exactly Looker's three keys."""
    issued = auth.login("analytics-caller", ENV["ANALYTICS_CALLER_SECRET"])
    assert isinstance(issued, IssuedToken)
    body = issued.as_looker_json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TTL
    assert isinstance(body["access_token"], str)
    assert body["access_token"].startswith(f"{PREFIX}.")
    assert json.loads(json.dumps(body)) == body


def test_issued_token_never_shows_in_repr(auth: CallerAuth) -> None:
    """repr() of an IssuedToken hides the token; the caller's and Looker's secrets are not in it."""
    issued = auth.login("analytics-caller", ENV["ANALYTICS_CALLER_SECRET"])
    token = issued.access_token.reveal()
    assert token not in repr(issued)
    for secret in (SIGNING_KEY, ENV["ANALYTICS_CALLER_SECRET"], ENV["LOOKER_SECRET"]):
        assert secret not in token


def test_each_login_gives_a_new_token(auth: CallerAuth) -> None:
    """Two logins of one caller give two different tokens, both valid."""
    first, second = login(auth), login(auth)
    assert first != second
    assert auth.verify(f"token {first}").token_id != auth.verify(f"token {second}").token_id


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [
        ("analytics-caller", "wrong"),
        ("analytics-caller", ""),
        ("analytics-caller", None),
        ("analytics-caller", ENV["ANALYTICS_CALLER_SECRET"] + "x"),
        ("analytics-caller", ENV["ANALYTICS_CALLER_SECRET"].upper()),
        ("analytics-caller", ENV["FINANCE_CALLER_SECRET"]),
        ("finance-caller", ENV["ANALYTICS_CALLER_SECRET"]),
        ("nobody", ENV["ANALYTICS_CALLER_SECRET"]),
        ("Analytics-Caller", ENV["ANALYTICS_CALLER_SECRET"]),
        ("analytics-looker-id", ENV["LOOKER_SECRET"]),
        ("", ""),
        (None, None),
        (None, ENV["ANALYTICS_CALLER_SECRET"]),
    ],
)
def test_wrong_credentials_are_not_found(
    auth: CallerAuth, client_id: str | None, client_secret: str | None
) -> None:
    """Wrong secret, unknown id, Looker's own credentials or None answer 404 like Looker."""
    with pytest.raises(NotFound) as info:
        auth.login(client_id, client_secret)
    assert info.value.status == 404
    assert info.value.public_message == "Not found"


# --- verify: the Authorization header ---------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["token {}", "Bearer {}", "bearer {}", "BEARER {}", "Token {}", "TOKEN {}", "  Bearer   {}  "],
)
def test_verify_accepts_token_and_bearer_in_any_case(auth: CallerAuth, template: str) -> None:
    """Both schemes Looker accepts work, whatever their case."""
    principal = auth.verify(template.format(login(auth)))
    assert (principal.team, principal.caller) == ("analytics", "analytics-caller")
    assert principal.expires_at == T0 + TTL


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "token",
        "garbage",
        "Bearer garbage",
        "token wp1.",
        "token wp1..",
        "token wp1.abc.def",
        "token wp1.abc",
        "token wp2.eyJ0IjoiYSJ9.AAAA",
        "token ....",
    ],
)
def test_verify_rejects_missing_or_garbage(auth: CallerAuth, header: str | None) -> None:
    """A missing header or anything that is not a proxy token answers 401."""
    with pytest.raises(Unauthenticated) as info:
        auth.verify(header)
    assert info.value.status == 401


@pytest.mark.parametrize("scheme", ["Basic", "Digest", "Bearer:", "tokens", "JWT", "Negotiate"])
def test_verify_rejects_other_schemes(auth: CallerAuth, scheme: str) -> None:
    """A valid token under another scheme is refused."""
    with pytest.raises(Unauthenticated):
        auth.verify(f"{scheme} {login(auth)}")


def test_verify_rejects_a_bare_token(auth: CallerAuth) -> None:
    """A token without any scheme is refused."""
    with pytest.raises(Unauthenticated):
        auth.verify(login(auth))


def test_verify_rejects_trailing_words(auth: CallerAuth) -> None:
    """Extra words after the token are refused, not ignored."""
    with pytest.raises(Unauthenticated):
        auth.verify(f"token {login(auth)} extra")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("token abc", "abc"),
        ("Bearer abc", "abc"),
        ("bEaReR abc", "abc"),
        ("  token   abc  ", "abc"),
        (None, None),
        ("", None),
        ("token", None),
        ("Basic abc", None),
        ("token a b", None),
        ("Bearer\tabc", None),
    ],
)
def test_bearer_value(header: str | None, value: str | None) -> None:
    """bearer_value() extracts the token of the token/Bearer schemes only."""
    assert bearer_value(header) == value


# --- verify: forged, expired, revoked -------------------------------------------------------


def split(token: str) -> tuple[str, dict[str, Any], str]:
    prefix, body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return prefix, claims, mac


def join(prefix: str, claims: dict[str, Any], mac: str) -> str:
    raw = json.dumps(claims, separators=(",", ":")).encode()
    return f"{prefix}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{mac}"


def test_token_carries_team_caller_and_expiry(auth: CallerAuth) -> None:
    """The token body names the team, caller and expiry, and nothing secret."""
    prefix, claims, _ = split(login(auth))
    assert prefix == PREFIX
    assert (claims["t"], claims["c"], claims["e"]) == ("analytics", "analytics-caller", T0 + TTL)
    assert set(claims) == {"t", "c", "e", "j"}


@pytest.mark.parametrize(
    "change",
    [
        {"t": "finance"},
        {"t": "finance", "c": "finance-caller"},
        {"c": "analytics-notebook"},
        {"e": int(T0) + 10 * TTL},
        {"j": "another-id"},
    ],
)
def test_tampered_payload_is_rejected(auth: CallerAuth, change: dict[str, Any]) -> None:
    """Changing any claim while keeping the signature is refused."""
    prefix, claims, mac = split(login(auth))
    forged = join(prefix, {**claims, **change}, mac)
    with pytest.raises(Unauthenticated):
        auth.verify(f"token {forged}")


def test_tampered_signature_is_rejected(auth: CallerAuth) -> None:
    """A token whose signature was altered, truncated or removed is refused."""
    token = login(auth)
    prefix, body, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (
        f"{prefix}.{body}.{flipped}",
        f"{prefix}.{body}.{mac[:-2]}",
        f"{prefix}.{body}.",
        f"{prefix}.{body}",
    ):
        with pytest.raises(Unauthenticated):
            auth.verify(f"token {bad}")


def test_token_signed_with_another_key_is_rejected(clock: FakeClock) -> None:
    """A token from a proxy with a different signing key is refused."""
    foreign = CallerAuth(make_config(key_env="OTHER_KEY"), clock=clock)
    ours = CallerAuth(make_config(), clock=clock)
    token = login(foreign)
    assert foreign.verify(f"token {token}").team == "analytics"
    with pytest.raises(Unauthenticated):
        ours.verify(f"token {token}")


def test_expired_token_is_rejected(auth: CallerAuth, clock: FakeClock) -> None:
    """A token is valid until its TTL has passed, then refused (also once it was cached)."""
    header = f"token {login(auth)}"
    assert auth.verify(header).caller == "analytics-caller"
    clock.now = T0 + TTL - 1
    assert auth.verify(header).caller == "analytics-caller"
    clock.now = T0 + TTL
    with pytest.raises(Unauthenticated):
        auth.verify(header)
    clock.now = T0 + 100 * TTL
    with pytest.raises(Unauthenticated):
        auth.verify(header)


def test_expired_token_is_rejected_on_first_sight(clock: FakeClock) -> None:
    """A replica that never saw the token still refuses it once expired."""
    token = login(CallerAuth(make_config(), clock=clock))
    later = CallerAuth(make_config(), clock=FakeClock(T0 + TTL + 1))
    with pytest.raises(Unauthenticated):
        later.verify(f"Bearer {token}")


async def test_revoked_token_is_rejected(auth: CallerAuth) -> None:
    """After revoke() (logout) the token is refused; the caller's other tokens still work."""
    header = f"token {login(auth)}"
    other = f"token {login(auth)}"
    principal = auth.verify(header)
    await auth.revoke(principal)
    with pytest.raises(Unauthenticated):
        auth.verify(header)
    assert auth.verify(other).caller == "analytics-caller"


async def test_revoking_twice_is_harmless(auth: CallerAuth) -> None:
    """Logging out an already revoked token does not raise, and it stays refused."""
    header = f"token {login(auth)}"
    principal = auth.verify(header)
    await auth.revoke(principal)
    await auth.revoke(principal)
    with pytest.raises(Unauthenticated):
        auth.verify(header)


def test_token_of_a_removed_caller_is_rejected(clock: FakeClock) -> None:
    """After a config reload without the caller, its still-unexpired token is refused."""
    before = CallerAuth(make_config(), clock=clock)
    removed = login(before, "analytics-notebook")
    kept = login(before, "analytics-caller")
    after = CallerAuth(make_config(analytics_callers=("analytics-caller",)), clock=clock)
    with pytest.raises(Unauthenticated):
        after.verify(f"token {removed}")
    assert after.verify(f"token {kept}").caller == "analytics-caller"


def test_token_of_a_removed_team_is_rejected(clock: FakeClock) -> None:
    """After a config reload without the team, its callers' tokens are refused."""
    token = login(CallerAuth(make_config(), clock=clock), "finance-caller")
    after = CallerAuth(make_config(with_finance=False), clock=clock)
    with pytest.raises(Unauthenticated):
        after.verify(f"token {token}")


def test_token_verifies_as_its_own_team_only(auth: CallerAuth) -> None:
    """A token issued for one team's caller verifies as that team and caller, never another."""
    analytics = auth.verify(f"token {login(auth, 'analytics-caller')}")
    finance = auth.verify(f"token {login(auth, 'finance-caller')}")
    assert (analytics.team, analytics.caller) == ("analytics", "analytics-caller")
    assert (finance.team, finance.caller) == ("finance", "finance-caller")


def test_issue_for_a_caller_of_another_team_does_not_verify(auth: CallerAuth) -> None:
    """A correctly signed token pairing a team with another team's caller is refused."""
    token = auth.issue("finance", "analytics-caller").access_token.reveal()
    with pytest.raises(Unauthenticated):
        auth.verify(f"token {token}")


def test_token_is_accepted_by_another_instance_with_the_same_key(clock: FakeClock) -> None:
    """Replicas and restarts with the same signing key accept each other's tokens."""
    token = login(CallerAuth(make_config(), clock=clock), "finance-caller")
    replica = CallerAuth(make_config(), clock=FakeClock(T0 + 1))
    principal = replica.verify(f"Bearer {token}")
    assert principal == Principal(
        team="finance",
        caller="finance-caller",
        token_id=principal.token_id,
        expires_at=T0 + TTL,
    )


async def test_revocation_is_per_replica(clock: FakeClock) -> None:
    """revoke() ends the token on the replica that saw the logout (documented scope)."""
    first = CallerAuth(make_config(), clock=clock)
    second = CallerAuth(make_config(), clock=clock)
    header = f"token {login(first)}"
    await first.revoke(first.verify(header))
    with pytest.raises(Unauthenticated):
        first.verify(header)
    assert second.verify(header).caller == "analytics-caller"


# --- properties -----------------------------------------------------------------------------

_CONFIG = make_config()


@settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    header=st.none() | st.text(max_size=200) | st.text(max_size=200).map(lambda t: f"token wp1.{t}")
)
def test_verify_of_arbitrary_headers_only_raises_unauthenticated(header: str | None) -> None:
    """Any Authorization header value is either a valid token or a 401, never another error."""
    auth = CallerAuth(_CONFIG, clock=FakeClock(T0))
    with pytest.raises(Unauthenticated):
        auth.verify(header)


@functools.cache
def _one_token() -> str:
    return login(CallerAuth(_CONFIG, clock=FakeClock(T0)))


@settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    """Changing, dropping or inserting any one character of a valid token makes it invalid."""
    auth = CallerAuth(_CONFIG, clock=FakeClock(T0))
    token = _one_token()  # the same for every example: Hypothesis needs repeatable draws
    i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c != token[i])
    )
    mutated = data.draw(
        st.sampled_from(
            [
                token[:i] + replacement + token[i + 1 :],
                token[:i] + token[i + 1 :],
                token[:i] + replacement + token[i:],
            ]
        )
    )
    with pytest.raises(Unauthenticated):
        auth.verify(f"token {mutated}")


# --- claims of the wrong type (issue 17) -----------------------------------------------------


def _signed_with_test_key(claims: dict[str, Any]) -> str:
    """A wp1 token with these claims, signed with the key the test proxies use."""
    raw = json.dumps(claims, separators=(",", ":")).encode()
    signed = f"{PREFIX}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"
    mac = hmac.new(harness.SIGNING_KEY.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


_GOOD_CLAIMS: dict[str, Any] = {"t": "analytics", "c": "analytics-caller", "j": "some-token-id"}


@pytest.mark.parametrize(
    "change",
    [
        {"t": ["analytics"]},
        {"t": {"analytics": 1}},
        {"t": 7},
        {"c": ["analytics-caller"]},
        {"c": {"analytics-caller": 1}},
        {"e": "9999999999"},
        {"e": 9.9e9},
        {"e": True},
        {"e": None},
        {"j": ["x"]},
        {"j": 5},
        {"s": ["2"]},
        {"s": {"id": "2"}},
    ],
)
async def test_signed_claim_of_the_wrong_type_is_a_401(
    looker: LookerEmulator, make_proxy: MakeProxy, change: dict[str, Any]
) -> None:
    """A correctly signed token whose claims have the wrong JSON types is refused (401), never
    an internal error (a list as team claim answered 500)."""
    proxy = await make_proxy(looker, team_settings={"analytics": {"allow_sudo": True}})
    good = _signed_with_test_key({**_GOOD_CLAIMS, "e": int(time.time()) + 600})
    assert (await proxy.call("GET", "/api/4.0/user", good)).status == 200, "the forger works"
    forged = _signed_with_test_key({**_GOOD_CLAIMS, "e": int(time.time()) + 600, **change})
    # GET: the front's fast path checks the token; PATCH /session: relayed to the application.
    for method, path in (("GET", "/api/4.0/user"), ("PATCH", "/api/4.0/session")):
        resp = await proxy.call(method, path, forged, json={"workspace_id": "dev"})
        assert resp.status == 401, (method, await resp.text())
        assert (await resp.json())["message"] == "Requires authentication."
