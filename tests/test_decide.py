"""The one decision (``decide``) and the header rules it applies (``headers``), without I/O: the
caller's credentials and spoofable headers never reach Looker, the target is built from the
classified path, the body gets its plan, and the token and team policy answer before anything
is forwarded. Every assertion is on the bytes Looker would get (``Forward.head``)."""

from __future__ import annotations

import json
import re
from typing import Any, Final

import pytest
from harness import ENV, raw_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workspace_proxy import headers as rules
from workspace_proxy.auth import CallerAuth
from workspace_proxy.config import Config, Secret
from workspace_proxy.decide import SMALL_BODY, decide, decide_patch, decide_pinned
from workspace_proxy.decision import (
    Act,
    Body,
    Caller,
    Decision,
    Forward,
    Head,
    Local,
    Looker,
    Managed,
    Peer,
    Policy,
    Refuse,
    Resolve,
)
from workspace_proxy.errors import Forbidden, Invalid, ProxyError, Unauthenticated, answer
from workspace_proxy.passthrough import Pinned
from workspace_proxy.sealed import SealedSession
from workspace_proxy.session import PinnedSession
from workspace_proxy.validation import parse_config

LOOKER_URL: Final = "http://looker.test:19999"
LOOKER_HOST: Final = b"looker.test:19999"
PEER: Final = Peer("10.1.2.3", "https")
CALLER_HOST: Final = b"proxy.example.com"
LIMITS: Final = {"max_request_body_bytes": 1_000_000, "replay_buffer_bytes": 1000}
AUTH_VARIANTS: Final = [
    b"Authorization",
    b"authorization",
    b"AUTHORIZATION",
    b"aUtHoRiZaTiOn",
]
"""Spellings the transport reads as the caller's Authorization (the one it must send)."""
AUTH_LOOKALIKES: Final = [
    b" Authorization",
    b"Authorization ",
    b"authorization_",
    b"Authorization_",
    b"X-Authorization",
    b"x_authorization",
    b"Proxy-Authorization",
    b"proxy_authorization",
    b"X-Forwarded-Authorization",
    b"Authorization-Override",
]
"""Names some servers read as Authorization too: never the caller's, never forwarded."""
OWN: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
"""Headers the decision writes itself (the flow adds Authorization)."""
_LETTERS: Final = re.compile(rb"[^a-z]")


# --- helpers --------------------------------------------------------------------------------------


def make_config(
    *,
    teams: tuple[str, ...] = ("analytics", "finance"),
    team_settings: dict[str, dict[str, Any]] | None = None,
    looker_url: str = LOOKER_URL,
    env: dict[str, str] | None = None,
    **top: Any,
) -> Config:
    """``harness.build_config`` with per-team settings (as conftest's ``make_proxy`` takes)."""
    raw = raw_config(looker_url, teams=teams, limits=LIMITS, **top)
    for team, keys in (team_settings or {}).items():
        raw["teams"].setdefault(team, {}).update(keys)
    return parse_config(raw, env={**ENV, **(env or {})})


def make_policy(config: Config | None = None, **kwargs: Any) -> Policy:
    config = config or make_config(**kwargs)
    passthrough = any(t.passthrough for t in config.teams.values())
    return Policy(config, CallerAuth(config), Looker.of(config), passthrough)


POLICY: Final = make_policy()
SUDO_POLICY: Final = make_policy(team_settings={"analytics": {"allow_sudo": True}})
BRANCH: Final = {"git_branch": {"project": "sales", "name": "feature-x"}}
PASSTHROUGH: Final = {"mode": "passthrough", "workspace": "dev", "looker_client_ids": ["bi-id"]}
PT_POLICY: Final = make_policy(teams=("analytics",), team_settings={"bi": PASSTHROUGH})


def token(policy: Policy = POLICY, team: str = "analytics", *, sudo: str | None = None) -> bytes:
    """A proxy token for ``team``'s caller, as the caller's Authorization value."""
    issued = policy.auth.issue(team, f"{team}-caller", sudo=sudo)
    return b"token " + issued.access_token.reveal().encode()


def request(
    method: bytes,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    *,
    length: int | None = None,
    chunked: bool = False,
    version: str = "1.1",
) -> Head:
    """A head as the transport hands it over: the headers in arrival order, plus the values it
    picks out by exact name (Host, Authorization, Connection) and the body's framing."""
    named = [(n.lower(), v) for n, v in fields]
    hosts = [v for n, v in named if n == b"host"]
    return Head(
        method,
        target,
        version,
        list(fields),
        length=length,
        chunked=chunked,
        host=hosts[-1] if hosts else None,
        auths=tuple(v for n, v in named if n == b"authorization"),
        connection=tuple(v for n, v in named if n == b"connection"),
    )


