"""Header hygiene for both directions. Pure functions, no I/O.

Upstream, these are dropped: the caller's credentials (any header whose name, ignoring case and
punctuation, contains ``authorization``: ``Authorization``, ``authorization_``,
``X-Authorization``, ``Proxy-Authorization``), hop-by-hop headers, those named in
``Connection``, ``Host``, ``Cookie``, ``Expect``, headers some servers obey to re-route or
re-method a request (``X-Original-URL``, ``X-HTTP-Method-Override``, ...) and every incoming
``Forwarded`` or ``X-Forwarded-*``. The proxy sets the pinned token and its own
``X-Forwarded-For``/``-Proto``/``-Host`` (the caller's peer address, never a claimed one).
Downstream: hop-by-hop headers are dropped; everything else from Looker is passed on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_LETTERS: Final = re.compile(r"[^a-z]")
_CALLER_ONLY: Final = frozenset(
    {
        "authorization",
        "host",
        "content-length",
        "expect",
        "forwarded",
        "cookie",
        # Headers some servers obey to re-route or re-method a request behind the route policy.
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-override-url",
        "x-original-host",
        "x-host",
        # Claims about the caller's address or the path the request took: only the proxy's own
        # X-Forwarded-For says who called (``X-Forwarded-*`` and ``Forwarded`` are dropped too).
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-proxyuser-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-forwarded",
        "via",
        "max-forwards",
        # The caller's address as the front tells it to the application behind it.
        "x-workspace-proxy-peer",
    }
)
ADDED: Final = 6
"""Headers the proxy may add to a request (Host when the caller sent none, Authorization,
Content-Length, X-Forwarded-For/-Proto/-Host): counted in ``limits.max_headers``."""
PEER_HEADER: Final = b"x-workspace-proxy-peer"
"""Set by the front on every relayed request (a caller's own copy is removed first)."""


def canonical(name: str) -> str:
    """Lower case with ``_`` read as ``-`` (some servers treat them alike)."""
    return name.strip().lower().replace("_", "-")


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Header names listed in ``Connection`` headers."""
    return frozenset(canonical(t) for v in values for t in v.split(",") if t.strip())


@functools.lru_cache(maxsize=4096)
def _always_dropped(name: str) -> bool:
    c = canonical(name)
    return (
        c in HOP_BY_HOP
        or c in _CALLER_ONLY
        or c.startswith("x-forwarded-")
        or "authorization" in _LETTERS.sub("", c)  # Authorization_, X-Authorization, ...
    )


@functools.lru_cache(maxsize=4096)
def _hop_by_hop(name: str) -> bool:
    return canonical(name) in HOP_BY_HOP


@functools.lru_cache(maxsize=4096)
def _always_dropped_raw(name: bytes) -> bool:
    return _always_dropped(name.decode("latin-1"))


@functools.lru_cache(maxsize=4096)
def canonical_raw(name: bytes) -> bytes:
    """``canonical`` for a raw header name."""
    return name.strip().lower().replace(b"_", b"-")


def dropped_upstream(name: bytes, named: frozenset[bytes]) -> bool:
    """``upstream_headers``' rule for one raw header name (``named``: canonical names listed in
    the request's Connection headers)."""
    return _always_dropped_raw(name) or (bool(named) and canonical_raw(name) in named)


@functools.lru_cache(maxsize=4096)
def hop_by_hop(name: bytes) -> bool:
    """Whether a raw response header name is hop-by-hop (never passed on)."""
    return _hop_by_hop(name.decode("latin-1"))


def _dropped(name: str, named: frozenset[str]) -> bool:
    return _always_dropped(name) or (bool(named) and canonical(name) in named)


def upstream_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str],
    authorization: str | None,
    *,
    peer: str | None,
    proto: str,
    host: str | None,
    content_length: int | None,
) -> CIMultiDict[str]:
    named = connection_tokens(incoming.getall("Connection", ()))
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in incoming.items() if not _dropped(k, named)
    )
    if authorization is not None:
        out["Authorization"] = authorization
    if content_length is not None:
        out["Content-Length"] = str(content_length)
    if peer:
        out["X-Forwarded-For"] = peer
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    return out


def downstream_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    named = connection_tokens(incoming.getall("Connection", ()))
    return CIMultiDict(
        (k, v)
        for k, v in incoming.items()
        if not _hop_by_hop(k) and not (named and canonical(k) in named)
    )


# What the front needs to know about a header, by its raw name (cached: names repeat).
OTHER, HOST, LENGTH, TE, EXPECT, AUTH, RID, CONNECTION, HOP = range(9)
_KINDS: Final = {
    b"host": HOST,
    b"content-length": LENGTH,
    b"transfer-encoding": TE,
    b"expect": EXPECT,
    b"authorization": AUTH,
    b"x-request-id": RID,
    b"connection": CONNECTION,
}


@functools.lru_cache(maxsize=4096)
def kind(name: bytes) -> int:
    """Which of the kinds above a raw header name is (``HOP``: any other hop-by-hop one)."""
    lower = name.lower()
    found = _KINDS.get(lower, OTHER)
    return HOP if found == OTHER and hop_by_hop(lower) else found


def named_in_connection(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names listed in Connection header values, canonical (lower, ``_`` as ``-``)."""
    named = {t.strip().lower().replace(b"_", b"-") for v in values for t in v.split(b",")}
    named.discard(b"")
    return frozenset(named)
