"""The call types of issue 16: what each sends, byte for byte, and what it is judged against.

Each call type is one fixed HTTP/1.1 request (head and body) built here; wrk replays it on every
connection (``load.closed_loop_raw``), so a chunked body or a non-ASCII header value reaches the
proxy exactly as written. Which token a call carries (``managed``, ``passthrough``, ``sudo``) is
filled in by the harness, which logs in through each proxy first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from benchmarks.servers import (
    MIB,
    MIB_PATH,
    UPLOAD_JSON,
    UPLOAD_PATH,
    USER_JSON,
    USER_PATH,
    mib_json,
)

TokenKind = Literal["managed", "passthrough", "sudo"]
KIB = 1024
PER_BYTE_LIMIT = 1.5
"""A large body may cost at most this many times the 1 GiB download's CPU per byte."""


def json_body(size: int) -> bytes:
    """A Looker-shaped JSON body (a query definition) padded to exactly ``size`` bytes."""
    query = {"model": "bench", "view": "orders", "fields": ["orders.id", "orders.total"]}
    head = json.dumps(query, separators=(",", ":"))[:-1].encode() + b',"filler":"'
    tail = b'"}'
    return head + b"f" * (size - len(head) - len(tail)) + tail


@dataclass(frozen=True, slots=True)
class CallType:
    key: str
    label: str
    method: str
    path: str
    token: TokenKind = "managed"
    body: bytes = b""
    chunked: bool = False
    extra_headers: tuple[tuple[str, str], ...] = ()
    answer_bytes: int = len(USER_JSON)
    """Length of the answer's body (0 for HEAD): checked before the call type is measured."""
    per_byte: int = 0
    """Body bytes one call moves, when it is judged per byte (0: judged per call)."""
    target_us: float | None = None
    """At most this many µs of CPU per call (issue 16)."""
    min_x_nginx: float | None = None
    """At least this fraction of nginx's req/s for the same call (issue 16)."""
    per_byte_target: bool = False
    """At most ``PER_BYTE_LIMIT`` times the 1 GiB download's CPU per byte (issue 16)."""
    before_us: float | None = None
    """What issue 16 measured for the old design (front + relay to the aiohttp app)."""
    references: bool = True
    """Also measured through ``direct`` and ``nginx`` (not for token kinds only the proxy has)."""
    how: str = ""

    @property
    def same_as_get(self) -> bool:
        """The request the small JSON GET scenario sends (``get_c64``)."""
        plain = (self.method, self.path, self.token, self.body, self.extra_headers)
        return plain == ("GET", USER_PATH, "managed", b"", ())

    def request(self, host: str, token: str) -> bytes:
        """The request, head and body, as sent on the wire (``Authorization: token …``)."""
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {host}",
            f"Authorization: token {token}",
        ]
        lines += [f"{name}: {value}" for name, value in self.extra_headers]
        body = self.body
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Type: application/json")
            if self.chunked:
                lines.append("Transfer-Encoding: chunked")
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.body), self.body)
            else:
                lines.append(f"Content-Length: {len(self.body)}")
        return "\r\n".join([*lines, "", ""]).encode() + body


NON_ASCII = ("X-Client-Label", "Zürich \u2013 Büro \u2713")
"""A header value in UTF-8 (an en dash and a check mark among Latin-1 letters)."""

CALL_TYPES: tuple[CallType, ...] = (
    CallType(
        "plain_get",
        "plain GET",
        "GET",
        USER_PATH,
        target_us=40,
        min_x_nginx=0.4,
        before_us=45,
        how="`GET /api/4.0/user` with a managed team's proxy token",
    ),
    CallType(
        "passthrough_get",
        "passthrough GET",
        "GET",
        USER_PATH,
        token="passthrough",
        target_us=60,
        references=False,
        how="the same GET with a sealed `wp2.` token: a passthrough team's caller logged in"
        " through the proxy with Looker API credentials",
    ),
    CallType(
        "sudo_get",
        "sudo GET",
        "GET",
        USER_PATH,
        token="sudo",
        target_us=60,
        references=False,
        how="the same GET with the token a `POST /api/4.0/login/7` through the proxy answered"
        " (team with `allow_sudo: true`)",
    ),
    CallType(
        "head",
        "HEAD",
        "HEAD",
        USER_PATH,
        answer_bytes=0,
        target_us=60,
        how="`HEAD /api/4.0/user` (the upstream answers it with `Content-Length: 0`: wrk's parser"
        " would otherwise wait for a body)",
    ),
    CallType(
        "post_1k",
        "POST 1 KiB",
        "POST",
        UPLOAD_PATH,
        body=json_body(KIB),
        answer_bytes=len(UPLOAD_JSON),
        target_us=60,
        before_us=49,
        how="`POST /api/4.0/queries`, 1 KiB JSON body with `Content-Length`",
    ),
    CallType(
        "chunked_1k",
        "chunked upload 1 KiB",
        "POST",
        UPLOAD_PATH,
        body=json_body(KIB),
        chunked=True,
        answer_bytes=len(UPLOAD_JSON),
        target_us=60,
        how="the same 1 KiB body, `Transfer-Encoding: chunked` (one chunk and the last chunk)",
    ),
    CallType(
        "non_ascii",
        "non-ASCII header",
        "GET",
        USER_PATH,
        extra_headers=(NON_ASCII,),
        target_us=60,
        before_us=174,
        how=f"the plain GET plus `{NON_ASCII[0]}: {NON_ASCII[1]}` (UTF-8 bytes)",
    ),
    CallType(
        "post_100k",
        "POST 100 KiB",
        "POST",
        UPLOAD_PATH,
        body=json_body(100 * KIB),
        answer_bytes=len(UPLOAD_JSON),
        per_byte=100 * KIB,
        before_us=283,
        how="`POST /api/4.0/queries`, 100 KiB body with `Content-Length` (no target: the issue's"
        " figure for the old design, for comparison)",
    ),
    CallType(
        "post_1m",
        "POST 1 MiB",
        "POST",
        UPLOAD_PATH,
        body=json_body(MIB),
        answer_bytes=len(UPLOAD_JSON),
        per_byte=MIB,
        per_byte_target=True,
        how="`POST /api/4.0/queries`, 1 MiB body with `Content-Length`; the upstream reads it"
        " all before it answers",
    ),
    CallType(
        "get_1m",
        "GET 1 MiB answer",
        "GET",
        MIB_PATH,
        answer_bytes=len(mib_json()),
        per_byte=MIB,
        per_byte_target=True,
        how=f"`GET {MIB_PATH}`, a 1 MiB JSON answer (static file)",
    ),
)
BY_KEY = {c.key: c for c in CALL_TYPES}
SCENARIO_PREFIX = "call_"
"""Results of call type ``k`` are kept under the scenario ``call_<k>``."""


def scenario(call: CallType) -> str:
    return SCENARIO_PREFIX + call.key


def select(keys: str) -> tuple[CallType, ...]:
    """``all`` or a comma-separated list of keys, in the canonical order."""
    if keys.strip() == "all":
        return CALL_TYPES
    wanted = {k.strip() for k in keys.split(",") if k.strip()}
    unknown = wanted - BY_KEY.keys()
    if unknown:
        raise ValueError(f"unknown call types {sorted(unknown)}; known: {', '.join(BY_KEY)}")
    return tuple(c for c in CALL_TYPES if c.key in wanted)
