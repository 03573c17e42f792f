"""The caller's HTTP/1.1 connection (``http1.Connection``) as a state machine, without sockets or
sleeps: scripted bytes go in with the time given by hand, and the test asserts the bytes written
and the actions taken on a recording ``Wire`` and ``Exchanges``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import pytest

from workspace_proxy.config import Limits
from workspace_proxy.errors import BadRequest, NotFound, ProxyError, Unauthenticated
from workspace_proxy.http1 import (
    LINGER_S,
    QUEUE_BYTES,
    QUEUE_REQUESTS,
    Ans,
    Conn,
    Connection,
    Req,
    Request,
)

KEEP: Final = 30.0
LIMITS: Final = Limits(
    max_header_bytes=200, max_headers=20, body_idle_timeout_s=5.0, body_timeout_s=20.0
)


class Wire:
    """Records what the connection writes and does to its socket."""

    def __init__(self, *, can_half_close: bool = True) -> None:
        self.out = bytearray()
        self.log: list[str] = []
        self.can_half_close = can_half_close

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, data: list[bytes]) -> None:
        self.out += b"".join(data)

    def flush(self) -> None:
        self.log.append("flush")

    def half_close(self) -> bool:
        self.log.append("half_close")
        return self.can_half_close

    def close(self) -> None:
        self.log.append("close")

    def abort(self) -> None:
        self.log.append("abort")

    def pause_reading(self) -> None:
        self.log.append("pause")

    def resume_reading(self) -> None:
        self.log.append("resume")

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def actions(self) -> list[str]:
        """What was done since the last call."""
        done, self.log = self.log, []
        return done


@dataclass
class Exchanges:
    """Records what the connection tells whoever answers its requests."""

    events: list[tuple[str, str]] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    errors: list[ProxyError | None] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)

    def turn(self, request: Request) -> None:
        self.requests[request.rid] = request
        self.events.append(("turn", request.rid))

    def body(self, request: Request, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.events.append(("body", request.rid))

    def complete(self, request: Request) -> None:
        self.events.append(("complete", request.rid))

    def lost(self, request: Request, error: ProxyError | None) -> None:
        self.errors.append(error)
        self.events.append(("lost", request.rid))

    def answered(self, request: Request) -> None:
        self.events.append(("answered", request.rid))

    def refused(self, rid: str, status: int, size: int) -> None:
        self.refusals.append(status)
        self.events.append(("refused", str(status)))

    def take(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events


@dataclass
class Caller:
    """One connection under test, its wire and its exchanges."""

    conn: Connection
    wire: Wire
    ex: Exchanges

    def send(self, data: bytes, now: float = 0.0) -> None:
        self.conn.receive(data, now)

    def req(self, rid: str) -> Request:
        return self.ex.requests[rid]

    def state(self) -> Conn:
        """The connection's state now (a call: type checkers keep no narrowing across it)."""
        return self.conn.state

    def answer(
        self, rid: str, body: bytes = b"ok", *, status: int = 200, length: int | None = -1
    ) -> None:
        """Answer request ``rid`` whole (length -1: its body's length; None: unknown)."""
        req = self.req(rid)
        size = len(body) if length == -1 else length
        self.conn.answer_head(req, status, b"", [b"Content-Type: text/plain\r\n"], size)
        self.conn.answer_body(req, body)
        self.conn.answer_end(req)


def connect(limits: Limits = LIMITS, *, now: float = 0.0, can_half_close: bool = True) -> Caller:
    wire, ex = Wire(can_half_close=can_half_close), Exchanges()
    return Caller(Connection(wire, ex, limits, now, keepalive_s=KEEP), wire, ex)


