"""A caller's bytes become requests: llhttp (through httptools) parses them; this applies what
llhttp does not: versions other than 1.0 and 1.1 (505; a request line without a version: 400 as
soon as the line ends), HTTP/1.1 without exactly one Host, HTTP/1.0 with Transfer-Encoding,
targets over ``max_header_bytes`` (414), header lines over it or more than ``max_headers`` minus
the proxy's own (431). Chunked trailers are read and dropped: never headers. No I/O: what it
parses goes to its ``Sink`` (``http1.Connection``)."""

from __future__ import annotations

import enum
import time
from typing import Final, Protocol

import httptools
import structlog

from workspace_proxy import headers
from workspace_proxy.config import Limits
from workspace_proxy.decision import Head
from workspace_proxy.errors import BadRequest, ProxyError
from workspace_proxy.outcome import request_id

log = structlog.get_logger("workspace_proxy.reader")


class Req(enum.Enum):
    HEAD = "head"
    BODY = "body"
    COMPLETE = "complete"


class Ans(enum.Enum):
    WAITING = "waiting"
    STREAMING = "streaming"
    DONE = "done"


# The members as module names too: on Python 3.11 every ``Class.MEMBER`` is a fresh
# attribute lookup (3.12 caches it), and the transport checks states many times per call.
REQ_HEAD: Final = Req.HEAD
REQ_BODY: Final = Req.BODY
REQ_COMPLETE: Final = Req.COMPLETE
ANS_WAITING: Final = Ans.WAITING
ANS_STREAMING: Final = Ans.STREAMING
ANS_DONE: Final = Ans.DONE


class Sink(Protocol):
    def headed(self, req: Request) -> None: ...
    def body(self, req: Request, chunk: bytes) -> None: ...
    def completed(self, req: Request) -> None: ...


class Request:
    """One request of the connection, from its first byte to its answer's last."""

    __slots__ = (
        "ans",
        "body",
        "body_bytes",
        "body_seen",
        "bodyless",
        "bytes_out",
        "chunked_out",
        "expect",
        "head",
        "head_bytes",
        "head_fed",
        "head_seen",
        "hosts",
        "keep_alive",
        "last_url",
        "rid",
        "started",
        "state",
        "status",
    )

    def __init__(self) -> None:
        self.state = REQ_HEAD
        self.ans = ANS_WAITING
        self.head = Head(b"", b"", "1.1", [])
        self.rid = ""
        self.hosts = 0
        self.expect = False
        self.keep_alive = True
        self.head_bytes = 0
        self.head_fed = 0
        """Bytes fed to the parser while the head was unfinished (an upper bound)."""
        self.last_url = b""
        self.body: list[bytes] = []
        """Body bytes that arrived before this request's turn (or before anyone took them)."""
        self.body_bytes = 0
        self.started = 0.0
        """perf_counter when the head was complete (durations in the access log)."""
        self.head_seen = 0.0
        self.body_seen = 0.0
        self.chunked_out = False
        self.bodyless = False
        """Its answer has no body (HEAD, 204, 304), whatever is written for it."""
        self.status = 0
        self.bytes_out = 0

    @property
    def complete(self) -> bool:
        return self.state is REQ_COMPLETE


class _Ignored:
    """Callbacks of the parser a closed connection is left with."""


_NO_PARSER: Final = httptools.HttpRequestParser(_Ignored())


