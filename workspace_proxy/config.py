"""Configuration: frozen dataclasses built by one validation pass over the YAML.

``load_config(path)`` reads the file, resolves secrets (``{env: NAME}`` or ``{file: PATH}``) and
returns a :class:`Config`, or raises one :class:`ConfigError` that lists every problem found as
``path.to.key: message``. Secrets are :class:`Secret` objects that never print their value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import yaml

from workspace_proxy.errors import ConfigError

WORKSPACES: Final = ("dev", "production")
API_VERSIONS: Final = ("4.0", "3.1")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    connect_s: float = 10.0
    """Opening a connection to Looker."""
    read_s: float = 900.0
    """Longest silence while waiting for Looker's answer (queries can run for minutes)."""
    session_s: float = 30.0
    """Total time for one login, PATCH /session or GET /session call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    interval_s: float = 2.0
    """Mean time between two attempts to pin a team's session while Looker fails: each wait is
    drawn uniformly from half to one and a half times this (so teams spread out), and is never
    shorter than Looker's Retry-After. At 2 s a failing team costs Looker at most about 30
    attempts a minute, and is served again about 1 s (at most 3 s) after Looker heals."""
    deadline_s: float = 15.0
    """How long a call may wait for a pinned session: it waits for the attempts due within this
    and is served by the first that succeeds; otherwise 503 with Retry-After = the next one."""


REMOVED_RETRY_KEYS: Final = {
    "initial_backoff_s": "interval_s",
    "max_backoff_s": "interval_s",
}
"""Keys of ``looker.retry`` removed in 0.2, with their replacement."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookerConfig:
    base_url: str
    api_versions: tuple[str, ...] = API_VERSIONS
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry = field(default_factory=Retry)
    max_connections: int = 1000
    verify_tls: bool = True
    ca_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.verify_tls:
            return False
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    tls: Tls | None = None
    """Serve HTTPS with this certificate chain and key (PEM files)."""

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.server_context()


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    drain_s: float = 5.0
    """After SIGTERM, keep serving (readiness already 503) this long so load balancers notice."""
    grace_s: float = 30.0
    """Then wait at most this long for in-flight requests before exiting."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_request_body_bytes: int = 64 * 1024 * 1024
    replay_buffer_bytes: int = 64 * 1024
    """Request bodies up to this size are buffered so the call can be replayed after a re-login."""
    max_header_bytes: int = 8190
    """Longest request line (414 beyond) or header line (431 beyond)."""
    max_headers: int = 128
    """Most header lines Looker receives for one request (431 beyond): a caller may send this
    many minus the ones the proxy adds (``headers.ADDED``)."""
    body_idle_timeout_s: float = 60.0
    """A caller whose request body stalls longer than this gets 408 (its slot is freed)."""
    body_timeout_s: float = 300.0
    """A request body still arriving this long after its head gets 408, however steadily it
    trickles (its slot and Looker connection are freed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    client_id: str
    client_secret: Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class GitBranch:
    project: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamConfig:
    """A team. Managed (the default): the proxy logs in with the team's Looker credentials and
    callers log in to the proxy. Passthrough: callers log in with their own Looker credentials
    (``looker_client_ids``) and the proxy pins each of their sessions."""

    name: str
    workspace: str
    looker_client_id: Secret | None
    looker_client_secret: Secret | None
    callers: tuple[Caller, ...] = ()
    looker_client_ids: tuple[str, ...] = ()
    max_concurrency: int = 256
    git_branch: GitBranch | None = None
    """dev teams only: check out this branch (per Looker user) and verify it before publishing."""
    allow_branch_switch: bool = False
    """Let callers PUT/POST /projects/{id}/git_branch although the team pins a branch."""
    allow_sudo: bool = False
    """Let callers POST /login/{user_id}; the sudo session is pinned to the workspace too."""

    @property
    def passthrough(self) -> bool:
        return bool(self.looker_client_ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    looker: LookerConfig
    teams: Mapping[str, TeamConfig]
    token_signing_key: Secret
    listen: Listen = field(default_factory=Listen)
    admin: Listen = field(default_factory=lambda: Listen(port=9090))
    shutdown: Shutdown = field(default_factory=Shutdown)
    limits: Limits = field(default_factory=Limits)
    caller_token_ttl_s: int = 3600
    log_level: str = "info"
    source: str = "<memory>"

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


T = TypeVar("T")
Env = Mapping[str, str]


class _Problems:
    """Collects every problem of one validation pass."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _mapping(
    raw: object,
    path: str,
    allowed: AbstractSet[str],
    problems: _Problems,
    *,
    required: AbstractSet[str] = frozenset(),
) -> dict[str, Any]:
    """Return ``raw`` as a dict; report a wrong type, unknown and missing keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(path or "<top level>", f"must be a mapping, got {_type_name(raw)}")
        return {}
    for key in raw:
        if not isinstance(key, str) or key not in allowed:
            hint = f" (allowed: {', '.join(sorted(allowed))})"
            problems.add(_join(path, str(key)), "unknown key" + hint)
    for key in sorted(required - raw.keys()):
        problems.add(_join(path, key), "required")
    return {k: v for k, v in raw.items() if isinstance(k, str) and k in allowed}


def _type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _number(
    raw: Mapping[str, Any], key: str, path: str, default: T, problems: _Problems, *, minimum: float
) -> T:
    if key not in raw:
        return default
    value = raw[key]
    want_int = isinstance(default, int)
    ok = isinstance(value, int) if want_int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        problems.add(_join(path, key), f"must be {'an integer' if want_int else 'a number'}")
        return default
    if math.isnan(value) or math.isinf(value):
        problems.add(_join(path, key), "must be a finite number")
        return default
    if value < minimum:
        problems.add(_join(path, key), f"must be at least {minimum:g}")
        return default
    return value  # type: ignore[no-any-return]


def _bool(raw: Mapping[str, Any], key: str, path: str, default: bool, problems: _Problems) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.add(_join(path, key), "must be true or false")
        return default
    return value


def _choice(
    raw: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], problems: _Problems
) -> str | None:
    value = raw.get(key)
    if value not in choices:
        problems.add(_join(path, key), f"must be one of {', '.join(choices)}")
        return None
    return str(value)


def _secret(
    raw: object, path: str, env: Env, problems: _Problems, *, allow_plain: bool = False
) -> Secret | None:
    """Resolve ``{env: NAME}`` or ``{file: PATH}`` (or a plain string where allowed)."""
    if allow_plain and isinstance(raw, str):
        if not raw:
            problems.add(path, "must not be empty")
            return None
        return Secret(raw)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("env", "file"):
        form = "a string, " if allow_plain else ""
        problems.add(path, f"must be {form}{{env: VARIABLE}} or {{file: /path/to/secret}}")
        return None
    kind, ref = next(iter(raw.items()))
    if not isinstance(ref, str) or not ref:
        problems.add(_join(path, kind), "must be a non-empty string")
        return None
    if kind == "env":
        value = env.get(ref)
        if value is None:
            problems.add(path, f"environment variable {ref} is not set")
            return None
    else:
        try:
            value = Path(ref).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.add(path, f"cannot read secret file {ref}: {exc.__class__.__name__}")
            return None
    if not value:
        problems.add(path, f"{kind} {ref} is empty")
        return None
    return Secret(value)


def _looker(raw: object, problems: _Problems) -> LookerConfig | None:
    path = "looker"
    keys = {
        "base_url",
        "api_versions",
        "timeouts",
        "retry",
        "max_connections",
        "verify_tls",
        "ca_file",
    }
    data = _mapping(raw, path, keys, problems, required={"base_url"})
    base_url = data.get("base_url")
    if "base_url" in data:
        base_url = _check_url(base_url, _join(path, "base_url"), problems)
    versions = data.get("api_versions", list(API_VERSIONS))
    if (
        not isinstance(versions, list)
        or not versions
        or not all(v in API_VERSIONS for v in versions)
    ):
        problems.add(_join(path, "api_versions"), f"must be a non-empty list of {API_VERSIONS}")
        versions = list(API_VERSIONS)
    tpath = _join(path, "timeouts")
    traw = _mapping(data.get("timeouts"), tpath, {"connect_s", "read_s", "session_s"}, problems)
    d = Timeouts()
    timeouts = Timeouts(
        connect_s=_number(traw, "connect_s", tpath, d.connect_s, problems, minimum=0.1),
        read_s=_number(traw, "read_s", tpath, d.read_s, problems, minimum=0.1),
        session_s=_number(traw, "session_s", tpath, d.session_s, problems, minimum=0.1),
    )
    rpath = _join(path, "retry")
    rraw = _mapping(
        data.get("retry"), rpath, {"interval_s", "deadline_s", *REMOVED_RETRY_KEYS}, problems
    )
    for old in sorted(REMOVED_RETRY_KEYS.keys() & rraw.keys()):
        problems.add(
            _join(rpath, old),
            f"was removed in 0.2: while Looker fails, attempts are spaced evenly by "
            f"{REMOVED_RETRY_KEYS[old]} (default 2 s) instead of a growing backoff, so a team "
            f"is served again within seconds of Looker healing; delete this key",
        )
    r = Retry()
    retry = Retry(
        interval_s=_number(rraw, "interval_s", rpath, r.interval_s, problems, minimum=0.01),
        deadline_s=_number(rraw, "deadline_s", rpath, r.deadline_s, problems, minimum=0.0),
    )
    ca_file = data.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not _readable(ca_file)):
        problems.add(_join(path, "ca_file"), f"cannot read CA bundle {ca_file!r}")
        ca_file = None
    elif ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, ValueError) as exc:
            problems.add(_join(path, "ca_file"), f"is not a PEM CA bundle: {exc}")
            ca_file = None
    if not isinstance(base_url, str):
        return None
    return LookerConfig(
        base_url=base_url,
        api_versions=tuple(versions),
        timeouts=timeouts,
        retry=retry,
        max_connections=_number(data, "max_connections", path, 1000, problems, minimum=1),
        verify_tls=_bool(data, "verify_tls", path, True, problems),
        ca_file=ca_file,
    )