def request(
    rid: str,
    method: str = "GET",
    target: str = "/api/4.0/user",
    *,
    version: str = "1.1",
    extra: bytes = b"",
    body: bytes = b"",
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """A request with ``X-Request-Id: rid`` (its id everywhere) and Host (HTTP/1.1); its body
    framed by Content-Length (POST, PUT, PATCH and any body) or chunked."""
    host = b"Host: proxy.test\r\n" if version == "1.1" else b""
    if length is None and (body or method in ("POST", "PUT", "PATCH")):
        length = len(body)
    framing = b"" if length is None else b"Content-Length: %d\r\n" % length
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    line = f"{method} {target} HTTP/{version}\r\n".encode()
    return line + host + f"X-Request-Id: {rid}\r\n".encode() + framing + extra + b"\r\n" + body


def heads(out: bytes) -> list[str]:
    """The status lines and headers of every answer in ``out`` (ids of refusals masked)."""
    text = re.sub(r"X-Request-Id: [0-9a-f]{32}", "X-Request-Id: *", out.decode("latin-1"))
    return [h.split("\r\n\r\n", 1)[0] for h in re.split(r"(?=HTTP/1\.1 \d{3} )", text) if h]


def ok(rid: str, body: bytes = b"ok", *, extra: str = "") -> bytes:
    """The bytes of a whole 200 answer to ``rid`` with a Content-Length."""
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Request-Id: {rid}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


# --- pipelining -----------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_each_after_the_previous() -> None:
    """Three requests in one read: only the first has its turn; each next one gets it once the
    previous answer is out, and the answers leave in request order."""
    c = connect()
    c.send(request("r1") + request("r2") + request("r3"))
    assert c.ex.take() == [("turn", "r1"), ("complete", "r1")]
    c.answer("r1", b"one")
    assert c.ex.take() == [("answered", "r1"), ("turn", "r2")]
    c.answer("r2", b"two")
    c.answer("r3", b"three")
    assert c.ex.take() == [("answered", "r2"), ("turn", "r3"), ("answered", "r3")]
    assert c.wire.take() == ok("r1", b"one") + ok("r2", b"two") + ok("r3", b"three")
    assert c.wire.actions() == []
    assert c.state() is Conn.OPEN


def test_a_pipelined_requests_body_waits_for_its_turn() -> None:
    """The body of a request behind the current one is kept with it (not handed to the current
    exchange); at its turn it is complete and holds its body."""
    c = connect()
    c.send(request("r1") + request("r2", "POST", body=b"abc") + request("r3"))
    c.answer("r1")
    r2 = c.req("r2")
    assert (r2.complete, r2.body, r2.head.method, r2.head.length) == (True, [b"abc"], b"POST", 3)
    assert ("body", "r2") not in c.ex.events
    assert c.ex.chunks == []


def test_a_request_split_across_reads_is_parsed_whole() -> None:
    """A head and a body arriving byte by byte give one turn, body chunks and completion."""
    c = connect()
    for i, byte in enumerate(request("r1", "POST", body=b"hello")):
        c.send(bytes([byte]), now=i / 1000)
    assert c.ex.take()[0] == ("turn", "r1")
    assert b"".join(c.ex.chunks) == b"hello"
    assert c.req("r1").complete


# --- keep-alive and close -------------------------------------------------------------------------


def test_http11_keeps_the_connection_open() -> None:
    """An HTTP/1.1 answer without Connection: close; the next request is read."""
    c = connect()
    c.send(request("r1"))
    c.answer("r1")
    assert b"Connection:" not in c.wire.take()
    assert c.wire.actions() == []
    c.send(request("r2"))
    assert c.ex.take()[-2:] == [("turn", "r2"), ("complete", "r2")]


@pytest.mark.parametrize(
    "data",
    [
        request("r1", extra=b"Connection: close\r\n"),
        request("r1", extra=b"connection: Keep-Alive, CLOSE\r\n"),
        request("r1", version="1.0"),
        request("r1", version="1.0", extra=b"Connection: keep-alive\r\n"),
    ],
    ids=["close", "close-in-a-list", "http10", "http10-keep-alive"],
)
def test_close_and_http10_close_after_the_answer(data: bytes) -> None:
    """Connection: close, and any HTTP/1.0 request: the answer says Connection: close, the
    connection closes after it, and what was pipelined behind is never taken."""
    c = connect()
    c.send(data + request("r2"))
    c.answer("r1")
    assert c.wire.take() == ok("r1", extra="Connection: close\r\n")
    assert "close" in c.wire.actions()
    assert ("turn", "r2") not in c.ex.events
    assert c.state() is Conn.CLOSED


def test_an_http10_request_needs_no_host() -> None:
    """HTTP/1.0 without Host is a request (HTTP/1.1 without one is a 400)."""
    c = connect()
    c.send(request("r1", version="1.0"))
    assert c.ex.take()[0] == ("turn", "r1")
    assert c.req("r1").head.host is None


# --- framing of answers ---------------------------------------------------------------------------


def test_an_answer_of_unknown_length_is_chunked() -> None:
    """HTTP/1.1, no length: chunks, and the last chunk at the end (an empty write is no chunk:
    it would end the answer early); the connection stays open."""
    c = connect()
    c.send(request("r1"))
    req = c.req("r1")
    c.conn.answer_head(req, 200, b"OK", [], None)
    c.conn.answer_body(req, b"hello")
    c.conn.answer_body(req, b"")
    c.conn.answer_body(req, b"world!")
    c.conn.answer_end(req)
    assert c.wire.take() == (
        b"HTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n"
    )
    assert c.state() is Conn.OPEN
    assert req.bytes_out == 11


def test_an_answer_of_unknown_length_to_http10_ends_with_the_connection() -> None:
    """HTTP/1.0 has no chunks: the body is sent as is and the close ends it."""
    c = connect()
    c.send(request("r1", version="1.0"))
    req = c.req("r1")
    c.conn.answer_head(req, 200, b"OK", [], None)
    c.conn.answer_body(req, b"hello")
    c.conn.answer_end(req)
    assert c.wire.take() == b"HTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nConnection: close\r\n\r\nhello"
    assert c.wire.actions() == ["close"]


@pytest.mark.parametrize(
    ("method", "status", "length", "framing"),
    [
        ("HEAD", 200, None, ""),
        ("HEAD", 200, 1234, "Content-Length: 1234\r\n"),
        ("GET", 204, None, ""),
        ("GET", 304, None, ""),
        ("DELETE", 204, None, ""),
    ],
)
def test_bodyless_answers_have_no_body_framing(
    method: str, status: int, length: int | None, framing: str
) -> None:
    """HEAD, 204 and 304 carry no body: no chunks (a HEAD may state its GET's length), and the
    next request is answered at once on the same connection."""
    c = connect()
    c.send(request("r1", method) + request("r2"))
    req = c.req("r1")
    c.conn.answer_head(req, status, b"", [], length)
    c.conn.answer_end(req)
    head = c.wire.take().decode()
    assert head.endswith(f"X-Request-Id: r1\r\n{framing}\r\n")
    assert "Transfer-Encoding" not in head
    assert "Connection" not in head
    assert c.ex.take()[-2:] == [("answered", "r1"), ("turn", "r2")]


@pytest.mark.parametrize("error", [NotFound(), Unauthenticated(), BadRequest("no", status=413)])
def test_an_error_answer_to_head_has_no_body(error: ProxyError) -> None:
    """The proxy's own refusal of a HEAD says its length but sends no body: on a kept-alive
    connection those bytes would be read as the start of the next answer. (BUG: today the
    JSON body is written.)"""
    c = connect()
    c.send(request("r1", "HEAD") + request("r2"))
    c.conn.refuse_request(c.req("r1"), error)
    out = c.wire.take()
    assert out.startswith(f"HTTP/1.1 {error.status} ".encode())
    assert out.endswith(b"\r\n\r\n"), "no body after the head"
    assert c.ex.take()[-2:] == [("answered", "r1"), ("turn", "r2")]


# --- 100 Continue ---------------------------------------------------------------------------------

EXPECT: Final = b"Expect: 100-continue\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_100_continue_only_when_asked_after_the_decision_and_once() -> None:
    """Nothing is sent on arrival (the decision comes first); asked, the interim answer goes
    out once."""
    c = connect()
    c.send(request("r1", "POST", extra=EXPECT, length=5))
    assert c.wire.take() == b""
    req = c.req("r1")
    c.conn.interim_continue(req)
    c.conn.interim_continue(req)
    assert c.wire.take() == CONTINUE
    c.send(b"hello")
    assert c.req("r1").complete


def test_no_100_continue_without_expect() -> None:
    """A request that did not ask gets no interim answer."""
    c = connect()
    c.send(request("r1", "POST", length=5))
    c.conn.interim_continue(c.req("r1"))
    assert c.wire.take() == b""


def test_no_100_continue_once_the_body_is_complete_or_the_answer_started() -> None:
    """A body already here needs no Continue; neither does a request whose answer began."""
    c = connect()
    c.send(request("r1", "POST", extra=EXPECT, body=b"hello"))
    c.conn.interim_continue(c.req("r1"))
    assert c.wire.take() == b""
    c.answer("r1")
    c.wire.take()
    c.send(request("r2", "POST", extra=EXPECT, length=5))
    r2 = c.req("r2")
    c.conn.answer_head(r2, 413, b"", [], 0)
    c.conn.interim_continue(r2)
    assert CONTINUE not in c.wire.take()


def test_100_continue_only_for_the_current_request() -> None:
    """A pipelined request that expects Continue gets it at its own turn, never while an
    earlier request is being answered (its interim would land in that answer)."""
    c = connect()
    c.send(request("r1") + request("r2", "POST", extra=EXPECT, length=5))
    r2 = c.conn.queue[1]
    c.conn.interim_continue(r2)
    assert c.wire.take() == b""
    c.answer("r1")
    assert c.ex.take()[-1] == ("turn", "r2")
    c.conn.interim_continue(c.req("r2"))
    assert c.wire.take() == ok("r1") + CONTINUE


# --- early answers --------------------------------------------------------------------------------


def test_an_early_answer_half_closes_and_lingers_then_closes() -> None:
    """Answered before its body is all in: Connection: close, our side of the socket shut after
    the answer, what still comes discarded for LINGER_S (a reset would destroy the answer), then
    closed."""
    c = connect()
    c.send(request("r1", "POST", length=100) + b"x" * 10, now=1.0)
    req = c.req("r1")
    c.conn.refuse_request(req, BadRequest("too large", status=413))
    head = heads(c.wire.take())[0]
    assert head.startswith("HTTP/1.1 413 ")
    assert head.endswith("Connection: close")
    assert c.wire.actions() == ["half_close", "resume"]
    assert c.state() is Conn.LINGERING
    seen = len(c.ex.events)
    c.send(b"y" * 50 + request("r2"), now=1.5)
    assert len(c.ex.events) == seen, "nothing more is parsed while lingering"
    c.conn.tick(1.0 + LINGER_S - 0.01)
    assert c.wire.actions() == []
    c.conn.tick(1.0 + LINGER_S)
    assert c.wire.actions() == ["close"]
    assert c.state() is Conn.CLOSED


def test_an_early_success_also_lingers() -> None:
    """Looker may answer before the whole upload went out: the same close and linger."""
    c = connect()
    c.send(request("r1", "PUT", length=100) + b"x" * 10)
    c.answer("r1")
    assert c.wire.take() == ok("r1", extra="Connection: close\r\n")
    assert c.wire.actions() == ["half_close", "resume"]


def test_an_early_answer_closes_at_once_when_half_close_is_impossible() -> None:
    """Without a half-close (TLS), the connection closes right after the answer."""
    c = connect(can_half_close=False)
    c.send(request("r1", "POST", length=100))
    c.conn.refuse_request(c.req("r1"), BadRequest("too large", status=413))
    assert c.wire.actions() == ["half_close", "close"]
    assert c.state() is Conn.CLOSED


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 20 + b"\r\n", 431),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "garbage",
        "414-target",
        "431-line",
        "431-count",
        "505",
        "no-version",
        "no-host",
        "two-hosts",
        "http10-chunked",
        "two-lengths",
        "length-and-chunked",
    ],
)
def test_refusals_come_after_the_complete_requests_before_them(bad: bytes, status: int) -> None:
    """Bytes that do not make a request are answered (Looker-shaped, Connection: close) only
    after every complete request before them, then the connection closes; nothing behind them
    is read. (BUG: today the first answer after the refusal says Connection: close and the
    connection closes: the second request and the refusal are never answered.)"""
    c = connect()
    c.send(request("r1") + request("r2") + bad + request("r3"))
    assert c.wire.take() == b""
    assert c.wire.actions() == ["pause"]
    c.answer("r1")
    c.answer("r2")
    out = c.wire.take()
    assert out.startswith(ok("r1") + ok("r2"))
    refusal = heads(out)[2]
    assert refusal.startswith(f"HTTP/1.1 {status} ")
    assert "Content-Type: application/json; charset=utf-8" in refusal
    assert refusal.endswith("Connection: close")
    assert out.endswith(b'"documentation_url": "https://cloud.google.com/looker/docs/"}')
    assert c.wire.actions() == ["close"]
    assert c.ex.refusals == [status]
    assert [e for e in c.ex.events if e[0] == "turn"] == [("turn", "r1"), ("turn", "r2")]