def usual(auth: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """Host and the caller's one Authorization."""
    out = [(b"Host", CALLER_HOST)]
    return [*out, (b"Authorization", auth)] if auth is not None else out


def forward(head: Head, policy: Policy = POLICY, peer: Peer = PEER) -> Forward:
    decision = decide(head, peer, policy)
    assert isinstance(decision, Forward), decision
    return decision


def refused(decision: Decision, status: int) -> ProxyError:
    assert isinstance(decision, Refuse), decision
    assert decision.error.status == status, decision.error.public_message
    return decision.error


def parse(sent: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(request line, header fields) of ``Forward.head``: CRLF-terminated lines, no blank line."""
    assert sent.endswith(b"\r\n")
    assert not sent.endswith(b"\r\n\r\n"), "the flow adds Authorization, then the blank line"
    line, *lines = sent[:-2].split(b"\r\n")
    fields = []
    for raw in lines:
        name, sep, value = raw.partition(b": ")
        assert sep, raw
        fields.append((name, value))
    return line, fields


def fields_of(decision: Forward) -> list[tuple[bytes, bytes]]:
    return parse(decision.head)[1]


def values_of(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of fields whose canonical name is ``name``'s."""
    return [v for n, v in fields if rules.canonical(n) == rules.canonical(name)]


def names_of(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {rules.canonical(n) for n, _ in fields}


def authorization_like(name: bytes) -> bool:
    """Ignoring case and punctuation, the name contains ``authorization``."""
    return b"authorization" in _LETTERS.sub(b"", name.lower())


TOKEN: Final = token()


def get(*extra: tuple[bytes, bytes], target: bytes = b"/api/4.0/looks/1") -> Forward:
    """A GET with the caller's token and ``extra`` headers, decided under POLICY."""
    return forward(request(b"GET", target, [*usual(TOKEN), *extra]))


# --- canonical names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"Authorization", b"authorization"),
        (b"X_Forwarded_For", b"x-forwarded-for"),
        (b"  Keep_Alive ", b"keep-alive"),
        (b"content-type", b"content-type"),
    ],
)
def test_canonical(name: bytes, expected: bytes) -> None:
    """canonical() lower-cases, strips and reads '_' as '-'."""
    assert rules.canonical(name) == expected


def test_named_in_connection_reads_every_connection_value() -> None:
    """Names from several Connection values and comma lists are all collected, canonically."""
    named = rules.named_in_connection([b"keep-alive, X-Secret", b" Upgrade ,,", b"X_Other"])
    assert named == {b"keep-alive", b"x-secret", b"upgrade", b"x-other"}
    assert rules.named_in_connection([]) == frozenset()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (b"Host", rules.HOST),
        (b"CONTENT-LENGTH", rules.LENGTH),
        (b"transfer-encoding", rules.TE),
        (b"Expect", rules.EXPECT),
        (b"aUtHoRiZaTiOn", rules.AUTH),
        (b"X-Request-Id", rules.RID),
        (b"Connection", rules.CONNECTION),
        (b"Keep-Alive", rules.HOP),
        (b"Proxy-Authorization", rules.HOP),
        (b"authorization_", rules.OTHER),
        (b"Content-Type", rules.OTHER),
    ],
)
def test_kind_names_what_the_transport_picks_out(name: bytes, kind: int) -> None:
    """The transport reads framing, Host, the one Authorization and Connection by exact name
    (any case); look-alike spellings are ordinary headers (and dropped upstream)."""
    assert rules.kind(name) == kind


# --- towards Looker: credentials ------------------------------------------------------------------


@pytest.mark.parametrize("name", AUTH_VARIANTS)
def test_the_callers_authorization_never_reaches_looker_in_any_case(name: bytes) -> None:
    """Whatever its case, the caller's one Authorization is read and not forwarded (the flow
    adds the pinned session's)."""
    decision = forward(request(b"GET", b"/api/4.0/user", [*usual(), (name, TOKEN)]))
    assert not [n for n, _ in fields_of(decision) if authorization_like(n)]
    assert TOKEN not in decision.head
    assert decision.key == Managed("analytics")


@pytest.mark.parametrize("name", AUTH_LOOKALIKES)
def test_authorization_lookalikes_are_dropped(name: bytes) -> None:
    """Padded, underscored, prefixed and Proxy- spellings of Authorization never go upstream."""
    decision = get((name, b"token stolen"))
    assert not [n for n, _ in fields_of(decision) if authorization_like(n)]
    assert b"stolen" not in decision.head


def test_many_lookalikes_and_one_authorization_leave_none() -> None:
    """Every look-alike at once, in mixed order around the real one: none is forwarded."""
    extra = [(name, b"token caller-%d" % i) for i, name in enumerate(AUTH_LOOKALIKES * 2)]
    decision = forward(request(b"GET", b"/api/4.0/user", [*extra[:7], *usual(TOKEN), *extra[7:]]))
    assert not [n for n, _ in fields_of(decision) if authorization_like(n)]
    assert b"caller-" not in decision.head


def test_no_authorization_for_a_public_call() -> None:
    """/versions is forwarded without a session: no credentials of any kind go upstream."""
    decision = forward(request(b"GET", b"/versions", [*usual(b"token not-checked")]))
    assert (decision.key, decision.team, decision.route) == (None, None, "versions")
    assert parse(decision.head)[0] == b"GET /versions HTTP/1.1"
    assert not [n for n, _ in fields_of(decision) if authorization_like(n)]


# --- towards Looker: hop-by-hop and Connection-named ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"Proxy-Authenticate",
        b"Connection",
        b"Keep-Alive",
        b"keep_alive",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"Trailers",
        b"Transfer-Encoding",
        b"transfer_encoding",
        b"Upgrade",
        b"UPGRADE",
    ],
)
def test_hop_by_hop_headers_are_dropped(name: bytes) -> None:
    """Hop-by-hop headers, in any case and with '_' for '-', are not forwarded."""
    decision = get((name, b"x"), (b"Accept", b"application/json"))
    fields = fields_of(decision)
    assert rules.canonical(name) not in names_of(fields)
    assert values_of(fields, b"accept") == [b"application/json"]


def test_headers_named_in_connection_are_dropped() -> None:
    """Headers the caller lists in Connection (any case, '_' or '-', several values) go."""
    decision = forward(
        request(
            b"GET",
            b"/api/4.0/user",
            [
                *usual(TOKEN),
                (b"Connection", b"X-Internal-Secret, keep-alive"),
                (b"connection", b"x_debug_user"),
                (b"X-Internal-Secret", b"s3cret"),
                (b"X-Debug-User", b"admin"),
                (b"x-debug-user", b"root"),
                (b"X-Request-Id", b"abc"),
            ],
        )
    )
    fields = fields_of(decision)
    assert not names_of(fields) & {b"x-internal-secret", b"x-debug-user", b"connection"}
    assert values_of(fields, b"x-request-id") == [b"abc"]


def test_connection_cannot_remove_the_proxys_own_headers() -> None:
    """Naming Authorization, Host, X-Forwarded-For or Content-Length in Connection removes none
    of the proxy's own (and the caller's token is still read)."""
    named = b"Authorization, Host, X-Forwarded-For, X-Forwarded-Proto, Content-Length"
    head = request(b"POST", b"/api/4.0/queries", [*usual(TOKEN), (b"Connection", named)], length=3)
    fields = fields_of(forward(head))
    assert values_of(fields, b"host") == [LOOKER_HOST]
    assert values_of(fields, b"x-forwarded-for") == [b"10.1.2.3"]
    assert values_of(fields, b"x-forwarded-proto") == [b"https"]
    assert values_of(fields, b"content-length") == [b"3"]


# --- towards Looker: Host, address and route claims -----------------------------------------------


