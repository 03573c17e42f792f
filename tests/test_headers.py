"""Header hygiene: the caller's credentials and spoofable headers never reach Looker."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from workspace_proxy.headers import (
    HOP_BY_HOP,
    canonical,
    connection_tokens,
    downstream_headers,
    upstream_headers,
)

PINNED = "token looker-pinned-access-token"
AUTH_VARIANTS = [
    "Authorization",
    "authorization",
    "AUTHORIZATION",
    "aUtHoRiZaTiOn",
    " Authorization",
    "Authorization ",
]


def up(headers: list[tuple[str, str]], **kwargs: Any) -> CIMultiDict[str]:
    """upstream_headers() with defaults for everything but the incoming headers."""
    args: dict[str, Any] = {
        "authorization": PINNED,
        "peer": "10.1.2.3",
        "proto": "https",
        "host": "proxy.example.com",
        "content_length": None,
    }
    args.update(kwargs)
    auth = args.pop("authorization")
    return upstream_headers(CIMultiDict(headers), auth, **args)


def down(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    return downstream_headers(CIMultiDictProxy(CIMultiDict(headers)))


def canonical_names(headers: CIMultiDict[str]) -> list[str]:
    return [canonical(k) for k in headers]


def values_of(headers: CIMultiDict[str], name: str) -> list[str]:
    """Every value of headers whose canonical name is ``name``."""
    return [v for k, v in headers.items() if canonical(k) == canonical(name)]


# --- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Authorization", "authorization"),
        ("X_Forwarded_For", "x-forwarded-for"),
        ("  Keep_Alive ", "keep-alive"),
        ("content-type", "content-type"),
    ],
)
def test_canonical(name: str, expected: str) -> None:
    """canonical() lower-cases, strips and reads '_' as '-'."""
    assert canonical(name) == expected


def test_connection_tokens_reads_every_connection_header() -> None:
    """Tokens from several Connection headers and comma lists are all collected, canonically."""
    assert connection_tokens(["keep-alive, X-Secret", " Upgrade ,,", "X_Other"]) == {
        "keep-alive",
        "x-secret",
        "upgrade",
        "x-other",
    }
    assert connection_tokens([]) == frozenset()


# --- upstream -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", AUTH_VARIANTS)
def test_caller_authorization_is_replaced_in_every_spelling(name: str) -> None:
    """Whatever the case or padding, the caller's Authorization becomes the pinned one."""
    out = up([(name, "Bearer caller-proxy-token")])
    assert values_of(out, "authorization") == [PINNED]
    assert "caller-proxy-token" not in str(out)


def test_duplicate_and_mixed_authorization_headers_all_go() -> None:
    """Several caller Authorization headers in mixed case leave exactly the pinned one."""
    out = up([(name, f"Bearer caller-{i}") for i, name in enumerate(AUTH_VARIANTS * 2)])
    assert values_of(out, "authorization") == [PINNED]
    assert list(out.items()).count(("Authorization", PINNED)) == 1
    assert "caller-" not in str(out)


def test_no_authorization_when_none_is_given() -> None:
    """Without a pinned token (e.g. /versions) no Authorization is sent at all."""
    out = up([("Authorization", "Bearer caller-token")], authorization=None)
    assert values_of(out, "authorization") == []


@pytest.mark.parametrize(
    "name",
    [
        "Proxy-Authorization",
        "proxy_authorization",
        "Proxy-Authenticate",
        "Connection",
        "Keep-Alive",
        "keep_alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "transfer_encoding",
        "Upgrade",
        "UPGRADE",
    ],
)
def test_hop_by_hop_headers_are_dropped(name: str) -> None:
    """Hop-by-hop headers, in any case and with '_' for '-', are not forwarded."""
    out = up([(name, "x"), ("Accept", "application/json")])
    assert canonical(name) not in canonical_names(out)
    assert out["Accept"] == "application/json"


def test_headers_named_in_connection_are_dropped() -> None:
    """Headers the caller lists in Connection (any case, '_' or '-', several headers) go."""
    out = up(
        [
            ("Connection", "X-Internal-Secret, keep-alive"),
            ("connection", "x_debug_user"),
            ("X-Internal-Secret", "s3cret"),
            ("X-Debug-User", "admin"),
            ("x-debug-user", "root"),
            ("X-Request-Id", "abc"),
        ]
    )
    names = canonical_names(out)
    assert "x-internal-secret" not in names
    assert "x-debug-user" not in names
    assert "connection" not in names
    assert out["X-Request-Id"] == "abc"