def test_a_refusal_with_nothing_before_it_is_answered_at_once() -> None:
    """Garbage first: answered and closed in the same read."""
    c = connect()
    c.send(b"\x16\x03\x01\x00\xa5\x01\x00\x00")  # a TLS ClientHello on the plain port
    assert heads(c.wire.take())[0].startswith("HTTP/1.1 400 ")
    assert c.wire.actions() == ["pause", "close"]


def test_bad_bytes_inside_the_current_body_go_to_its_exchange() -> None:
    """Malformed chunks of the request being answered: its exchange is told (with the 400 it
    answers) and the connection writes nothing of its own."""
    c = connect()
    c.send(request("r1", "POST", chunked=True))
    c.send(b"5\r\nhello\r\nzz\r\n")
    assert c.ex.take()[-1] == ("lost", "r1")
    error = c.ex.errors[-1]
    assert error is not None
    assert error.status == 400
    assert c.wire.take() == b""
    c.conn.refuse_request(c.req("r1"), error)
    assert heads(c.wire.take())[0].endswith("Connection: close")


@pytest.mark.parametrize("where", ["value", "name"])
def test_a_header_line_that_never_ends_is_refused(where: str) -> None:
    """A header line that never ends is refused (431) once the head is longer than the limits
    allow any head to be, not buffered until the head timeout: httptools keeps the whole of an
    unfinished header line in memory. BUG: today nothing bounds it (50 MB fed to one
    connection: still OPEN, RSS up by about 100 MB)."""
    c = connect()
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"X-Endless: " if where == "value" else b""))
    for _ in range(100):
        c.send(b"a" * 1000)  # 100 kB of one header line; max_header_bytes is 200
    assert c.ex.refusals == [431]
    assert c.state() is Conn.CLOSED