def test_host_is_lookers_and_the_callers_is_x_forwarded_host() -> None:
    """The caller's Host (and any stray Host line) is replaced by Looker's, once; the caller's
    is X-Forwarded-Host."""
    head = request(b"GET", b"/api/4.0/user", [(b"Host", b"proxy.example.com:8080")])
    head.headers.append((b"host", b"evil"))  # the transport refuses two; the rule holds anyway
    head.host, head.auths = b"proxy.example.com:8080", (TOKEN,)
    fields = fields_of(forward(head))
    assert fields[0] == (b"Host", LOOKER_HOST), "Host first, as Looker's"
    assert values_of(fields, b"host") == [LOOKER_HOST]
    assert values_of(fields, b"x-forwarded-host") == [b"proxy.example.com:8080"]
    assert b"evil" not in forward(head).head


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://looker.test:19999", b"looker.test:19999"),
        ("http://looker.test:80", b"looker.test"),
        ("https://looker.example.com", b"looker.example.com"),
        ("https://looker.example.com:8443", b"looker.example.com:8443"),
        ("http://[::1]:8080", b"[::1]:8080"),
        ("http://bücher.example", b"xn--bcher-kva.example"),
    ],
)
def test_lookers_host_header_is_built_from_its_url(url: str, host: bytes) -> None:
    """Looker's Host: default ports left out, IPv6 bracketed, names IDNA-encoded."""
    policy = make_policy(make_config(looker_url=url))
    fields = fields_of(forward(request(b"GET", b"/api/4.0/user", usual(token(policy))), policy))
    assert values_of(fields, b"host") == [host]


def test_forwarding_headers_cannot_be_spoofed() -> None:
    """Every incoming Forwarded/X-Forwarded-* is dropped; the proxy sets its own values."""
    decision = get(
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"x-forwarded-for", b"7.7.7.7"),
        (b"X_Forwarded_For", b"8.8.8.8"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"evil.example.com"),
        (b"X-Forwarded-Port", b"1"),
        (b"X-Forwarded-User", b"admin"),
        (b"X-Forwarded-Prefix", b"/x"),
        (b"X-Forwarded", b"for=6.6.6.6"),
        (b"Forwarded", b"for=6.6.6.6;proto=http"),
        (b"forwarded", b"for=7.7.7.7"),
    )
    fields = fields_of(decision)
    assert values_of(fields, b"x-forwarded-for") == [b"10.1.2.3"]
    assert values_of(fields, b"x-forwarded-proto") == [b"https"]
    assert values_of(fields, b"x-forwarded-host") == [CALLER_HOST]
    for gone in (b"x-forwarded-port", b"x-forwarded-user", b"x-forwarded-prefix", b"forwarded"):
        assert values_of(fields, gone) == []
    assert values_of(fields, b"x-forwarded") == []
    for claimed in (b"6.6.6.6", b"7.7.7.7", b"8.8.8.8", b"evil", b"admin"):
        assert claimed not in decision.head


@pytest.mark.parametrize(
    "name",
    [
        b"X-Real-IP",
        b"True-Client-IP",
        b"X-Client-IP",
        b"CF-Connecting-IP",
        b"Fastly-Client-IP",
        b"X-Cluster-Client-IP",
        b"X-ProxyUser-Ip",
        b"X-Originating-IP",
        b"X-Remote-IP",
        b"X-Remote-Addr",
        b"x_real_ip",
        b"Via",
        b"Max-Forwards",
        b"X-Original-URL",
        b"X-Rewrite-URL",
        b"X-Override-URL",
        b"X-HTTP-Method-Override",
        b"X-HTTP-Method",
        b"X-Method-Override",
        b"X-Original-Method",
        b"X-Original-Host",
        b"X-Host",
    ],
)
def test_client_ip_and_rerouting_headers_are_dropped(name: bytes) -> None:
    """Claims about the caller's address, and headers some servers obey to re-route or re-method
    a request behind the route policy, never reach Looker."""
    decision = get((name, b"/api/4.0/login 6.6.6.6"))
    assert rules.canonical(name) not in names_of(fields_of(decision))
    assert b"6.6.6.6" not in decision.head
    assert parse(decision.head)[0] == b"GET /api/4.0/looks/1 HTTP/1.1"


def test_unknown_peer_and_host_leave_no_claimed_values() -> None:
    """Without a peer address or a Host (HTTP/1.0), the caller's X-Forwarded-For/-Host claims
    are not kept either; Looker's Host is still sent."""
    head = request(
        b"GET",
        b"/api/4.0/user",
        [(b"Authorization", TOKEN), (b"X-Forwarded-For", b"6"), (b"X-Forwarded-Host", b"e")],
        version="1.0",
    )
    fields = fields_of(forward(head, peer=Peer("", "http")))
    assert values_of(fields, b"x-forwarded-for") == []
    assert values_of(fields, b"x-forwarded-host") == []
    assert values_of(fields, b"x-forwarded-proto") == [b"http"]
    assert values_of(fields, b"host") == [LOOKER_HOST]


@pytest.mark.parametrize("name", [b"Cookie", b"Expect", b"cookie"])
def test_caller_only_headers_are_dropped(name: bytes) -> None:
    """The caller's cookies and Expect are not forwarded to Looker."""
    assert values_of(fields_of(get((name, b"100-continue"))), name) == []


# --- towards Looker: ordinary headers -------------------------------------------------------------


def test_ordinary_headers_are_forwarded_byte_for_byte() -> None:
    """End-to-end headers pass with their exact name spelling, values, duplicates and order."""
    incoming = [
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json"),
        (b"accept-encoding", b"gzip"),
        (b"User-Agent", b"PY-SDK 26.22.0"),
        (b"X-Looker-Appid", b"spectacles"),
        (b"X-Request-Id", b"r1"),
        (b"X-CuStOm", b"a"),
        (b"X-CuStOm", b"b"),
        (b"If-None-Match", b'"etag"'),
        (b"X-Empty", b""),
    ]
    fields = fields_of(get(*incoming))
    assert [f for f in fields if rules.canonical(f[0]) not in OWN] == incoming