def test_connection_cannot_remove_the_pinned_headers() -> None:
    """Naming Authorization or X-Forwarded-For in Connection does not remove the proxy's own."""
    out = up([("Connection", "Authorization, X-Forwarded-For, Content-Length")], content_length=3)
    assert values_of(out, "authorization") == [PINNED]
    assert values_of(out, "x-forwarded-for") == ["10.1.2.3"]
    assert values_of(out, "content-length") == ["3"]


def test_host_is_dropped() -> None:
    """The caller's Host is not forwarded (the client sets Looker's); it is X-Forwarded-Host."""
    out = up([("Host", "proxy.example.com:8080"), ("host", "evil")], host="proxy.example.com")
    assert values_of(out, "host") == []
    assert values_of(out, "x-forwarded-host") == ["proxy.example.com"]


def test_content_length_is_replaced_by_the_given_one() -> None:
    """The caller's Content-Length values go; the given length is the only one."""
    out = up(
        [("Content-Length", "999"), ("content-length", "5"), ("Content_Length", "1")],
        content_length=42,
    )
    assert values_of(out, "content-length") == ["42"]


def test_content_length_is_absent_when_not_given() -> None:
    """Without a given length (streamed body), no Content-Length is forwarded."""
    out = up([("Content-Length", "999")], content_length=None)
    assert values_of(out, "content-length") == []


@pytest.mark.parametrize("name", ["Cookie", "Expect"])
def test_caller_only_headers_are_dropped(name: str) -> None:
    """The caller's cookies and Expect are not forwarded to Looker."""
    out = up([(name, "x")])
    assert values_of(out, name) == []


def test_forwarding_headers_cannot_be_spoofed() -> None:
    """Every incoming Forwarded/X-Forwarded-* is dropped; the proxy sets its own values."""
    out = up(
        [
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("X_Forwarded_For", "8.8.8.8"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil.example.com"),
            ("X-Forwarded-Port", "1"),
            ("X-Forwarded-User", "admin"),
            ("X-Forwarded-Prefix", "/x"),
            ("Forwarded", "for=6.6.6.6;proto=http"),
            ("forwarded", "for=7.7.7.7"),
        ],
        peer="10.1.2.3",
        proto="https",
        host="proxy.example.com",
    )
    assert values_of(out, "x-forwarded-for") == ["10.1.2.3"]
    assert values_of(out, "x-forwarded-proto") == ["https"]
    assert values_of(out, "x-forwarded-host") == ["proxy.example.com"]
    for gone in ("x-forwarded-port", "x-forwarded-user", "x-forwarded-prefix", "forwarded"):
        assert values_of(out, gone) == []
    assert "6.6.6.6" not in str(out)
    assert "evil" not in str(out)


def test_unknown_peer_and_host_leave_no_claimed_values() -> None:
    """Without a peer or host, the caller's claimed X-Forwarded-For/-Host are not kept either."""
    out = up(
        [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "evil")],
        peer=None,
        host=None,
        proto="http",
    )
    assert values_of(out, "x-forwarded-for") == []
    assert values_of(out, "x-forwarded-host") == []
    assert values_of(out, "x-forwarded-proto") == ["http"]


def test_ordinary_headers_are_forwarded_unchanged() -> None:
    """End-to-end headers pass through with their values, duplicates and order."""
    incoming = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip"),
        ("User-Agent", "PY-SDK 26.22.0"),
        ("X-Looker-Appid", "spectacles"),
        ("X-Request-Id", "r1"),
        ("X-Custom", "a"),
        ("X-Custom", "b"),
        ("If-None-Match", '"etag"'),
    ]
    out = up(incoming)
    kept = [(k, v) for k, v in out.items() if canonical(k) not in ("authorization",)]
    assert kept[: len(incoming)] == incoming


