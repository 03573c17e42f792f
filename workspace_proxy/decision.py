"""What the one decision reads and what it answers, as plain data (no logic beyond building
them): the request ``Head`` the transport parsed and the caller's ``Peer``; the ``Policy`` of one
configuration (with the decisions already made from it); and the four answers ``decide`` gives
(``Refuse``, ``Forward``, ``Local``, ``Resolve``), with the session a call goes under
(``SessionKey``) and what happens to its ``Body``. The transport, the forwarding flow and the
local answers speak this vocabulary; only ``decide`` makes the choices."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from workspace_proxy.auth import Principal
from workspace_proxy.config import Config, Secret
from workspace_proxy.errors import ProxyError
from workspace_proxy.routes import Route, Target

if TYPE_CHECKING:
    from workspace_proxy.auth import CallerAuth
    from workspace_proxy.passthrough import Pinned


@dataclass(slots=True)
class Head:
    """A request head as the transport parsed it (``headers`` in arrival order)."""

    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    length: int | None = None
    chunked: bool = False
    host: bytes | None = None
    """The one Host value (HTTP/1.0 may send none)."""
    auths: tuple[bytes, ...] = ()
    """The Authorization values."""
    connection: tuple[bytes, ...] = ()
    """The Connection values (the names they list are hop-by-hop)."""
    trace_context: tuple[tuple[bytes, bytes], ...] = ()
    """The W3C trace context lines (traceparent, tracestate), name lower-cased, as sent."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The caller's end of the connection (one per connection)."""

    address: str
    scheme: str
    lines: bytes = field(init=False, default=b"")
    """The proxy's own X-Forwarded-For and -Proto lines for this peer."""

    def __post_init__(self) -> None:
        lines = f"X-Forwarded-For: {self.address}\r\n" if self.address else ""
        object.__setattr__(
            self, "lines", (lines + f"X-Forwarded-Proto: {self.scheme}\r\n").encode()
        )


class Body(enum.Enum):
    """What happens to the request body of a forwarded call."""

    NONE = "none"
    BUFFER = "buffer"
    """Small, of known length: read whole before sending, so the call can be replayed once."""
    STREAM = "stream"
    """Larger or chunked: streamed to Looker as it arrives; not replayable."""


# The members as module names too: on Python 3.11 every ``Class.MEMBER`` is a fresh
# attribute lookup (3.12 caches it), and the transport checks the plan on every call.
BODY_NONE: Final = Body.NONE
BODY_BUFFER: Final = Body.BUFFER
BODY_STREAM: Final = Body.STREAM


@dataclass(frozen=True, slots=True)
class Managed:
    """The pinned session of a managed team (acting as ``sudo`` when set)."""

    team: str
    sudo: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """A passthrough caller's own pinned session."""

    pinned: Pinned


SessionKey = Managed | Caller


@dataclass(frozen=True, slots=True)
class Refuse:
    error: ProxyError


@dataclass(frozen=True, slots=True)
class Forward:
    route: str
    """A bounded label for logs and metrics."""
    team: str | None
    """Whose concurrency slot the call takes (None: a public call)."""
    key: SessionKey | None
    """Under which pinned session (None: sent without credentials)."""
    head: bytes
    """Request line and headers, without the final CRLF and the session's Authorization."""
    body: Body
    length: int | None
    chunked: bool
    principal: Principal | None = None
    """The proxy-token caller it was decided for (None: public, or a passthrough caller)."""


class Act(enum.Enum):
    LOGIN = "login"
    LOGOUT = "logout"
    SUDO = "sudo"
    PATCH_SESSION = "patch_session"
    PASSTHROUGH_LOGOUT = "passthrough_logout"
    PASSTHROUGH_SUDO = "passthrough_sudo"


@dataclass(frozen=True, slots=True)
class Local:
    act: Act
    route: str
    team: str | None = None
    key: SessionKey | None = None
    principal: Principal | None = None
    user_id: str | None = None
    """For sudo: the Looker user to act as."""
    reads_body: bool = False
    """A small body is read first (the login form, the PATCH /session JSON)."""
    then: Forward | None = None
    """What to forward once the local part is done (PATCH: GET /session; passthrough logout)."""
    query: str | None = None
    """The login's query (credentials may come there too)."""


@dataclass(frozen=True, slots=True)
class Resolve:
    token: Secret
    route: Route
    target: Target


Decision = Refuse | Forward | Local | Resolve


@dataclass(frozen=True, slots=True)
class Looker:
    """Where forwarded requests go: Looker's Host header and base path."""

    host_header: bytes
    base_path: str

    @classmethod
    def of(cls, config: Config) -> Looker:
        url = urlsplit(config.looker.base_url)
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        default = (tls and port == 443) or (not tls and port == 80)
        host = url.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        return cls((shown if default else f"{shown}:{port}").encode("idna"), url.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Policy:
    """What the decision reads from one configuration (replaced as a whole on reload)."""

    config: Config
    auth: CallerAuth
    looker: Looker
    passthrough: bool
    """Some team is in passthrough mode: tokens that are not ours are Looker's."""
    tracing: bool = False
    """The proxy traces: the caller's trace context is not forwarded (``headers``), Looker gets
    the proxy's own (``leg``)."""
    memo: dict[tuple[object, ...], tuple[Principal | None, Forward | Resolve]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Decisions already made, by everything they read (the head, its framing and the peer):
    a forward with the proxy caller it was decided for (the same head decides the same way as
    long as that caller's token is still good, ``CallerAuth.valid``, checked on every use); a
    ``Resolve`` of a sealed passthrough token that opened (``Passthrough`` checks it on every
    use). One per configuration, so a reload starts afresh."""
    pinned_memo: dict[tuple[object, ...], tuple[Pinned, Decision]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Forwards decided for a sealed passthrough session (``decide_pinned``), with it."""
