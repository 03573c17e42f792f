"""Validation: one pass over a parsed YAML document builds the frozen :class:`Config`.

``parse_config(document)`` checks every key against its field's type and
:class:`~workspace_proxy.fieldspec.Spec`, resolves secrets (``{env: NAME}`` or ``{file: PATH}``),
reads the ``OTEL_*`` variables that turn tracing on or off, and applies the rules that span keys
and teams. It returns a :class:`Config`, or raises one :class:`ConfigError` that lists every
problem found as ``path.to.key: message``.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from workspace_proxy.config import (
    OTLP_ENDPOINT,
    PROJECT_ID,
    REMOVED_RETRY_KEYS,
    SECRET_SOURCES,
    SET,
    TEAM_CONFLICTS,
    TEAM_NAME,
    TRACE_SAMPLERS,
    Caller,
    Config,
    GitBranch,
    Limits,
    Listen,
    LookerConfig,
    Retry,
    Secret,
    Shutdown,
    TeamConfig,
    Timeouts,
    Tls,
    Tracing,
)
from workspace_proxy.errors import ConfigError
from workspace_proxy.fieldspec import (
    TEAM_MODES,
    key_spec,
    required_keys,
    spec_of,
    yaml_fields,
    yaml_keys,
)

_TEAM_NAME = re.compile(TEAM_NAME)
_PLAIN_KEY = re.compile("[A-Za-z0-9_-]+")

T = TypeVar("T")
Env = Mapping[str, str]


class _Problems:
    """Collects every problem of one validation pass."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def _join(path: str, key: str | int) -> str:
    """Where a value is, for problems: ``teams.analytics.workspace``; a key that is not a
    plain word (a dot, a space, a control character) is quoted, ``teams["a.b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key)}]"
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
    raw: Mapping[str, Any],
    key: str,
    path: str,
    default: T,
    problems: _Problems,
    *,
    minimum: float,
    maximum: float | None = None,
) -> T:
    if key not in raw:
        return default
    value = raw[key]
    want_int = isinstance(default, int)
    ok = isinstance(value, int) if want_int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        problems.add(_join(path, key), f"must be {'an integer' if want_int else 'a number'}")
        return default
    if isinstance(value, float) and not math.isfinite(value):  # (an int is: math.isinf
        problems.add(_join(path, key), "must be a finite number")  # overflows on 10**400)
        return default
    if value < minimum:
        problems.add(_join(path, key), f"must be at least {minimum:g}")
        return default
    if maximum is not None and value > maximum:
        problems.add(_join(path, key), f"must be at most {maximum:g}")
        return default
    return value  # type: ignore[no-any-return]


def _setting(
    raw: Mapping[str, Any], owner: object, key: str, path: str, problems: _Problems
) -> Any:
    """The number ``key`` of ``raw``, checked against its field's spec; ``owner`` is the
    dataclass instance whose value is the default."""
    spec = key_spec(type(owner), key)
    return _number(
        raw,
        key,
        path,
        getattr(owner, key),
        problems,
        minimum=-math.inf if spec.minimum is None else spec.minimum,
        maximum=spec.maximum,
    )


def _numbers(cls: type[T], raw: Mapping[str, Any], path: str, problems: _Problems) -> T:
    """A section whose keys are all numbers (timeouts, retry, shutdown, limits)."""
    default = cls()
    return cls(**{f.name: _setting(raw, default, f.name, path, problems) for f in yaml_fields(cls)})


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
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in SECRET_SOURCES:
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
            problems.add(path, f"environment variable {ref} is not set: export it, then start")
            return None
    else:
        try:
            value = Path(ref).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            where = "" if Path(ref).is_absolute() else f" (in {Path.cwd()})"
            problems.add(path, f"secret file {ref} does not exist{where}: create it")
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.add(path, f"cannot read secret file {ref}: {exc.__class__.__name__}")
            return None
    if not value:
        problems.add(path, f"{kind} {ref} is empty")
        return None
    return Secret(value)


def _looker(raw: object, problems: _Problems) -> LookerConfig | None:
    path = "looker"
    data = _mapping(
        raw, path, yaml_keys(LookerConfig), problems, required=required_keys(LookerConfig)
    )
    base_url = data.get("base_url")
    if "base_url" in data:
        base_url = _check_url(base_url, _join(path, "base_url"), problems)
    known = key_spec(LookerConfig, "api_versions").choices
    versions = data.get("api_versions", list(known))
    if not isinstance(versions, list) or not versions or not all(v in known for v in versions):
        problems.add(_join(path, "api_versions"), f"must be a non-empty list of {known}")
        versions = list(known)
    tpath = _join(path, "timeouts")
    traw = _mapping(data.get("timeouts"), tpath, yaml_keys(Timeouts), problems)
    timeouts = _numbers(Timeouts, traw, tpath, problems)
    rpath = _join(path, "retry")
    rraw = _mapping(
        data.get("retry"), rpath, yaml_keys(Retry) | REMOVED_RETRY_KEYS.keys(), problems
    )
    for old in sorted(REMOVED_RETRY_KEYS.keys() & rraw.keys()):
        problems.add(
            _join(rpath, old),
            f"was removed in 0.2: while Looker fails, attempts are spaced evenly by "
            f"{REMOVED_RETRY_KEYS[old]} (default 2 s) instead of a growing backoff, so a team "
            f"is served again within seconds of Looker healing; delete this key",
        )
    retry = _numbers(Retry, rraw, rpath, problems)
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
        max_connections=_setting(data, _LOOKER_DEFAULTS, "max_connections", path, problems),
        verify_tls=_bool(data, "verify_tls", path, True, problems),
        ca_file=ca_file,
    )


_LOOKER_DEFAULTS: Final = LookerConfig(base_url="https://looker.invalid")
"""Where ``_setting`` finds the defaults of ``looker`` (base_url has none)."""
_TEAM_DEFAULTS: Final = TeamConfig(
    name="-", workspace="dev", looker_client_id=None, looker_client_secret=None
)
"""Where ``_setting`` finds the defaults of a team (those of its keys that have one)."""


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
    if not _TEAM_NAME.fullmatch(name):
        problems.add(path, "team names use letters, digits, '_', '-', '.' (at most 64)")
    keys = yaml_keys(TeamConfig) | {"mode"}
    mode = raw.get("mode", "managed") if isinstance(raw, dict) else "managed"
    if mode == "passthrough":
        required = required_keys(TeamConfig, "passthrough")
        for f in yaml_fields(TeamConfig):
            if "passthrough" not in spec_of(f).modes and isinstance(raw, dict) and f.name in raw:
                problems.add(
                    _join(path, f.name),
                    "not used in passthrough mode (callers log in "
                    "with their own Looker credentials, listed in looker_client_ids)",
                )
    else:
        required = required_keys(TeamConfig, "managed")
        if mode != "managed":
            problems.add(_join(path, "mode"), f"must be one of {', '.join(TEAM_MODES)}")
        else:
            for f in yaml_fields(TeamConfig):
                if "managed" not in spec_of(f).modes and isinstance(raw, dict) and f.name in raw:
                    problems.add(_join(path, f.name), "only for mode: passthrough")
    data = _mapping(raw, path, keys, problems, required=required)
    workspace = (
        _choice(data, "workspace", path, key_spec(TeamConfig, "workspace").choices, problems)
        if "workspace" in data
        else None
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
    if mode != "passthrough" and "callers" in data and data["callers"] is None:
        # ``callers:`` left empty: refused like ``callers: []`` (it once dropped the team)
        problems.add(
            _join(path, "callers"), "must be a non-empty list of {client_id, client_secret}"
        )
    client_ids: tuple[str, ...] = ()
    if mode == "passthrough":
        client_ids = _client_ids(
            data.get("looker_client_ids"), _join(path, "looker_client_ids"), problems
        )
        callers = ()
    max_conc = _setting(data, _TEAM_DEFAULTS, "max_concurrency", path, problems)
    branch = None
    if data.get("git_branch") is not None:
        branch = _git_branch(data["git_branch"], _join(path, "git_branch"), problems)
        values = {"workspace": workspace, "git_branch": data["git_branch"]}
        _conflicts("git_branch", values, path, problems)
    allow_switch = _bool(data, "allow_branch_switch", path, False, problems)
    allow_sudo = _bool(data, "allow_sudo", path, False, problems)
    _conflicts("allow_sudo", {"allow_sudo": allow_sudo, "git_branch": branch}, path, problems)
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


def _conflicts(key: str, values: Mapping[str, object], path: str, problems: _Problems) -> None:
    """Report the :data:`TEAM_CONFLICTS` at ``key`` that ``values`` (checked ones) break."""
    for rule in TEAM_CONFLICTS:
        if rule.key == key and all(
            values.get(name) is not None if want is SET else values.get(name) == want
            for name, want in ((rule.key, rule.value), (rule.other, rule.other_value))
        ):
            problems.add(_join(path, rule.key), rule.message)


def _client_ids(raw: object, path: str, problems: _Problems) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add(path, "must be a non-empty list of Looker API client ids")
        return ()
    if not all(isinstance(v, str) and v.strip() for v in raw):
        problems.add(path, "every entry must be a non-empty string")
        return ()
    return tuple(raw)


def _git_branch(raw: object, path: str, problems: _Problems) -> GitBranch | None:
    keys = yaml_keys(GitBranch)
    data = _mapping(raw, path, keys, problems, required=required_keys(GitBranch))
    ok = data.keys() == keys
    for key in sorted(keys & data.keys()):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            problems.add(_join(path, key), "must be a non-empty string")
            ok = False
        elif key == "project" and not re.fullmatch(PROJECT_ID, value):
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
        data = _mapping(item, ipath, yaml_keys(Caller), problems, required=required_keys(Caller))
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
    data = _mapping(raw, "", yaml_keys(Config), problems, required=required_keys(Config))
    looker = _looker(data["looker"], problems) if "looker" in data else None
    key = None
    if "token_signing_key" in data:
        key = _secret(data["token_signing_key"], "token_signing_key", env, problems)
        if key is not None and len(key.reveal()) < 32:
            problems.add("token_signing_key", "must be at least 32 characters of random data")
            key = None
    listen = _listen(data.get("listen"), "listen", Listen(), problems)
    admin = _listen(data.get("admin"), "admin", Listen(port=9090), problems)
    sraw = _mapping(data.get("shutdown"), "shutdown", yaml_keys(Shutdown), problems)
    shutdown = _numbers(Shutdown, sraw, "shutdown", problems)
    limraw = _mapping(data.get("limits"), "limits", yaml_keys(Limits), problems)
    limits = _numbers(Limits, limraw, "limits", problems)
    ttl = _setting(data, _CONFIG_DEFAULTS, "caller_token_ttl_s", "", problems)
    log_level = _CONFIG_DEFAULTS.log_level
    if "log_level" in data:
        levels = key_spec(Config, "log_level").choices
        log_level = _choice(data, "log_level", "", levels, problems) or log_level
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
    tracing = _tracing(data.get("tracing"), env, problems)
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
        tracing=tracing,
        source=source,
    )


_CONFIG_DEFAULTS: Final = Config(looker=_LOOKER_DEFAULTS, teams={}, token_signing_key=Secret("-"))
"""Where ``_setting`` finds the defaults of the top-level keys."""


def _listen(raw: object, path: str, default: Listen, problems: _Problems) -> Listen:
    data = _mapping(raw, path, yaml_keys(Listen), problems)
    host = data.get("host", default.host)
    if not isinstance(host, str) or not host:
        problems.add(_join(path, "host"), "must be a host name or address")
        host = default.host
    tls = _tls(data["tls"], _join(path, "tls"), problems) if data.get("tls") is not None else None
    return Listen(host=host, port=_setting(data, default, "port", path, problems), tls=tls)


def _tls(raw: object, path: str, problems: _Problems) -> Tls | None:
    keys = yaml_keys(Tls)
    data = _mapping(raw, path, keys, problems, required=required_keys(Tls))
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


def _tracing(raw: object, env: Env, problems: _Problems) -> Tracing | None:
    """The ``tracing`` block, then the standard OTEL_* variables that turn tracing on or off and
    override its keys (an empty variable counts as unset, as OpenTelemetry's SDKs read them)."""
    path, default = "tracing", Tracing()
    data = {} if raw is None else _mapping(raw, path, yaml_keys(Tracing), problems)
    endpoint = default.endpoint
    if "endpoint" in data:
        endpoint = _otlp_url(data["endpoint"], _join(path, "endpoint"), problems) or endpoint
    ratio = float(_setting(data, default, "sampling_ratio", path, problems))
    service = data.get("service_name", default.service_name)
    if not isinstance(service, str) or not service.strip():
        problems.add(_join(path, "service_name"), "must be a non-empty string")
    var = {name: env.get(name, "").strip() for name in _OTEL_VARIABLES}
    wanted = raw is not None or var["OTEL_EXPORTER_OTLP_ENDPOINT"]
    wanted = wanted or var["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    exporter = var["OTEL_TRACES_EXPORTER"].lower()
    if not wanted or var["OTEL_SDK_DISABLED"].lower() == "true" or exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        problems.add("OTEL_TRACES_EXPORTER", f"must be otlp or none, got {exporter!r}")
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        if var[name] not in ("", "http/protobuf"):
            problems.add(name, f"must be http/protobuf (the proxy's exporter), got {var[name]!r}")
    if var["OTEL_EXPORTER_OTLP_ENDPOINT"]:
        base = var["OTEL_EXPORTER_OTLP_ENDPOINT"]
        endpoint = _otlp_url(base, "OTEL_EXPORTER_OTLP_ENDPOINT", problems) or endpoint
    url = endpoint.rstrip("/") + "/v1/traces"
    if var["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]:
        full = var["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        url = _otlp_url(full, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", problems) or url
    sampler = var["OTEL_TRACES_SAMPLER"].lower() or default.sampler
    if sampler not in TRACE_SAMPLERS:
        problems.add("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(TRACE_SAMPLERS)}")
    if var["OTEL_TRACES_SAMPLER_ARG"] and sampler.endswith("traceidratio"):
        try:
            ratio = float(var["OTEL_TRACES_SAMPLER_ARG"])
        except ValueError:
            ratio = math.nan
        if not 0 <= ratio <= 1:
            problems.add("OTEL_TRACES_SAMPLER_ARG", "must be a number from 0 to 1")
    return Tracing(
        endpoint=endpoint,
        sampling_ratio=ratio,
        service_name=var["OTEL_SERVICE_NAME"] or str(service),
        traces_url=url,
        sampler=sampler,
    )


_OTEL_VARIABLES: Final = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
)
"""The standard variables ``_tracing`` reads; the SDK itself reads the exporter's others
(OTEL_EXPORTER_OTLP_HEADERS, _CERTIFICATE, _TIMEOUT, _COMPRESSION, OTEL_BSP_*, ...)."""


def _otlp_url(value: object, path: str, problems: _Problems) -> str | None:
    match = re.fullmatch(OTLP_ENDPOINT, value) if isinstance(value, str) else None
    if match is None:
        problems.add(path, "must be an http(s) URL with a host, and no query or fragment")
        return None
    if match[1] is not None and int(match[1]) > 65535:
        problems.add(path, f"has an invalid port: {value!r}")
        return None
    return str(value)