def test_chunked_trailers_are_read_and_dropped() -> None:
    """Trailer fields after the last chunk never become headers of the request."""
    c = connect()
    c.send(
        request("r1", "POST", chunked=True)
        + b"5\r\nhello\r\n0\r\nX-Trailer: secret\r\nAuthorization: token t\r\n\r\n"
    )
    req = c.req("r1")
    assert c.ex.chunks == [b"hello"]
    assert req.complete
    names = [n.lower() for n, _ in req.head.headers]
    assert b"x-trailer" not in names
    assert b"authorization" not in names
    assert req.head.auths == ()
    assert req.head.chunked


@pytest.mark.parametrize(
    "extra",
    [b"Connection: upgrade\r\nUpgrade: websocket\r\n", b""],
    ids=["upgrade", "connect"],
)
def test_an_upgrade_or_connect_is_answered_plainly_and_nothing_more_is_read(extra: bytes) -> None:
    """Upgrade and CONNECT are never switched: answered as a request, then closed (what follows
    may be another protocol)."""
    c = connect()
    data = (
        request("r1", extra=extra)
        if extra
        else b"CONNECT looker:443 HTTP/1.1\r\nHost: looker\r\nX-Request-Id: r1\r\n\r\n"
    )
    c.send(data + request("r2"))
    assert c.wire.actions() == ["pause"]
    c.answer("r1")
    assert heads(c.wire.take())[0].endswith("Connection: close")
    assert c.wire.actions() == ["close"]
    assert ("turn", "r2") not in c.ex.events