def test_non_utf8_header_bytes_pass_unchanged() -> None:
    """obs-text (bytes 0x80-0xFF) in a value is forwarded as those very bytes."""
    value = b"caf\xe9 " + bytes(range(0x80, 0x100))
    decision = get((b"X-Latin", value), (b"X-Also", b"\xff\xfe"))
    assert (b"X-Latin", value) in fields_of(decision)
    assert b"X-Latin: " + value + b"\r\n" in decision.head
    assert b"X-Also: \xff\xfe\r\n" in decision.head


def test_the_decision_does_not_modify_the_callers_head() -> None:
    """The parsed head is left as it was (the access log and a replay read it afterwards)."""
    head = request(b"GET", b"/api/4.0/user", [*usual(TOKEN), (b"Cookie", b"x"), (b"Te", b"y")])
    before = (list(head.headers), head.target, head.host, head.auths)
    forward(head)
    assert (head.headers, head.target, head.host, head.auths) == before


# --- towards Looker: the body's framing and plan --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "length", "chunked", "plan", "framing"),
    [
        (b"GET", None, False, Body.NONE, []),
        (b"HEAD", None, False, Body.NONE, []),
        (b"OPTIONS", None, False, Body.NONE, []),
        (b"DELETE", None, False, Body.NONE, [(b"Content-Length", b"0")]),
        (b"POST", None, False, Body.NONE, [(b"Content-Length", b"0")]),
        (b"POST", 0, False, Body.NONE, [(b"Content-Length", b"0")]),
        (b"GET", 5, False, Body.BUFFER, [(b"Content-Length", b"5")]),
        (b"POST", 1, False, Body.BUFFER, [(b"Content-Length", b"1")]),
        (b"PUT", 1000, False, Body.BUFFER, [(b"Content-Length", b"1000")]),
        (b"POST", 1001, False, Body.STREAM, [(b"Content-Length", b"1001")]),
        (b"PATCH", 1_000_000, False, Body.STREAM, [(b"Content-Length", b"1000000")]),
        (b"POST", None, True, Body.STREAM, [(b"Transfer-Encoding", b"chunked")]),
    ],
)
def test_the_body_plan_and_its_framing(
    method: bytes, length: int | None, chunked: bool, plan: Body, framing: list[tuple[bytes, bytes]]
) -> None:
    """No body: nothing or Content-Length 0; up to replay_buffer_bytes: buffered (replayable);
    larger or chunked: streamed. The framing is the proxy's own, whatever the caller wrote."""
    caller_framing = [
        (b"Content-Length", b"999"),
        (b"content-length", b"5"),
        (b"Content_Length", b"1"),
        (b"Transfer-Encoding", b"gzip, chunked"),
    ]
    head = request(
        method,
        b"/api/4.0/looks/1",
        [*usual(TOKEN), *caller_framing],
        length=length,
        chunked=chunked,
    )
    decision = forward(head)
    assert (decision.body, decision.length, decision.chunked) == (plan, length, chunked)
    fields = fields_of(decision)
    framed = [
        f for f in fields if rules.canonical(f[0]) in (b"content-length", b"transfer-encoding")
    ]
    assert framed == framing


@pytest.mark.parametrize(
    ("method", "target"),
    [(b"POST", b"/api/4.0/queries"), (b"PUT", b"/api/4.0/looks/1"), (b"GET", b"/versions")],
)
def test_a_body_over_max_request_body_bytes_is_a_413(method: bytes, target: bytes) -> None:
    """A Content-Length over limits.max_request_body_bytes is refused before anything is read."""
    head = request(method, target, usual(TOKEN), length=1_000_001)
    error = refused(decide(head, PEER, POLICY), 413)
    assert "1000000" in error.public_message


@pytest.mark.parametrize(
    ("method", "target"), [(b"POST", b"/api/4.0/login"), (b"PATCH", b"/api/4.0/session")]
)
def test_a_local_answers_body_over_its_small_limit_is_a_413(method: bytes, target: bytes) -> None:
    """The login form and the PATCH /session JSON are read whole: more than SMALL_BODY is 413."""
    assert isinstance(decide(request(method, target, usual(TOKEN), length=10), PEER, POLICY), Local)
    head = request(method, target, usual(TOKEN), length=SMALL_BODY + 1)
    refused(decide(head, PEER, POLICY), 413)


# --- the target: built from the classified path, never copied -------------------------------------


@pytest.mark.parametrize(
    ("target", "line", "route"),
    [
        (b"/api/4.0/%73ession", b"GET /api/4.0/session HTTP/1.1", "session"),
        (b"/api/4.0/%53ession", b"GET /api/4.0/Session HTTP/1.1", "session"),
        (b"//api/4.0/user", b"GET /api/4.0/user HTTP/1.1", "user"),
        (b"//api//4.0///user", b"GET /api/4.0/user HTTP/1.1", "user"),
        (b"/api/4.0//%75ser?x=%2F&y=a%20b", b"GET /api/4.0/user?x=%2F&y=a%20b HTTP/1.1", "user"),
        (b"/api/4.0/looks/%7Ea", b"GET /api/4.0/looks/~a HTTP/1.1", "looks"),
        (b"/api/4.0/looks/a%3ab", b"GET /api/4.0/looks/a%3Ab HTTP/1.1", "looks"),
        (b"/api/4.0/user?", b"GET /api/4.0/user HTTP/1.1", "user"),
        (b"/api/4.0/queries/42/run/csv", b"GET /api/4.0/queries/42/run/csv HTTP/1.1", "queries"),
        (b"/api/3.1/%6Cooks/1?a=%3F", b"GET /api/3.1/looks/1?a=%3F HTTP/1.1", "looks"),
        (b"/api/4.0/nobody_knows", b"GET /api/4.0/nobody_knows HTTP/1.1", "other"),
    ],
)
def test_the_target_is_built_from_the_classified_path(
    target: bytes, line: bytes, route: str
) -> None:
    """Slashes collapsed, unreserved escapes decoded, the query kept as parsed: the line Looker
    gets names exactly what the policy matched."""
    decision = get(target=target)
    assert parse(decision.head)[0] == line
    assert decision.route == route


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"GET", b"/api/4.0/session#frag", 400),
        (b"GET", b"http://evil.example/api/4.0/user", 400),
        (b"GET", b"*", 400),
        (b"GET", b"api/4.0/user", 400),
        (b"GET", b"/api/4.0/user?x=%zz", 400),
        (b"GET", b"/api/4.0/caf\xc3\xa9", 400),
        (b"GET", b"/api/4.0/%2e%2e/4.0/user", 404),
        (b"GET", b"/api/4.0/../4.0/user", 404),
        (b"GET", b"/api/4.0/user;x=1", 404),
        (b"GET", b"/api/4.0/looks%2F1", 404),
        (b"GET", b"/api/4.0/looks%5C1", 404),
        (b"GET", b"/api/9.9/user", 404),
        (b"GET", b"/user", 404),
        (b"TRACE", b"/api/4.0/user", 404),
        (b"CONNECT", b"/api/4.0/user", 404),
        (b"DELETE", b"/api/4.0/%73ession", 404),
        (b"POST", b"/api/4.0/session", 404),
    ],
)
def test_targets_that_cannot_be_rebuilt_are_refused(
    method: bytes, target: bytes, status: int
) -> None:
    """A fragment, an absolute URL, a bad escape or a raw non-ASCII byte is a 400; dot segments,
    encoded slashes, parameters, unknown versions and methods are a 404: nothing is forwarded."""
    refused(decide(request(method, target, usual(TOKEN)), PEER, POLICY), status)