def test_upstream_does_not_modify_the_incoming_headers() -> None:
    """The caller's header object is left as it was."""
    incoming = CIMultiDict([("Authorization", "Bearer x"), ("Host", "h"), ("Accept", "*/*")])
    before = list(incoming.items())
    upstream_headers(incoming, PINNED, peer="1.2.3.4", proto="http", host="h", content_length=0)
    assert list(incoming.items()) == before


# --- downstream ---------------------------------------------------------------------------


def test_downstream_drops_hop_by_hop_and_connection_named() -> None:
    """Looker's hop-by-hop headers and those it names in Connection are not passed on."""
    out = down(
        [
            ("Connection", "keep-alive, X-Looker-Internal"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "Expires"),
            ("Upgrade", "h2c"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Looker-Internal", "1"),
            ("x_looker_internal", "2"),
            ("Content-Type", "application/json"),
        ]
    )
    names = canonical_names(out)
    assert not set(names) & HOP_BY_HOP
    assert "x-looker-internal" not in names
    assert out["Content-Type"] == "application/json"


def test_downstream_keeps_end_to_end_headers() -> None:
    """Content-Type, Content-Length, Content-Encoding, every Set-Cookie and the rest pass on."""
    incoming = [
        ("Content-Type", "text/csv; charset=utf-8"),
        ("Content-Length", "1234"),
        ("Content-Encoding", "gzip"),
        ("Content-Disposition", 'attachment; filename="q.csv"'),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("ETag", '"v1"'),
        ("Cache-Control", "no-cache"),
        ("Retry-After", "3"),
        ("X-Looker-Rate-Limited", "true"),
        ("WWW-Authenticate", "Bearer"),
    ]
    assert list(down(incoming).items()) == incoming


# --- properties ---------------------------------------------------------------------------

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
    min_size=1,
    max_size=20,
)
NAMES = (
    st.sampled_from(
        [
            *AUTH_VARIANTS,
            "Proxy_Authorization",
            "Connection",
            "connection",
            "Keep-Alive",
            "Transfer_Encoding",
            "Content-Length",
            "Host",
            "X-Forwarded-For",
            "x_forwarded_proto",
            "Forwarded",
        ]
    )
    | st.builds(
        lambda name, flips: "".join(
            c.upper() if f else c for c, f in zip(name, flips, strict=False)
        ),
        st.sampled_from(sorted(HOP_BY_HOP | {"authorization"})),
        st.lists(st.booleans(), min_size=20, max_size=20),
    )
    | TOKEN
)
VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30) | (
    st.lists(NAMES, min_size=1, max_size=4).map(", ".join)
)


@settings(
    database=None, deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=12),
    authorization=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
    ).map(lambda t: f"token {t}"),
    content_length=st.none() | st.integers(min_value=0, max_value=2**40),
)
def test_upstream_has_exactly_the_given_authorization_and_no_hop_by_hop(
    headers: list[tuple[str, str]], authorization: str, content_length: int | None
) -> None:
    """For any incoming headers: one Authorization (the given one), no hop-by-hop, no spoofing."""
    out = up(headers, authorization=authorization, content_length=content_length)
    assert values_of(out, "authorization") == [authorization]
    names = canonical_names(out)
    assert not set(names) & HOP_BY_HOP
    named = connection_tokens(v for k, v in headers if canonical(k) == "connection")
    own = {
        "authorization",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
    assert not (set(names) & named) - own
    assert values_of(out, "x-forwarded-for") == ["10.1.2.3"]
    assert values_of(out, "host") == []
    assert values_of(out, "forwarded") == []
    expected_length = [] if content_length is None else [str(content_length)]
    assert values_of(out, "content-length") == expected_length


@settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
@given(headers=st.lists(st.tuples(NAMES, VALUES), max_size=12))
def test_downstream_never_has_hop_by_hop(headers: list[tuple[str, str]]) -> None:
    """For any Looker headers, downstream keeps no hop-by-hop or Connection-named header and
    keeps every other one."""
    out = down(headers)
    named = connection_tokens(v for k, v in headers if canonical(k) == "connection")
    assert not set(canonical_names(out)) & (HOP_BY_HOP | named)
    kept = [(k, v) for k, v in headers if canonical(k) not in HOP_BY_HOP | named]
    assert list(out.items()) == kept