# --- flow control ---------------------------------------------------------------------------------


def test_the_pipelining_bound_pauses_and_resumes_reading() -> None:
    """More than QUEUE_REQUESTS requests ahead of the one being answered: reading pauses; the
    answer that makes room resumes it."""
    c = connect()
    c.send(b"".join(request(f"r{i}") for i in range(QUEUE_REQUESTS)))
    assert c.wire.actions() == []
    c.send(request(f"r{QUEUE_REQUESTS}") + request(f"r{QUEUE_REQUESTS + 1}"))
    assert c.wire.actions() == ["pause"]
    c.answer("r0")
    assert c.wire.actions() == ["resume"]
    for i in range(1, QUEUE_REQUESTS + 2):
        c.answer(f"r{i}")
    assert c.wire.actions() == []
    assert f"X-Request-Id: r{QUEUE_REQUESTS + 1}\r\n" in heads(c.wire.take())[-1]


def test_pipelined_bytes_over_the_bound_pause_reading() -> None:
    """A pipelined body larger than QUEUE_BYTES pauses reading until the current answer is out."""
    c = connect()
    size = QUEUE_BYTES + 1
    c.send(request("r1") + request("r2", "POST", length=size) + b"x" * size)
    assert c.wire.actions() == ["pause"]
    c.answer("r1")
    assert c.wire.actions() == ["resume"]


