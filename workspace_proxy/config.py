"""Configuration model: the frozen dataclasses of the configuration file, and what they need.

Each YAML key is a dataclass field: its docstring describes it, and its
:class:`~workspace_proxy.fieldspec.Spec` (in the field's metadata) says what it may hold beyond
its type. ``workspace_proxy.validation`` builds a :class:`Config` from a YAML document in one
pass (``workspace_proxy.loading`` reads the file); ``workspace_proxy.schema`` (the JSON Schema of
this file format) reads the same fields and docstrings. Secrets are :class:`Secret` objects that
never print their value.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from workspace_proxy.fieldspec import MANAGED, PASSTHROUGH, Spec

WORKSPACES: Final = ("dev", "production")
API_VERSIONS: Final = ("4.0", "3.1")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TEAM_NAME: Final = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A team name: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit, at
most 64 characters."""
PROJECT_ID: Final = "[A-Za-z0-9_.-]+"
BASE_URL: Final = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[^\s/?#@]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+)"
    r"(?::[0-9]{0,5})?/?"
)
"""The shape of ``looker.base_url`` that ``validation._check_url`` accepts: http(s), a host, an
optional port, no path, query or fragment (``_check_url`` also checks the port's range)."""
OTLP_ENDPOINT: Final = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)"
    r"(?::([0-9]{1,5}))?(?:/[^\s?#]*)?"
)
"""The shape of an OTLP/HTTP endpoint (``tracing.endpoint`` and the OTEL_EXPORTER_OTLP_
variables): http(s), a host, an optional port and path, no query or fragment (check-config also
checks the port's range)."""
TRACE_SAMPLERS: Final = (
    "parentbased_traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "traceidratio",
    "always_on",
    "always_off",
)
"""The values of OTEL_TRACES_SAMPLER the proxy knows; the ``traceidratio`` ones take their ratio
from OTEL_TRACES_SAMPLER_ARG, else from ``tracing.sampling_ratio``."""
DAY_S: Final = 86400.0
"""The longest any duration setting may be (a longer one is a typo, and an event loop refuses
timers of 1e300 s)."""
SET: Final = object()
"""In a :class:`Conflict`: any value but null."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two settings of one team that cannot go together: ``key`` set to ``value`` while
    ``other`` is ``other_value`` (:data:`SET`: any value but null). Reported at ``key``."""

    key: str
    value: object
    other: str
    other_value: object
    message: str


TEAM_CONFLICTS: Final = (
    Conflict(
        "git_branch",
        SET,
        "workspace",
        "production",
        "only a dev team can pin a branch (production is shared)",
    ),
    Conflict(
        "allow_sudo",
        True,
        "git_branch",
        SET,
        "cannot be combined with git_branch: the dev branch belongs to each Looker user, "
        "and the proxy will not switch other users' branches",
    ),
)


SECRET_SOURCES: Final = {
    "env": "the name of an environment variable of the proxy that holds the secret",
    "file": "the path of a file that holds the secret (read once, whitespace-trimmed)",
}
"""Where a secret comes from: a secret is written ``{env: VARIABLE}`` or ``{file: PATH}``; a
missing variable or an unreadable or empty file is an error. Its value is never shown."""


