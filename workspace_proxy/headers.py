"""Header rules for both directions, on raw header names (bytes): the one representation.

Towards Looker (``dropped_upstream``): the caller's credentials (any header whose name, ignoring
case and punctuation, contains ``authorization``: ``Authorization``, ``authorization_``,
``X-Authorization``, ``Proxy-Authorization``), hop-by-hop headers, those named in
``Connection``, ``Host``, ``Content-Length``, ``Cookie``, ``Expect``, headers some servers obey to
re-route or re-method a request (``X-Original-URL``, ``X-HTTP-Method-Override``, ...), claims
about the caller's address or route (``X-Real-IP``, ``Via``, ``Max-Forwards``, ...) and every
incoming ``Forwarded`` or ``X-Forwarded-*``. The decision (``decide``) then adds Looker's Host,
the framing, the pinned session and its own ``X-Forwarded-For``/``-Proto``/``-Host``.

The caller's W3C trace context (``traceparent``, ``tracestate``; ``trace_context``) follows a
rule of its own. With tracing off the proxy takes no part in traces and passes both on
unchanged, as W3C Trace Context asks of a hop that does not trace. With tracing on, both are
dropped (any case, any number of them) and the proxy sends its own ``traceparent`` (the span of
its call to Looker, in the caller's trace when the caller sent a valid one) and the caller's
``tracestate`` carried in it: Looker never gets two trace contexts, nor the caller's unchecked.

Towards the caller (``passes_downstream``): hop-by-hop headers and those Looker's ``Connection``
names are dropped; everything else from Looker is passed on. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_LETTERS: Final = re.compile(rb"[^a-z]")
_CALLER_ONLY: Final = frozenset(
    {
        b"authorization",
        b"host",
        b"content-length",
        b"expect",
        b"forwarded",
        b"cookie",
        # Headers some servers obey to re-route or re-method a request behind the route policy.
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-method",
        b"x-override-url",
        b"x-original-host",
        b"x-host",
        # Claims about the caller's address or the path the request took: only the proxy's own
        # X-Forwarded-For says who called (``X-Forwarded-*`` and ``Forwarded`` are dropped too).
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-proxyuser-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-forwarded",
        b"via",
        b"max-forwards",
    }
)
ADDED: Final = 6
"""Headers the proxy may add to a request (Host when the caller sent none, Authorization,
Content-Length, X-Forwarded-For/-Proto/-Host): counted in ``limits.max_headers``. With tracing
on it also sends ``traceparent`` (and ``tracestate`` only in place of the caller's): the bound
still holds, since the proxy adds an Authorization only in place of the caller's own, and a
call without one gets none."""
TRACE_CONTEXT: Final = frozenset({b"traceparent", b"tracestate"})
"""The W3C trace context headers (see the module docstring)."""


@functools.lru_cache(maxsize=4096)
def canonical(name: bytes) -> bytes:
    """Lower case with ``_`` read as ``-`` (some servers treat them alike), trimmed."""
    return name.strip().lower().replace(b"_", b"-")


@functools.lru_cache(maxsize=4096)
def _always_dropped(name: bytes) -> bool:
    c = canonical(name)
    return (
        c in HOP_BY_HOP
        or c in _CALLER_ONLY
        or c.startswith(b"x-forwarded-")
        or b"authorization" in _LETTERS.sub(b"", c)  # Authorization_, X-Authorization, ...
    )


@functools.lru_cache(maxsize=1024)
def named_beyond_hop_by_hop(values: tuple[bytes, ...]) -> frozenset[bytes]:
    """The names Connection headers list that are not hop-by-hop anyway (``keep-alive`` and
    ``close`` are the usual ones): empty when nothing more needs dropping."""
    return frozenset(n for n in named_in_connection(values) if n not in HOP_BY_HOP | {b"close"})


def named_in_connection(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names listed in Connection header values, canonical."""
    named = {canonical(t) for v in values for t in v.split(b",")}
    named.discard(b"")
    return frozenset(named)


def dropped_upstream(name: bytes, named: frozenset[bytes]) -> bool:
    """Whether a caller's header stays out of the request Looker gets (``named``: the names the
    request's Connection headers list, which are hop-by-hop too)."""
    return _always_dropped(name) or (bool(named) and canonical(name) in named)


@functools.lru_cache(maxsize=1024)
def trace_context(name: bytes) -> bool:
    """Whether a header is W3C trace context (dropped towards Looker while the proxy traces)."""
    return name.strip().lower() in TRACE_CONTEXT


@functools.lru_cache(maxsize=4096)
def hop_by_hop(name: bytes) -> bool:
    """Whether a header name is hop-by-hop (never passed on in either direction)."""
    return canonical(name) in HOP_BY_HOP


def passes_downstream(name: bytes, named: frozenset[bytes]) -> bool:
    """Whether a header of Looker's answer reaches the caller (``named``: the names Looker's
    Connection headers list)."""
    return not hop_by_hop(name) and not (named and canonical(name) in named)


# What the transport needs to know about a header, by its raw name (cached: names repeat).
OTHER, HOST, LENGTH, TE, EXPECT, AUTH, RID, CONNECTION, HOP, TRACE = range(10)
_KINDS: Final = {
    b"host": HOST,
    b"content-length": LENGTH,
    b"transfer-encoding": TE,
    b"expect": EXPECT,
    b"authorization": AUTH,
    b"x-request-id": RID,
    b"connection": CONNECTION,
    b"traceparent": TRACE,
    b"tracestate": TRACE,
}


@functools.lru_cache(maxsize=4096)
def kind(name: bytes) -> int:
    """Which of the kinds above a raw header name is (``HOP``: any other hop-by-hop one)."""
    lower = name.lower()
    found = _KINDS.get(lower, OTHER)
    return HOP if found == OTHER and hop_by_hop(lower) else found