class Reader:
    """The requests of one caller connection, parsed."""

    def __init__(self, sink: Sink, limits: Limits) -> None:
        self.sink = sink
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        """The request whose bytes are being parsed."""
        self.max_field = limits.max_header_bytes
        self.max_headers = limits.max_headers - headers.ADDED
        self.max_head = self.max_field * (self.max_headers + 2)
        """The longest a head may be: a request line and every header line at their limits."""
        self._began_here = False
        self._now = 0.0

    def feed(self, data: bytes, now: float) -> bool:
        """Parse ``data``; True when the caller asked to switch protocols (nothing more is
        read). Bytes that cannot make a request raise the ProxyError that answers them."""
        self._began_here = False
        self._now = now
        try:
            self.parser.feed_data(data)
            if self.parsing is not None:  # a head (or a body) is unfinished
                self._refuse_unversioned(data)
                self._bound_head(len(data))
        except httptools.HttpParserUpgrade:
            return True
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
                raise cause from None
            log.error("front_failed", exc_info=cause)  # a bug of ours
            raise ProxyError() from None  # 500, "Internal proxy error."
        except httptools.HttpParserError as exc:
            raise BadRequest(f"Malformed HTTP request: {_reason(exc)}.", close=True) from None
        return False

    def _bound_head(self, fed: int) -> None:
        """A head still unfinished after more bytes than any head may have is refused: httptools
        keeps an unfinished header line whole in memory, however long it grows."""
        req = self.parsing
        if req is not None and req.state is REQ_HEAD:
            req.head_fed += fed
            if req.head_fed > self.max_head:
                raise BadRequest("Request header fields too large.", status=431, close=True)

    def close(self) -> None:
        self.parser = _NO_PARSER  # it refers back to us: let refcounting free both
        self.parsing = None

    def _refuse_unversioned(self, data: bytes) -> None:
        """A request line without a supported version is answered as soon as the line ends,
        not when headers that never come time out."""
        req = self.parsing
        if req is None or req.head.headers or not req.head.target:
            return
        version = self.parser.get_http_version()
        if version in ("1.0", "1.1"):
            return
        tail = data[data.rfind(req.last_url) + len(req.last_url) :] if self._began_here else data
        if version != "0.0" or b"\n" in tail:
            raise _unsupported(version)

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Request()
        self._began_here = True

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.head.target += url
        req.last_url = url
        if len(req.head.target) > self.max_field:
            raise BadRequest("Request line too long.", status=414, close=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.state is not REQ_HEAD:
            return  # a chunked trailer: never a header, never forwarded
        if len(name) + len(value) + 2 > self.max_field:
            raise BadRequest("Request header field too long.", status=431, close=True)
        head = req.head
        head.headers.append((name, value))
        req.head_bytes += len(name) + len(value) + 4
        if len(head.headers) > self.max_headers:
            raise BadRequest(
                f"Too many request header fields: at most {self.max_headers} (Looker gets "
                f"limits.max_headers, the proxy's own {headers.ADDED} included).",
                status=431,
                close=True,
            )
        kind = headers.kind(name)
        if kind:
            if kind == headers.HOST:
                req.hosts += 1
                head.host = value
            elif kind == headers.LENGTH:
                head.length = int(value)  # llhttp has checked it
            elif kind == headers.TE:
                head.chunked = True
            elif kind == headers.EXPECT:
                req.expect = value.lower() == b"100-continue"
            elif kind == headers.AUTH:
                head.auths += (value,)
            elif kind == headers.RID:
                req.rid = value.decode("latin-1")
            elif kind == headers.CONNECTION:
                head.connection += (value,)
            elif kind == headers.TRACE:
                head.trace_context += ((name.lower(), value),)

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        p, head = self.parser, req.head
        head.method = p.get_method()
        head.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive() and head.version == "1.1"
        req.started = time.perf_counter()
        req.head_seen = req.body_seen = self._now
        req.state = REQ_BODY
        req.rid = request_id(req.rid)
        if head.version not in ("1.0", "1.1"):
            raise _unsupported(head.version)
        if head.chunked and head.version != "1.1":
            # Ambiguous framing (RFC 9112 6.1): answer and close.
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests.", close=True)
        if req.hosts > 1 or (req.hosts == 0 and head.version == "1.1"):
            raise BadRequest("An HTTP/1.1 request needs exactly one Host header.", close=True)
        self.sink.headed(req)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.body_bytes += len(body)
        req.body_seen = self._now
        self.sink.body(req, body)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.state = REQ_COMPLETE
        self.parsing = None
        self.sink.completed(req)


def _unsupported(version: str) -> BadRequest:
    if version in ("0.0", "0.9"):
        message = "Malformed HTTP request: the request line has no HTTP version."
        return BadRequest(message, close=True)
    return BadRequest(
        f"HTTP/{version} is not supported on this connection: send HTTP/1.1.",
        status=505,
        close=True,
    )


def _reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return "".join(c for c in text if c.isprintable())[:120]