class Secret:
    """A secret string. ``repr``/``str`` never show it; ``reveal()`` is the one way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Time limits of the proxy's calls to Looker, in seconds."""

    connect_s: float = field(default=10.0, metadata=Spec(minimum=0.1, maximum=DAY_S).meta)
    """Opening a connection to Looker."""
    read_s: float = field(default=900.0, metadata=Spec(minimum=0.1, maximum=DAY_S).meta)
    """Longest silence while waiting for Looker's answer (queries can run for minutes)."""
    session_s: float = field(default=30.0, metadata=Spec(minimum=0.1, maximum=DAY_S).meta)
    """Total time for one login, PATCH /session or GET /session call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Attempts to pin a team's session while Looker fails."""

    interval_s: float = field(default=2.0, metadata=Spec(minimum=0.01, maximum=DAY_S).meta)
    """Mean time between two attempts to pin a team's session while Looker fails: each wait is
    drawn uniformly from half to one and a half times this (so teams spread out), and is never
    shorter than Looker's Retry-After. At 2 s a failing team costs Looker at most about 30
    attempts a minute, and is served again about 1 s (at most 3 s) after Looker heals."""
    deadline_s: float = field(default=15.0, metadata=Spec(minimum=0.0, maximum=DAY_S).meta)
    """How long a call may wait for a pinned session: it waits for the attempts due within this
    and is served by the first that succeeds; otherwise 503 with Retry-After = the next one."""