def test_hold_pauses_reading_until_unhold() -> None:
    """The exchange may hold reading (Looker takes the body slower than the caller sends it);
    the pipelining bound and the hold do not resume each other."""
    c = connect()
    c.send(request("r1", "POST", length=10))
    c.conn.hold()
    c.conn.hold()
    c.conn.unhold()
    assert c.wire.actions() == ["pause"]
    c.conn.unhold()
    assert c.wire.actions() == ["resume"]


# --- timeouts -------------------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_keepalive() -> None:
    """No request for keepalive_s since the last answer: closed (before that: left alone)."""
    c = connect(now=0.0)
    c.send(request("r1"), now=10.0)
    c.answer("r1")
    c.conn.tick(10.0 + KEEP - 0.5)
    assert c.wire.actions() == []
    c.conn.tick(10.0 + KEEP)
    assert c.wire.actions() == ["close"]
    assert c.state() is Conn.CLOSED


def test_a_head_that_never_finishes_is_cut() -> None:
    """A head trickling in byte by byte does not keep the connection: keepalive_s after the
    connection (or its last answer) it is closed, however recently a byte came."""
    c = connect(now=0.0)
    for t, byte in enumerate(b"GET /api/4.0/user HTTP/1.1\r\nHost: p\r\nX-Slow: "):
        c.send(bytes([byte]), now=t * KEEP / 50)
    c.conn.tick(KEEP - 0.01)
    assert c.wire.actions() == []
    c.conn.tick(KEEP)
    assert c.wire.actions() == ["close"]
    assert c.ex.events == []


def test_a_stalled_body_is_a_408_through_its_exchange() -> None:
    """No body byte for body_idle_timeout_s: the exchange is told, with a 408 that closes the
    connection; answered early, the connection half-closes and lingers."""
    c = connect()
    c.send(request("r1", "POST", length=100) + b"x" * 10, now=1.0)
    c.send(b"x" * 10, now=4.0)
    c.conn.tick(4.0 + LIMITS.body_idle_timeout_s - 0.1)
    assert c.ex.errors == []
    c.conn.tick(4.0 + LIMITS.body_idle_timeout_s)
    assert c.ex.take()[-1] == ("lost", "r1")
    error = c.ex.errors[-1]
    assert error is not None
    assert (error.status, getattr(error, "close", False)) == (408, True)
    c.conn.refuse_request(c.req("r1"), error)
    assert heads(c.wire.take())[0].startswith("HTTP/1.1 408 ")
    assert c.wire.actions() == ["half_close", "resume"]