# --- token policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auths",
    [
        [],
        [(b"Authorization", b"")],
        [(b"Authorization", b"Basic dXNlcjpwYXNz")],
        [(b"Authorization", b"token")],
        [(b"Authorization", b"token wp1.forged.signature")],
        [(b"X-Authorization", TOKEN)],
        [(b"Authorization_", TOKEN)],
    ],
)
def test_no_valid_token_is_a_401(auths: list[tuple[bytes, bytes]]) -> None:
    """Without exactly one valid proxy token in Authorization: Looker's 401, nothing forwarded."""
    error = refused(
        decide(request(b"GET", b"/api/4.0/user", [*usual(), *auths]), PEER, POLICY), 401
    )
    assert isinstance(error, Unauthenticated)
    assert error.public_message == "Requires authentication."


def test_a_token_signed_with_another_key_is_a_401() -> None:
    """A token of another deployment (another signing key) does not verify."""
    other = make_policy(
        make_config(env={"WP_SIGNING_KEY": "another-signing-key-0123456789abcdef-xyz"})
    )
    refused(decide(request(b"GET", b"/api/4.0/user", usual(token(other))), PEER, POLICY), 401)


@pytest.mark.parametrize("second", [TOKEN, token(POLICY, "finance"), b"token junk"])
def test_two_authorization_headers_are_a_400(second: bytes) -> None:
    """Two Authorization headers (even the same token twice) are ambiguous: 400."""
    head = request(b"GET", b"/api/4.0/user", [*usual(TOKEN), (b"authorization", second)])
    error = refused(decide(head, PEER, POLICY), 400)
    assert "exactly one Authorization" in error.public_message


def test_each_team_gets_its_own_session() -> None:
    """The token says which team's pinned session (and concurrency slot) the call takes."""
    for team in ("analytics", "finance"):
        decision = forward(request(b"GET", b"/api/4.0/user", usual(token(POLICY, team))))
        assert (decision.team, decision.key) == (team, Managed(team))


@pytest.mark.parametrize("target", [b"/versions", b"/versions/", b"/api/4.0/versions"])
def test_versions_is_public(target: bytes) -> None:
    """GET /versions needs no token and is forwarded without a session."""
    decision = forward(request(b"GET", target, usual()))
    assert (decision.route, decision.team, decision.key) == ("versions", None, None)


def test_login_is_answered_locally() -> None:
    """POST /login is the proxy's own: its small body is read, its query kept for credentials;
    no token is needed (a bogus one is ignored)."""
    head = request(b"POST", b"/api/4.0/login?client_id=a", usual(b"token junk"), length=20)
    decision = decide(head, PEER, POLICY)
    assert isinstance(decision, Local)
    assert (decision.act, decision.reads_body, decision.query) == (Act.LOGIN, True, "client_id=a")
    assert decision.then is None


@pytest.mark.parametrize("target", [b"/api/logout", b"/api/4.0/logout"])
def test_logout_ends_the_proxy_token_locally(target: bytes) -> None:
    """DELETE logout revokes the caller's proxy token; the team's Looker session stays."""
    decision = decide(request(b"DELETE", target, usual(TOKEN)), PEER, POLICY)
    assert isinstance(decision, Local)
    assert (decision.act, decision.team, decision.then) == (Act.LOGOUT, "analytics", None)
    assert decision.principal is not None
    assert decision.principal.caller == "analytics-caller"


def test_sudo_is_answered_locally_when_allowed() -> None:
    """With allow_sudo, POST /login/{user_id} is the proxy's: a sudo session for that user."""
    head = request(b"POST", b"/api/4.0/login/3", usual(token(SUDO_POLICY)))
    decision = decide(head, PEER, SUDO_POLICY)
    assert isinstance(decision, Local)
    assert (decision.act, decision.user_id, decision.team) == (Act.SUDO, "3", "analytics")


def test_sudo_is_refused_when_not_allowed() -> None:
    """Without allow_sudo: 403, naming the setting."""
    error = refused(decide(request(b"POST", b"/api/4.0/login/3", usual(TOKEN)), PEER, POLICY), 403)
    assert isinstance(error, Forbidden)
    assert "allow_sudo" in error.public_message


@pytest.mark.parametrize("user", [b"x@y", b"3.json", b"a" * 65, b"%2B1"])
def test_sudo_to_a_strange_user_id_is_not_found(user: bytes) -> None:
    """Only plain ids ([A-Za-z0-9_-], at most 64) are sudo targets; others are 404."""
    head = request(b"POST", b"/api/4.0/login/" + user, usual(token(SUDO_POLICY)))
    refused(decide(head, PEER, SUDO_POLICY), 404)


def test_a_sudo_token_uses_the_sudo_session() -> None:
    """A token issued for sudo forwards under the team's sudo session for that user."""
    decision = forward(
        request(b"GET", b"/api/4.0/user", usual(token(SUDO_POLICY, sudo="3"))), SUDO_POLICY
    )
    assert (decision.team, decision.key) == ("analytics", Managed("analytics", "3"))