def _readable(path: str) -> bool:
    try:
        return os.path.isfile(path) and os.access(path, os.R_OK)
    except ValueError:  # NUL in the path
        return False


def _check_url(value: object, path: str, problems: _Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(path, "must be a URL string like https://example.looker.com")
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        problems.add(path, f"is not a valid URL: {value!r}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(path, f"must be an http(s) URL with a host, got {value!r}")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        problems.add(path, "must be the root of the Looker API host (no path such as /api/4.0)")
        return None
    try:
        _ = parts.port
    except ValueError:
        problems.add(path, f"has an invalid port: {value!r}")
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _team(name: str, raw: object, env: Env, problems: _Problems) -> TeamConfig | None:
    path = _join("teams", name)
    if not _TEAM_NAME.match(name):
        problems.add(path, "team names use letters, digits, '_', '-', '.' (at most 64)")
    keys = {
        "mode",
        "workspace",
        "looker_client_id",
        "looker_client_secret",
        "callers",
        "looker_client_ids",
        "max_concurrency",
        "git_branch",
        "allow_branch_switch",
        "allow_sudo",
    }
    mode = raw.get("mode", "managed") if isinstance(raw, dict) else "managed"
    if mode == "passthrough":
        required = {"workspace", "looker_client_ids"}
        for key in ("looker_client_id", "looker_client_secret", "callers"):
            if isinstance(raw, dict) and key in raw:
                problems.add(
                    _join(path, key),
                    "not used in passthrough mode (callers log in "
                    "with their own Looker credentials, listed in looker_client_ids)",
                )
    else:
        required = {"workspace", "looker_client_id", "looker_client_secret", "callers"}
        if mode != "managed":
            problems.add(_join(path, "mode"), "must be one of managed, passthrough")
        elif isinstance(raw, dict) and "looker_client_ids" in raw:
            problems.add(_join(path, "looker_client_ids"), "only for mode: passthrough")
    data = _mapping(raw, path, keys, problems, required=frozenset(required))
    workspace = (
        _choice(data, "workspace", path, WORKSPACES, problems) if "workspace" in data else None
    )
    cid = secret = None
    if "looker_client_id" in data:
        cid = _secret(
            data["looker_client_id"],
            _join(path, "looker_client_id"),
            env,
            problems,
            allow_plain=True,
        )
    if "looker_client_secret" in data:
        secret = _secret(
            data["looker_client_secret"], _join(path, "looker_client_secret"), env, problems
        )
    callers = _callers(data.get("callers"), _join(path, "callers"), env, problems)
    client_ids: tuple[str, ...] = ()
    if mode == "passthrough":
        client_ids = _client_ids(
            data.get("looker_client_ids"), _join(path, "looker_client_ids"), problems
        )
        callers = ()
    max_conc = _number(data, "max_concurrency", path, 256, problems, minimum=1)
    branch = None
    if data.get("git_branch") is not None:
        branch = _git_branch(data["git_branch"], _join(path, "git_branch"), problems)
        if workspace == "production":
            problems.add(
                _join(path, "git_branch"), "only a dev team can pin a branch (production is shared)"
            )
    allow_switch = _bool(data, "allow_branch_switch", path, False, problems)
    allow_sudo = _bool(data, "allow_sudo", path, False, problems)
    if allow_sudo and branch is not None:
        problems.add(
            _join(path, "allow_sudo"),
            "cannot be combined with git_branch: the dev branch belongs to each Looker user, "
            "and the proxy will not switch other users' branches",
        )
    managed_ok = mode != "passthrough" and None not in (cid, secret, callers)
    if workspace is None or not (managed_ok or client_ids) or callers is None:
        return None
    return TeamConfig(
        name=name,
        workspace=workspace,
        looker_client_id=cid,
        looker_client_secret=secret,
        callers=callers,
        looker_client_ids=client_ids,
        max_concurrency=max_conc,
        git_branch=branch,
        allow_branch_switch=allow_switch,
        allow_sudo=allow_sudo,
    )


def _client_ids(raw: object, path: str, problems: _Problems) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add(path, "must be a non-empty list of Looker API client ids")
        return ()
    if not all(isinstance(v, str) and v.strip() for v in raw):
        problems.add(path, "every entry must be a non-empty string")
        return ()
    return tuple(raw)


def _git_branch(raw: object, path: str, problems: _Problems) -> GitBranch | None:
    keys = frozenset({"project", "name"})
    data = _mapping(raw, path, keys, problems, required=keys)
    ok = data.keys() == keys
    for key in sorted(keys & data.keys()):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            problems.add(_join(path, key), "must be a non-empty string")
            ok = False
        elif key == "project" and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            problems.add(_join(path, key), "must be a Looker project id (letters, digits, _ . -)")
            ok = False
    return GitBranch(project=data["project"], name=data["name"]) if ok else None


def _callers(raw: object, path: str, env: Env, problems: _Problems) -> tuple[Caller, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        problems.add(path, "must be a non-empty list of {client_id, client_secret}")
        return None
    out: list[Caller] = []
    for i, item in enumerate(raw):
        ipath = _join(path, i)
        data = _mapping(
            item,
            ipath,
            {"client_id", "client_secret"},
            problems,
            required={"client_id", "client_secret"},
        )
        cid = data.get("client_id")
        if "client_id" in data and (not isinstance(cid, str) or not cid.strip()):
            problems.add(_join(ipath, "client_id"), "must be a non-empty string")
            cid = None
        secret = None
        if "client_secret" in data:
            secret = _secret(data["client_secret"], _join(ipath, "client_secret"), env, problems)
        if isinstance(cid, str) and secret is not None:
            out.append(Caller(client_id=cid, client_secret=secret))
    return tuple(out) if len(out) == len(raw) else None


def _cross_checks(teams: Mapping[str, TeamConfig], problems: _Problems) -> None:
    """Rules that span teams: unique caller ids, one workspace per Looker API user."""
    caller_owner: dict[str, str] = {}
    for team in teams.values():
        for i, caller in enumerate(team.callers):
            if caller.client_id in caller_owner:
                problems.add(
                    f"teams.{team.name}.callers[{i}].client_id",
                    f"duplicate caller id {caller.client_id!r} "
                    f"(first used in team {caller_owner[caller.client_id]!r})",
                )
            else:
                caller_owner[caller.client_id] = team.name
    by_user: dict[str, TeamConfig] = {}
    for team in teams.values():
        for i, client_id in enumerate(team.looker_client_ids):
            if client_id in caller_owner:
                problems.add(
                    f"teams.{team.name}.looker_client_ids[{i}]",
                    f"{client_id!r} is also a proxy caller id (team "
                    f"{caller_owner[client_id]!r}); a login could not tell them apart",
                )
        users = [c.reveal() for c in (team.looker_client_id,) if c is not None]
        for client_id in [*users, *team.looker_client_ids]:
            _one_state_per_user(by_user, client_id, team, problems)


def _one_state_per_user(
    by_user: dict[str, TeamConfig], client_id: str, team: TeamConfig, problems: _Problems
) -> None:
    """Dev mode and the dev branch belong to a Looker user: its teams must agree on them."""
    first = by_user.setdefault(client_id, team)
    if first is not team:
        if team.passthrough and first.passthrough:
            problems.add(
                f"teams.{team.name}.looker_client_ids",
                f"Looker client id {client_id!r} is also listed by team {first.name!r}",
            )
        elif first.workspace != team.workspace:
            problems.add(
                f"teams.{team.name}.looker_client_id",
                f"same Looker API user as team {first.name!r} but a different workspace "
                f"({team.workspace} vs {first.workspace}); dev state is per Looker user, "
                "give each workspace its own API user",
            )
        elif first.git_branch != team.git_branch:
            problems.add(
                f"teams.{team.name}.git_branch",
                f"same Looker API user as team {first.name!r} but a different git branch; "
                "the checked-out dev branch is per Looker user, give each branch its own API user",
            )


def parse_config(raw: object, *, env: Env | None = None, source: str = "<memory>") -> Config:
    """Validate a parsed YAML document; raise one ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems = _Problems()
    top_keys = {
        "looker",
        "teams",
        "token_signing_key",
        "listen",
        "admin",
        "shutdown",
        "limits",
        "caller_token_ttl_s",
        "log_level",
    }
    data = _mapping(raw, "", top_keys, problems, required={"looker", "teams", "token_signing_key"})
    looker = _looker(data["looker"], problems) if "looker" in data else None
    key = None
    if "token_signing_key" in data:
        key = _secret(data["token_signing_key"], "token_signing_key", env, problems)
        if key is not None and len(key.reveal()) < 32:
            problems.add("token_signing_key", "must be at least 32 characters of random data")
            key = None
    listen = _listen(data.get("listen"), "listen", Listen(), problems)
    admin = _listen(data.get("admin"), "admin", Listen(port=9090), problems)
    sraw = _mapping(data.get("shutdown"), "shutdown", {"drain_s", "grace_s"}, problems)
    shutdown = Shutdown(
        drain_s=_number(sraw, "drain_s", "shutdown", Shutdown().drain_s, problems, minimum=0),
        grace_s=_number(sraw, "grace_s", "shutdown", Shutdown().grace_s, problems, minimum=0),
    )
    limraw = _mapping(
        data.get("limits"),
        "limits",
        {
            "max_request_body_bytes",
            "replay_buffer_bytes",
            "max_header_bytes",
            "max_headers",
            "body_idle_timeout_s",
            "body_timeout_s",
        },
        problems,
    )
    dl = Limits()
    limits = Limits(
        max_request_body_bytes=_number(
            limraw,
            "max_request_body_bytes",
            "limits",
            dl.max_request_body_bytes,
            problems,
            minimum=1,
        ),
        replay_buffer_bytes=_number(
            limraw, "replay_buffer_bytes", "limits", dl.replay_buffer_bytes, problems, minimum=0
        ),
        max_header_bytes=_number(
            limraw, "max_header_bytes", "limits", dl.max_header_bytes, problems, minimum=1024
        ),
        max_headers=_number(limraw, "max_headers", "limits", dl.max_headers, problems, minimum=16),
        body_idle_timeout_s=_number(
            limraw, "body_idle_timeout_s", "limits", dl.body_idle_timeout_s, problems, minimum=0.1
        ),
        body_timeout_s=_number(
            limraw, "body_timeout_s", "limits", dl.body_timeout_s, problems, minimum=0.1
        ),
    )
    ttl = _number(data, "caller_token_ttl_s", "", 3600, problems, minimum=120)
    log_level = "info"
    if "log_level" in data:
        log_level = _choice(data, "log_level", "", LOG_LEVELS, problems) or "info"
    teams: dict[str, TeamConfig] = {}
    if "teams" in data:
        raw_teams = data["teams"]
        if not isinstance(raw_teams, dict) or not raw_teams:
            problems.add("teams", "must be a non-empty mapping of team name to team settings")
        else:
            for name, traw in raw_teams.items():
                team = _team(str(name), traw, env, problems)
                if team is not None:
                    teams[team.name] = team
            _cross_checks(teams, problems)
    if problems.items or looker is None or key is None:
        raise ConfigError(problems.items or ["configuration is incomplete"])
    return Config(
        looker=looker,
        teams=teams,
        token_signing_key=key,
        listen=listen,
        admin=admin,
        shutdown=shutdown,
        limits=limits,
        caller_token_ttl_s=ttl,
        log_level=log_level,
        source=source,
    )


def _listen(raw: object, path: str, default: Listen, problems: _Problems) -> Listen:
    data = _mapping(raw, path, {"host", "port", "tls"}, problems)
    host = data.get("host", default.host)
    if not isinstance(host, str) or not host:
        problems.add(_join(path, "host"), "must be a host name or address")
        host = default.host
    tls = _tls(data["tls"], _join(path, "tls"), problems) if data.get("tls") is not None else None
    return Listen(host=host, port=_port(data, path, default.port, problems), tls=tls)


def _tls(raw: object, path: str, problems: _Problems) -> Tls | None:
    keys = frozenset({"cert_file", "key_file"})
    data = _mapping(raw, path, keys, problems, required=keys)
    files = {k: data.get(k) for k in sorted(keys)}
    for key, value in files.items():
        if key in data and (not isinstance(value, str) or not _readable(value)):
            problems.add(_join(path, key), f"cannot read {value!r}")
            return None
    if len(data) != len(keys):
        return None
    tls = Tls(cert_file=str(files["cert_file"]), key_file=str(files["key_file"]))
    try:
        tls.server_context()
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.add(path, f"certificate and key do not load: {exc.__class__.__name__}: {exc}")
        return None
    return tls


def _port(raw: Mapping[str, Any], path: str, default: int, problems: _Problems) -> int:
    port = _number(raw, "port", path, default, problems, minimum=0)
    if port > 65535:
        problems.add(_join(path, "port"), "must be at most 65535")
        return default
    return port


def load_config(path: str | os.PathLike[str], *, env: Env | None = None) -> Config:
    """Read and validate a YAML config file; every problem is reported in one ConfigError."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{source}: cannot read config file: {exc.__class__.__name__}"]
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError([f"{source}: invalid YAML{where}: {problem}"]) from None
    try:
        return parse_config(raw, env=env, source=source)
    except ConfigError as exc:
        raise ConfigError([f"{source}: {p}" for p in exc.problems]) from None


def summary(config: Config) -> str:
    """A human summary of a valid config: teams, workspaces and callers (no secrets)."""
    lines = [
        f"config {config.source}: OK",
        f"  looker: {config.looker.base_url} (API {', '.join(config.looker.api_versions)})",
        f"  listen: {config.listen.host}:{config.listen.port}",
    ]
    for team in config.teams.values():
        branch = f" (branch {team.git_branch.name})" if team.git_branch else ""
        if team.passthrough:
            who = "passthrough for Looker client ids " + ", ".join(team.looker_client_ids)
        else:
            who = "callers: " + ", ".join(c.client_id for c in team.callers)
        lines.append(f"  team {team.name}: workspace {team.workspace}{branch}; {who}")
    return "\n".join(lines)