def test_a_trickling_body_is_a_408_at_its_overall_deadline() -> None:
    """A byte every few seconds keeps the idle timer happy, not the overall one: body_timeout_s
    after the head the exchange gets its 408."""
    c = connect()
    c.send(request("r1", "POST", length=1000), now=0.0)
    t = 0.0
    while t + 4.0 < LIMITS.body_timeout_s:
        t += 4.0
        c.send(b"x", now=t)
        c.conn.tick(t)
    assert c.ex.errors == []
    c.conn.tick(LIMITS.body_timeout_s)
    error = c.ex.errors[-1]
    assert error is not None
    assert error.status == 408


def test_no_body_timeout_once_answering_or_complete() -> None:
    """The body timers stop when the answer starts (an early answer) or the body is in."""
    c = connect()
    c.send(request("r1", "POST", body=b"done"), now=0.0)
    c.conn.tick(LIMITS.body_timeout_s + 1)
    c.answer("r1")
    c.send(request("r2", "POST", length=100), now=30.0)
    r2 = c.req("r2")
    c.conn.answer_head(r2, 200, b"", [], None)
    c.conn.tick(30.0 + LIMITS.body_timeout_s + 1)
    assert c.ex.errors == []
    assert r2.ans is Ans.STREAMING
    assert r2.state is Req.BODY


def test_a_caller_that_stops_reading_is_aborted() -> None:
    """Its answer cannot be written for keepalive_s: the connection is aborted and the exchange
    told the caller is gone (freeing its slot and Looker connection)."""
    c = connect()
    c.send(request("r1"))
    req = c.req("r1")
    c.conn.answer_head(req, 200, b"", [], None)
    c.conn.writing_paused(10.0)
    c.conn.tick(10.0 + KEEP - 0.1)
    assert c.wire.actions() == []
    c.conn.writing_resumed()
    c.conn.writing_paused(20.0)
    c.conn.tick(20.0 + KEEP)
    assert c.wire.actions() == ["abort"]
    assert c.ex.take()[-1] == ("lost", "r1")
    assert c.ex.errors == [None]
    c.conn.answer_body(req, b"more")
    assert c.wire.take().endswith(b"\r\n\r\n"), "nothing is written after the abort"


# --- the end of a connection ----------------------------------------------------------------------


def test_draining_closes_an_idle_connection_at_once() -> None:
    """Shutdown: a connection with nothing in flight closes right away."""
    c = connect()
    assert c.conn.draining() is True
    assert c.wire.actions() == ["close"]


def test_draining_finishes_the_current_answer_then_closes() -> None:
    """Shutdown with a request in flight: it is answered (Connection: close), nothing more is
    read, then the connection closes."""
    c = connect()
    c.send(request("r1"))
    assert c.conn.draining() is False
    c.send(request("r2"))
    c.answer("r1")
    assert c.wire.take() == ok("r1", extra="Connection: close\r\n")
    assert c.wire.actions() == ["close"]
    assert ("turn", "r2") not in c.ex.events


def test_a_caller_gone_mid_answer_is_told_to_its_exchange() -> None:
    """The socket is gone: the exchange of the current request hears it once; nothing more is
    written."""
    c = connect()
    c.send(request("r1") + request("r2"))
    req = c.req("r1")
    c.conn.answer_head(req, 200, b"", [], 10)
    c.wire.take()
    c.conn.lost()
    assert c.ex.take()[-1] == ("lost", "r1")
    c.conn.answer_body(req, b"0123456789")
    c.conn.answer_end(req)
    assert c.wire.take() == b""
    assert ("turn", "r2") not in c.ex.events


def test_a_cut_answer_aborts_the_connection() -> None:
    """An answer whose body cannot be finished is cut: the connection is aborted (a truncated
    body never passes for a whole one)."""
    c = connect()
    c.send(request("r1") + request("r2"))
    req = c.req("r1")
    c.conn.answer_head(req, 200, b"", [], 100)
    c.conn.answer_body(req, b"partial")
    c.conn.cut(req)
    assert c.wire.actions() == ["abort"]
    assert c.state() is Conn.CLOSED
    assert ("turn", "r2") not in c.ex.events