def test_a_sudo_token_stops_working_when_sudo_is_turned_off() -> None:
    """The same signing key, allow_sudo now off: the sudo token is a 401."""
    head = request(b"GET", b"/api/4.0/user", usual(token(SUDO_POLICY, sudo="3")))
    refused(decide(head, PEER, POLICY), 401)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/api/4.0/session", b"/api/4.0/session"),
        (b"/api/4.0/%73ession", b"/api/4.0/session"),
        (b"//api/4.0/Session.json", b"/api/4.0/Session.json"),
    ],
)
def test_patch_session_is_local_then_a_get_of_the_session(target: bytes, path: bytes) -> None:
    """PATCH /session never reaches Looker: its body is checked locally, then the pinned
    session is read with a bodyless GET of the same path."""
    head = request(
        b"PATCH", target, [*usual(TOKEN), (b"Content-Type", b"application/json")], length=30
    )
    decision = decide(head, PEER, POLICY)
    assert isinstance(decision, Local)
    assert (decision.act, decision.reads_body, decision.team) == (
        Act.PATCH_SESSION,
        True,
        "analytics",
    )
    then = decision.then
    assert then is not None
    assert (then.body, then.length, then.key) == (Body.NONE, None, Managed("analytics"))
    line, fields = parse(then.head)
    assert line == b"GET " + path + b" HTTP/1.1"
    assert values_of(fields, b"content-length") == []
    assert values_of(fields, b"content-type") == [b"application/json"]


@pytest.mark.parametrize("method", [b"PUT", b"POST"])
def test_a_pinned_branch_cannot_be_switched(method: bytes) -> None:
    """A team pinned to a dev branch: PUT/POST git_branch is a 403 (reading it is forwarded)."""
    policy = make_policy(team_settings={"analytics": BRANCH})
    target = b"/api/4.0/projects/sales/git_branch"
    error = refused(decide(request(method, target, usual(token(policy))), PEER, policy), 403)
    assert "feature-x" in error.public_message
    assert forward(request(b"GET", target, usual(token(policy))), policy).route == "projects"


@pytest.mark.parametrize(
    "settings_", [{}, {**BRANCH, "allow_branch_switch": True}], ids=["no-branch", "allowed"]
)
def test_a_branch_switch_is_forwarded_when_allowed(settings_: dict[str, Any]) -> None:
    """Without a pinned branch, or with allow_branch_switch, the switch goes to Looker."""
    policy = make_policy(team_settings={"analytics": settings_})
    head = request(b"PUT", b"/api/4.0/projects/sales/git_branch", usual(token(policy)), length=9)
    assert forward(head, policy).body is Body.BUFFER


# --- passthrough ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"looker-own-token", b"wp2.sealed.token"])
def test_a_passthrough_token_is_resolved_first(raw: bytes) -> None:
    """With a passthrough team, a token that is not a proxy token (a raw Looker token or a sealed
    one) must be resolved before the rest of the decision."""
    decision = decide(
        request(b"GET", b"/api/4.0//%75ser?a=1", usual(b"Bearer " + raw)), PEER, PT_POLICY
    )
    assert isinstance(decision, Resolve)
    assert decision.token.reveal() == raw.decode()
    assert (decision.route.path, decision.target.query) == ("/api/4.0/user", "a=1")


def test_a_proxy_token_is_verified_even_with_passthrough_teams() -> None:
    """wp1 tokens are still the proxy's: verified, never sent to be resolved."""
    decision = forward(request(b"GET", b"/api/4.0/user", usual(token(PT_POLICY))), PT_POLICY)
    assert decision.key == Managed("analytics")


def test_a_foreign_token_without_passthrough_teams_is_a_401() -> None:
    """Without a passthrough team, a token that is not ours is simply invalid."""
    refused(
        decide(request(b"GET", b"/api/4.0/user", usual(b"token looker-own")), PEER, POLICY), 401
    )


def pinned(policy: Policy, team: str = "bi") -> Pinned:
    session = PinnedSession(
        token=Secret("looker-own-token"),
        team=team,
        workspace="dev",
        generation=0,
        fingerprint="fp",
        pinned_at=0.0,
        refresh_at=1e9,
        usable_until=1e9,
    )
    return Pinned(policy.config.teams[team], session)


def finish(method: bytes, target: bytes, policy: Policy = PT_POLICY, **kwargs: Any) -> Decision:
    """decide() then decide_pinned() for a passthrough caller's token."""
    head = request(method, target, [*usual(b"token looker-own-token"), (b"Cookie", b"c")], **kwargs)
    resolve = decide(head, PEER, policy)
    assert isinstance(resolve, Resolve)
    return decide_pinned(head, PEER, policy, resolve, pinned(policy))


def sealed_pinned(policy: Policy, token_id: str) -> Pinned:
    """A sealed passthrough session (as ``Passthrough`` opens a ``wp2.`` token, once)."""
    plain = pinned(policy)
    sealed = SealedSession("bi", plain.session.token, 2**40, token_id, "dev", None)
    return Pinned(plain.team, plain.session, sealed)


def test_remembered_passthrough_forwards_belong_to_their_own_session() -> None:
    """The same head for two sealed sessions decides two forwards, each under its own session;
    asked again, each session gets its own remembered forward (and ``decide`` the Resolve it
    remembered once a session opened)."""
    policy = make_policy(teams=("analytics",), team_settings={"bi": PASSTHROUGH})
    head = request(b"GET", b"/api/4.0/user", usual(b"token looker-own-token"))
    first, second = sealed_pinned(policy, "t1"), sealed_pinned(policy, "t2")
    resolve = decide(head, PEER, policy)
    assert isinstance(resolve, Resolve)
    one = decide_pinned(head, PEER, policy, resolve, first)
    two = decide_pinned(head, PEER, policy, resolve, second)
    assert isinstance(one, Forward)
    assert isinstance(two, Forward)
    assert one.key == Caller(first)
    assert two.key == Caller(second)
    assert decide(head, PEER, policy) is resolve
    assert decide_pinned(head, PEER, policy, resolve, second) is two
    assert decide_pinned(head, PEER, policy, resolve, first) is one
    assert decide_pinned(head, PEER, policy, resolve, sealed_pinned(policy, "t1")) is not one