REMOVED_RETRY_KEYS: Final = {
    "initial_backoff_s": "interval_s",
    "max_backoff_s": "interval_s",
}
"""Keys of ``looker.retry`` removed in 0.2, with their replacement."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookerConfig:
    """The Looker instance the proxy forwards to."""

    base_url: str = field(metadata=Spec(pattern=BASE_URL).meta)
    """Root of the Looker API host, e.g. https://example.looker.com (port 443 or 19999), no
    /api path."""
    api_versions: tuple[str, ...] = field(
        default=API_VERSIONS, metadata=Spec(choices=API_VERSIONS, non_empty=True).meta
    )
    """API version prefixes served (/api/4.0/...); sessions are managed via the first."""
    timeouts: Timeouts = field(default_factory=Timeouts, metadata=Spec(nullable=True).meta)
    """Time limits of the calls to Looker."""
    retry: Retry = field(default_factory=Retry, metadata=Spec(nullable=True).meta)
    """Attempts to pin a team's session while Looker fails."""
    max_connections: int = field(default=1000, metadata=Spec(minimum=1).meta)
    """Upstream connection pool per process (idle ones close after 15 s); raised to the sum of
    the teams' max_concurrency (+2 each) if smaller."""
    verify_tls: bool = True
    """Check Looker's TLS certificate."""
    ca_file: str | None = field(default=None, metadata=Spec(nullable=True).meta)
    """A PEM CA bundle to check Looker's certificate against (default: the system's)."""

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.verify_tls:
            return False
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    """HTTPS on a listener: a PEM certificate chain and its key."""

    cert_file: str = field(metadata=Spec(non_empty=True).meta)
    """PEM file with the certificate chain (readable by the proxy)."""
    key_file: str = field(metadata=Spec(non_empty=True).meta)
    """PEM file with the private key (readable by the proxy)."""

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """A listening socket."""

    host: str = field(default="127.0.0.1", metadata=Spec(non_empty=True).meta)
    """Address to bind (0.0.0.0 for every IPv4 address, e.g. in a container)."""
    port: int = field(default=8080, metadata=Spec(minimum=0, maximum=65535).meta)
    """TCP port (0: any free port)."""
    tls: Tls | None = field(default=None, metadata=Spec(nullable=True).meta)
    """Serve HTTPS with this certificate chain and key (PEM files)."""

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.server_context()


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """What SIGTERM does."""

    drain_s: float = field(default=5.0, metadata=Spec(minimum=0, maximum=DAY_S).meta)
    """After SIGTERM, keep serving (readiness already 503) this long so load balancers notice."""
    grace_s: float = field(default=30.0, metadata=Spec(minimum=0, maximum=DAY_S).meta)
    """Then wait at most this long for in-flight requests before exiting."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one request may hold."""

    max_request_body_bytes: int = field(default=64 * 1024 * 1024, metadata=Spec(minimum=1).meta)
    """Larger request bodies get 413."""
    replay_buffer_bytes: int = field(default=64 * 1024, metadata=Spec(minimum=0).meta)
    """Request bodies up to this size are buffered so the call can be replayed after a re-login."""
    max_header_bytes: int = field(default=8190, metadata=Spec(minimum=1024).meta)
    """Longest request line (414 beyond) or header line (431 beyond)."""
    max_headers: int = field(default=128, metadata=Spec(minimum=16).meta)
    """Most header lines Looker receives for one request (431 beyond): a caller may send this
    many minus the ones the proxy adds (``headers.ADDED``)."""
    body_idle_timeout_s: float = field(default=60.0, metadata=Spec(minimum=0.1, maximum=DAY_S).meta)
    """A caller whose request body stalls longer than this gets 408 (its slot is freed)."""
    body_timeout_s: float = field(default=300.0, metadata=Spec(minimum=0.1, maximum=DAY_S).meta)
    """A request body still arriving this long after its head gets 408, however steadily it
    trickles (its slot and Looker connection are freed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing:
    """OpenTelemetry tracing: spans exported over OTLP/HTTP (protobuf). On when this block is
    present (`tracing: {}` takes every default) or OTEL_EXPORTER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; off whatever else says when OTEL_SDK_DISABLED is
    true or OTEL_TRACES_EXPORTER is none. Each standard OTEL_* variable that is set overrides
    its key."""

    endpoint: str = field(
        default="http://localhost:4318", metadata=Spec(pattern=OTLP_ENDPOINT).meta
    )
    """Base URL of the OTLP/HTTP receiver (a collector or an agent): spans are sent to its
    /v1/traces. OTEL_EXPORTER_OTLP_ENDPOINT overrides it; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the
    full URL) overrides both."""
    sampling_ratio: float = field(default=1.0, metadata=Spec(minimum=0, maximum=1).meta)
    """Share of new traces recorded, from 0 to 1; a call whose caller sends a W3C traceparent
    follows the caller's decision. OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG override
    it."""
    service_name: str = field(default="workspace-proxy", metadata=Spec(non_blank=True).meta)
    """The spans' service.name; OTEL_SERVICE_NAME overrides it."""
    traces_url: str = field(default="", metadata=Spec(yaml=False).meta)
    """Where spans are sent: ``endpoint`` + /v1/traces, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
    sampler: str = field(default=TRACE_SAMPLERS[0], metadata=Spec(yaml=False).meta)
    """The sampler, named as OTEL_TRACES_SAMPLER names it (``sampling_ratio`` is its ratio)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """A client of a managed team: the credentials it logs in to the proxy with."""

    client_id: str = field(metadata=Spec(non_blank=True).meta)
    """The caller's client id (unique across all teams)."""
    client_secret: Secret
    """The caller's proxy secret."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GitBranch:
    """A LookML dev branch to check out for the team."""

    project: str = field(metadata=Spec(non_blank=True, pattern=PROJECT_ID).meta)
    """Looker project id (letters, digits, _ . -)."""
    name: str = field(metadata=Spec(non_blank=True).meta)
    """Branch name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamConfig:
    """A team. Managed (the default): the proxy logs in with the team's Looker credentials and
    callers log in to the proxy. Passthrough: callers log in with their own Looker credentials
    (``looker_client_ids``) and the proxy pins each of their sessions."""

    name: str = field(metadata=Spec(yaml=False).meta)
    workspace: str = field(metadata=Spec(choices=WORKSPACES).meta)
    """The Looker workspace every session of the team is pinned to."""
    looker_client_id: Secret | None = field(
        metadata=Spec(modes=MANAGED, plain=True, required=True).meta
    )
    """Managed teams: the client id of the team's Looker API user (a plain string too)."""
    looker_client_secret: Secret | None = field(metadata=Spec(modes=MANAGED, required=True).meta)
    """Managed teams: the client secret of the team's Looker API user."""
    callers: tuple[Caller, ...] = field(
        default=(), metadata=Spec(modes=MANAGED, required=True, non_empty=True).meta
    )
    """Managed teams: who may log in to the proxy for this team."""
    looker_client_ids: tuple[str, ...] = field(
        default=(),
        metadata=Spec(modes=PASSTHROUGH, required=True, non_empty=True, non_blank=True).meta,
    )
    """Passthrough teams: the Looker API client ids whose logins belong to this team."""
    max_concurrency: int = field(default=256, metadata=Spec(minimum=1).meta)
    """In-flight requests for this team; 429 beyond."""
    git_branch: GitBranch | None = field(default=None, metadata=Spec(nullable=True).meta)
    """dev teams only: check out this branch (per Looker user) and verify it before publishing."""
    allow_branch_switch: bool = False
    """Let callers PUT/POST /projects/{id}/git_branch although the team pins a branch."""
    allow_sudo: bool = False
    """Let callers POST /login/{user_id}; the sudo session is pinned to the workspace too."""

    @property
    def passthrough(self) -> bool:
        return bool(self.looker_client_ids)

    @property
    def branch_label(self) -> str | None:
        """The pinned branch as ``project/name`` (``/readyz`` shows it; sealed passthrough
        tokens keep it), None when the team pins none."""
        branch = self.git_branch
        return f"{branch.project}/{branch.name}" if branch else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The workspace-proxy configuration file."""

    looker: LookerConfig
    """The Looker instance the proxy forwards to."""
    teams: Mapping[str, TeamConfig] = field(metadata=Spec(non_empty=True, pattern=TEAM_NAME).meta)
    """The teams, by name (letters, digits, `_`, `-`, `.`; at most 64); each is pinned to one
    workspace."""
    token_signing_key: Secret
    """At least 32 random characters, the same on every replica: signs proxy tokens and keys
    sealed passthrough tokens (HKDF)."""
    listen: Listen = field(default_factory=Listen, metadata=Spec(nullable=True).meta)
    """The proxied API."""
    admin: Listen = field(
        default_factory=lambda: Listen(port=9090), metadata=Spec(nullable=True).meta
    )
    """The admin listener: /healthz, /readyz, /metrics."""
    shutdown: Shutdown = field(default_factory=Shutdown, metadata=Spec(nullable=True).meta)
    """What SIGTERM does: drain, then wait for in-flight requests."""
    limits: Limits = field(default_factory=Limits, metadata=Spec(nullable=True).meta)
    """Bounds on what one request may hold."""
    caller_token_ttl_s: int = field(default=3600, metadata=Spec(minimum=120).meta)
    """Proxy token lifetime (at least 120: spectacles renews 60 s early)."""
    log_level: str = field(default="info", metadata=Spec(choices=LOG_LEVELS).meta)
    """Least severe log level written."""
    tracing: Tracing | None = field(default=None, metadata=Spec(nullable=True).meta)
    """OpenTelemetry traces (OTLP/HTTP): one span per proxied call, with child spans for pins
    and for the call to Looker. Off by default (null)."""
    source: str = field(default="<memory>", metadata=Spec(yaml=False).meta)

    def keeping_listeners(self, running: Config) -> Config:
        """This config with the running one's listeners: a reload cannot move a bound socket."""
        return dataclasses.replace(self, listen=running.listen, admin=running.admin)

    @property
    def pool_size(self) -> int:
        """Upstream connections: ``looker.max_connections``, raised if need be so that every team
        can use its whole ``max_concurrency`` at once (plus its own login and PATCH) — one team's
        slow queries then never hold a connection another team needs."""
        needed = sum(t.max_concurrency + 2 for t in self.teams.values())
        return max(self.looker.max_connections, needed)

    @property
    def managed_teams(self) -> dict[str, TeamConfig]:
        """Teams whose Looker session the proxy logs in and pins itself."""
        return {n: t for n, t in self.teams.items() if not t.passthrough}

    def passthrough_team(self, looker_client_id: str) -> TeamConfig | None:
        """The passthrough team whose callers log in with this Looker client id."""
        return next(
            (t for t in self.teams.values() if looker_client_id in t.looker_client_ids), None
        )