def test_an_unknown_route_is_refused_before_a_passthrough_token_is_resolved() -> None:
    """Route policy runs first: a 404 never costs a call to Looker to verify the token."""
    head = request(b"GET", b"/api/4.0/a%2Fb", usual(b"token looker-own-token"))
    refused(decide(head, PEER, PT_POLICY), 404)


def test_a_resolved_passthrough_call_is_forwarded_under_the_callers_session() -> None:
    """Resolved, the call is forwarded under the caller's own pinned session, with the same
    header rules as any other."""
    decision = finish(b"POST", b"//api/4.0/queries", length=20)
    assert isinstance(decision, Forward)
    assert (decision.team, decision.body) == ("bi", Body.BUFFER)
    assert isinstance(decision.key, Caller)
    line, fields = parse(decision.head)
    assert line == b"POST /api/4.0/queries HTTP/1.1"
    assert values_of(fields, b"cookie") == []
    assert b"looker-own-token" not in decision.head


def test_passthrough_callers_get_the_same_team_policy() -> None:
    """PATCH /session is local, sudo needs allow_sudo, a pinned branch cannot be switched."""
    patch = finish(b"PATCH", b"/api/4.0/session", length=2)
    assert isinstance(patch, Local)
    assert patch.act is Act.PATCH_SESSION
    refused(finish(b"POST", b"/api/4.0/login/3"), 403)
    sudo_policy = make_policy(
        teams=("analytics",), team_settings={"bi": {**PASSTHROUGH, "allow_sudo": True}}
    )
    sudo = finish(b"POST", b"/api/4.0/login/3", sudo_policy)
    assert isinstance(sudo, Local)
    assert (sudo.act, sudo.user_id) == (Act.PASSTHROUGH_SUDO, "3")
    branch_policy = make_policy(
        teams=("analytics",), team_settings={"bi": {**PASSTHROUGH, **BRANCH}}
    )
    refused(finish(b"PUT", b"/api/4.0/projects/sales/git_branch", branch_policy), 403)


def test_a_passthrough_logout_is_local_then_lookers_logout() -> None:
    """DELETE /api/logout revokes the sealed token, then Looker's own logout is forwarded under
    the caller's session (bodyless, built from the configured API version)."""
    decision = finish(b"DELETE", b"/api/logout")
    assert isinstance(decision, Local)
    assert decision.act is Act.PASSTHROUGH_LOGOUT
    then = decision.then
    assert then is not None
    assert isinstance(then.key, Caller)
    line, fields = parse(then.head)
    assert line == b"DELETE /api/4.0/logout HTTP/1.1"
    assert values_of(fields, b"cookie") == []
    assert then.body is Body.NONE


# --- decide_patch ---------------------------------------------------------------------------------


def patch_then() -> tuple[Forward, Any]:
    head = request(b"PATCH", b"/api/4.0/session", usual(TOKEN), length=30)
    decision = decide(head, PEER, POLICY)
    assert isinstance(decision, Local)
    assert decision.then is not None
    return decision.then, POLICY.config.teams["analytics"]


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"workspace_id": "dev"}', b'{"workspace_id": null}', b"[1]"]
)
def test_patch_session_keeping_the_workspace_is_answered_with_the_session(body: bytes) -> None:
    """No workspace, or the team's own: the answer is the pinned session (GET /session)."""
    then, team = patch_then()
    assert decide_patch(body, team, then) is then


def test_patch_session_to_another_workspace_is_a_403() -> None:
    """Another valid workspace would break the pin: 403, naming both."""
    then, team = patch_then()
    decision = decide_patch(b'{"workspace_id": "production"}', team, then)
    error = refused(decision, 403)
    assert "'dev'" in error.public_message
    assert "'production'" in error.public_message


def test_patch_session_to_an_unknown_workspace_is_a_422() -> None:
    """An unknown workspace is Looker's own 422 with its errors list."""
    then, team = patch_then()
    error = refused(decide_patch(b'{"workspace_id": "staging"}', team, then), 422)
    assert isinstance(error, Invalid)
    assert error.errors[0]["field"] == "workspace_id"


def test_patch_session_with_broken_json_is_a_400() -> None:
    """A body that is not JSON is a 400."""
    then, team = patch_then()
    refused(decide_patch(b'{"workspace_id": ', team, then), 400)


# --- towards the caller ---------------------------------------------------------------------------


def downstream(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = rules.named_in_connection(v for n, v in fields if rules.canonical(n) == b"connection")
    return [(n, v) for n, v in fields if rules.passes_downstream(n, named)]


def test_downstream_drops_hop_by_hop_and_connection_named() -> None:
    """Looker's hop-by-hop headers and those it names in Connection are not passed on."""
    out = downstream(
        [
            (b"Connection", b"keep-alive, X-Looker-Internal"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Trailer", b"Expires"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"X-Looker-Internal", b"1"),
            (b"x_looker_internal", b"2"),
            (b"Content-Type", b"application/json"),
        ]
    )
    assert out == [(b"Content-Type", b"application/json")]


def test_downstream_keeps_end_to_end_headers() -> None:
    """Content-Type, Content-Encoding, every Set-Cookie and the rest pass on, byte for byte."""
    incoming = [
        (b"Content-Type", b"text/csv; charset=utf-8"),
        (b"Content-Length", b"1234"),
        (b"Content-Encoding", b"gzip"),
        (b"Content-Disposition", b'attachment; filename="q\xe9.csv"'),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"Set-Cookie", b"b=2; Path=/"),
        (b"ETag", b'"v1"'),
        (b"Cache-Control", b"no-cache"),
        (b"Retry-After", b"3"),
        (b"X-Looker-Rate-Limited", b"true"),
        (b"WWW-Authenticate", b"Bearer"),
    ]
    assert downstream(incoming) == incoming


# --- properties -----------------------------------------------------------------------------------

NAME_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
ORDINARY_NAMES: Final = [
    b"X-Named",
    b"x_named",
    b"X-NAMED",
    b"X-Custom",
    b"Accept",
    b"X-Request-Id",
]
"""Headers that pass unless a Connection header names them."""
NAMES = (
    st.sampled_from(
        [
            *AUTH_VARIANTS,
            *ORDINARY_NAMES,
            *AUTH_LOOKALIKES,
            b"Connection",
            b"connection",
            b"Keep-Alive",
            b"Transfer_Encoding",
            b"Content-Length",
            b"Host",
            b"X-Forwarded-For",
            b"x_forwarded_proto",
            b"Forwarded",
            b"X-Real-IP",
            b"Via",
            b"Cookie",
        ]
    )
    | st.builds(
        lambda name, flips: bytes(
            c - 32 if f and 97 <= c <= 122 else c for c, f in zip(name, flips, strict=False)
        ),
        st.sampled_from(sorted(rules.HOP_BY_HOP | {b"authorization"})),
        st.lists(st.booleans(), min_size=20, max_size=20),
    )
    | st.text(alphabet=NAME_CHARS, min_size=1, max_size=20).map(str.encode)
)
VALUES = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)
) | st.lists(NAMES, min_size=1, max_size=4).map(b", ".join)
CONNECTION = st.tuples(
    st.sampled_from([b"Connection", b"connection", b"CONNECTION"]),
    st.lists(
        st.sampled_from(
            [*ORDINARY_NAMES, b"keep-alive", b"Host", b"Authorization", b"X_Forwarded_For"]
        ),
        min_size=1,
        max_size=3,
    ).map(b", ".join),
)
"""A Connection header naming headers that would otherwise pass (or the proxy's own)."""
FIELDS = st.lists(st.tuples(NAMES, VALUES) | CONNECTION, max_size=12)
FRAMING = st.none() | st.integers(min_value=0, max_value=1_000_000) | st.just("chunked")


@settings(
    database=None, deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    fields=FIELDS,
    at=st.integers(min_value=0, max_value=12),
    method=st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT", b"PATCH", b"DELETE"]),
    framing=FRAMING,
)
def test_looker_never_gets_caller_credentials_hop_by_hop_or_claims(
    fields: list[tuple[bytes, bytes]], at: int, method: bytes, framing: int | str | None
) -> None:
    """For any headers around the caller's token: either two Authorization headers are refused
    (400), or Looker gets no credential-like, hop-by-hop, Connection-named, Forwarded or caller
    Host header; its own Host, X-Forwarded-For and framing once each; every other header exactly
    as sent, in order."""
    incoming = [*fields[:at], (b"Authorization", TOKEN), *fields[at:]]
    chunked = framing == "chunked"
    length = framing if isinstance(framing, int) else None
    head = request(method, b"/api/4.0/looks/1?a=1", incoming, length=length, chunked=chunked)
    decision = decide(head, PEER, POLICY)
    if len(head.auths) > 1:
        refused(decision, 400)
        return
    assert isinstance(decision, Forward), decision
    line, out = parse(decision.head)
    assert line == method + b" /api/4.0/looks/1?a=1 HTTP/1.1"
    names = names_of(out)
    assert not [n for n, _ in out if authorization_like(n)]
    assert TOKEN not in decision.head
    assert not names & rules.HOP_BY_HOP - {b"transfer-encoding"}
    named = rules.named_in_connection(head.connection)
    assert not (names & named) - OWN
    assert values_of(out, b"host") == [LOOKER_HOST]
    assert values_of(out, b"x-forwarded-for") == [b"10.1.2.3"]
    assert values_of(out, b"x-forwarded-proto") == [b"https"]
    assert values_of(out, b"x-forwarded-host") == ([head.host] if head.host else [])
    assert values_of(out, b"forwarded") == []
    assert values_of(out, b"x-real-ip") == []
    assert values_of(out, b"via") == []
    assert values_of(out, b"cookie") == []
    framed: tuple[list[bytes], list[bytes]]
    if chunked:
        framed = ([], [b"chunked"])
    elif length or method not in (b"GET", b"HEAD", b"OPTIONS"):
        framed = ([str(length or 0).encode()], [])
    else:
        framed = ([], [])
    assert (values_of(out, b"content-length"), values_of(out, b"transfer-encoding")) == framed
    kept = iter(incoming)
    for field in (f for f in out if rules.canonical(f[0]) not in OWN):
        assert field in kept, f"{field!r} was not sent, or not in this order"


@settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
@given(fields=FIELDS)
def test_downstream_never_has_hop_by_hop(fields: list[tuple[bytes, bytes]]) -> None:
    """For any Looker headers, the caller gets no hop-by-hop or Connection-named header and
    every other one, unchanged and in order."""
    out = downstream(fields)
    named = rules.named_in_connection(v for n, v in fields if rules.canonical(n) == b"connection")
    assert not names_of(out) & (rules.HOP_BY_HOP | named)
    assert out == [(n, v) for n, v in fields if rules.canonical(n) not in rules.HOP_BY_HOP | named]


def test_the_refusal_body_is_looker_shaped() -> None:
    """A refusal carries Looker's error shape (message, documentation_url), nothing more."""
    error = refused(decide(request(b"GET", b"/api/4.0/user", usual()), PEER, POLICY), 401)
    status, _, body = answer(error)
    assert status == 401
    assert set(json.loads(body)) == {"message", "documentation_url"}


async def test_a_forward_is_remembered_only_while_its_callers_token_is_good() -> None:
    """The same head decides the same forward (remembered per configuration) until the token is
    logged out: then it is a 401 even though the forward was remembered."""
    policy = make_policy()
    issued = policy.auth.issue("analytics", "analytics-caller")
    head = request(
        b"GET", b"/api/4.0/looks/1", usual(b"token " + issued.access_token.reveal().encode())
    )
    first = decide(head, PEER, policy)
    assert isinstance(first, Forward)
    assert decide(head, PEER, policy) is first
    principal = policy.auth.verify_token(issued.access_token.reveal())
    await policy.auth.revoke(principal)  # a logout
    refused(decide(head, PEER, policy), 401)
    refused(decide(head, PEER, policy), 401)


def test_remembered_forwards_are_per_peer() -> None:
    """Two callers sending the same head get forwards naming their own address."""
    policy = make_policy()
    head = request(b"GET", b"/api/4.0/looks/1", usual(token(policy)))
    mine = decide(head, Peer("10.0.0.1", "http"), policy)
    theirs = decide(head, Peer("10.0.0.2", "http"), policy)
    assert isinstance(mine, Forward)
    assert isinstance(theirs, Forward)
    assert b"X-Forwarded-For: 10.0.0.1\r\n" in mine.head
    assert b"X-Forwarded-For: 10.0.0.2\r\n" in theirs.head
