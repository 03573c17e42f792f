"""Validation: one pass over a parsed YAML document builds the frozen :class:`Config`.

``parse_config(document)`` checks every key against its field's type and
:class:`~workspace_proxy.fieldspec.Spec`, resolves secrets (``{env: NAME}`` or ``{file: PATH}``),
reads the ``OTEL_*`` variables that turn tracing on or off, and applies the rules that span keys
and teams. It returns a :class:`Config`, or raises one :class:`ConfigError` that lists every
problem found as ``path.to.key: message``.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from typing import Final
from urllib.parse import urlsplit

from workspace_proxy.config import (
    OTLP_ENDPOINT,
    REMOVED_RETRY_KEYS,
    TRACE_SAMPLERS,
    Config,
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
from workspace_proxy.fieldspec import key_spec, required_keys, yaml_keys
from workspace_proxy.teamchecks import cross_checks, parse_team
from workspace_proxy.valuechecks import (
    Env,
    Problems,
    boolean,
    choice,
    join,
    mapping,
    numbers,
    resolve_secret,
    setting,
)


def _looker(raw: object, problems: Problems) -> LookerConfig | None:
    path = "looker"
    data = mapping(
        raw, path, yaml_keys(LookerConfig), problems, required=required_keys(LookerConfig)
    )
    base_url = data.get("base_url")
    if "base_url" in data:
        base_url = _check_url(base_url, join(path, "base_url"), problems)
    known = key_spec(LookerConfig, "api_versions").choices
    versions = data.get("api_versions", list(known))
    if not isinstance(versions, list) or not versions or not all(v in known for v in versions):
        problems.add(join(path, "api_versions"), f"must be a non-empty list of {known}")
        versions = list(known)
    tpath = join(path, "timeouts")
    traw = mapping(data.get("timeouts"), tpath, yaml_keys(Timeouts), problems)
    timeouts = numbers(Timeouts, traw, tpath, problems)
    rpath = join(path, "retry")
    rraw = mapping(data.get("retry"), rpath, yaml_keys(Retry) | REMOVED_RETRY_KEYS.keys(), problems)
    for old in sorted(REMOVED_RETRY_KEYS.keys() & rraw.keys()):
        problems.add(
            join(rpath, old),
            f"was removed in 0.2: while Looker fails, attempts are spaced evenly by "
            f"{REMOVED_RETRY_KEYS[old]} (default 2 s) instead of a growing backoff, so a team "
            f"is served again within seconds of Looker healing; delete this key",
        )
    retry = numbers(Retry, rraw, rpath, problems)
    ca_file = data.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not _readable(ca_file)):
        problems.add(join(path, "ca_file"), f"cannot read CA bundle {ca_file!r}")
        ca_file = None
    elif ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, ValueError) as exc:
            problems.add(join(path, "ca_file"), f"is not a PEM CA bundle: {exc}")
            ca_file = None
    if not isinstance(base_url, str):
        return None
    return LookerConfig(
        base_url=base_url,
        api_versions=tuple(versions),
        timeouts=timeouts,
        retry=retry,
        max_connections=setting(data, _LOOKER_DEFAULTS, "max_connections", path, problems),
        verify_tls=boolean(data, "verify_tls", path, True, problems),
        ca_file=ca_file,
    )


_LOOKER_DEFAULTS: Final = LookerConfig(base_url="https://looker.invalid")
"""Where ``setting`` finds the defaults of ``looker`` (base_url has none)."""


def _readable(path: str) -> bool:
    try:
        return os.path.isfile(path) and os.access(path, os.R_OK)
    except ValueError:  # NUL in the path
        return False


def _check_url(value: object, path: str, problems: Problems) -> str | None:
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


def parse_config(raw: object, *, env: Env | None = None, source: str = "<memory>") -> Config:
    """Validate a parsed YAML document; raise one ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems = Problems()
    data = mapping(raw, "", yaml_keys(Config), problems, required=required_keys(Config))
    looker = _looker(data["looker"], problems) if "looker" in data else None
    key = None
    if "token_signing_key" in data:
        key = resolve_secret(data["token_signing_key"], "token_signing_key", env, problems)
        if key is not None and len(key.reveal()) < 32:
            problems.add("token_signing_key", "must be at least 32 characters of random data")
            key = None
    listen = _listen(data.get("listen"), "listen", Listen(), problems)
    admin = _listen(data.get("admin"), "admin", Listen(port=9090), problems)
    sraw = mapping(data.get("shutdown"), "shutdown", yaml_keys(Shutdown), problems)
    shutdown = numbers(Shutdown, sraw, "shutdown", problems)
    limraw = mapping(data.get("limits"), "limits", yaml_keys(Limits), problems)
    limits = numbers(Limits, limraw, "limits", problems)
    ttl = setting(data, _CONFIG_DEFAULTS, "caller_token_ttl_s", "", problems)
    log_level = _CONFIG_DEFAULTS.log_level
    if "log_level" in data:
        levels = key_spec(Config, "log_level").choices
        log_level = choice(data, "log_level", "", levels, problems) or log_level
    teams: dict[str, TeamConfig] = {}
    if "teams" in data:
        raw_teams = data["teams"]
        if not isinstance(raw_teams, dict) or not raw_teams:
            problems.add("teams", "must be a non-empty mapping of team name to team settings")
        else:
            for name, traw in raw_teams.items():
                team = parse_team(str(name), traw, env, problems)
                if team is not None:
                    teams[team.name] = team
            cross_checks(teams, problems)
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
"""Where ``setting`` finds the defaults of the top-level keys."""


def _listen(raw: object, path: str, default: Listen, problems: Problems) -> Listen:
    data = mapping(raw, path, yaml_keys(Listen), problems)
    host = data.get("host", default.host)
    if not isinstance(host, str) or not host:
        problems.add(join(path, "host"), "must be a host name or address")
        host = default.host
    tls = _tls(data["tls"], join(path, "tls"), problems) if data.get("tls") is not None else None
    return Listen(host=host, port=setting(data, default, "port", path, problems), tls=tls)


def _tls(raw: object, path: str, problems: Problems) -> Tls | None:
    keys = yaml_keys(Tls)
    data = mapping(raw, path, keys, problems, required=required_keys(Tls))
    files = {k: data.get(k) for k in sorted(keys)}
    for key, value in files.items():
        if key in data and (not isinstance(value, str) or not _readable(value)):
            problems.add(join(path, key), f"cannot read {value!r}")
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


def _tracing(raw: object, env: Env, problems: Problems) -> Tracing | None:
    """The ``tracing`` block, then the standard OTEL_* variables that turn tracing on or off and
    override its keys (an empty variable counts as unset, as OpenTelemetry's SDKs read them)."""
    path, default = "tracing", Tracing()
    data = {} if raw is None else mapping(raw, path, yaml_keys(Tracing), problems)
    endpoint = default.endpoint
    if "endpoint" in data:
        endpoint = _otlp_url(data["endpoint"], join(path, "endpoint"), problems) or endpoint
    ratio = float(setting(data, default, "sampling_ratio", path, problems))
    service = data.get("service_name", default.service_name)
    if not isinstance(service, str) or not service.strip():
        problems.add(join(path, "service_name"), "must be a non-empty string")
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


def _otlp_url(value: object, path: str, problems: Problems) -> str | None:
    match = re.fullmatch(OTLP_ENDPOINT, value) if isinstance(value, str) else None
    if match is None:
        problems.add(path, "must be an http(s) URL with a host, and no query or fragment")
        return None
    if match[1] is not None and int(match[1]) > 65535:
        problems.add(path, f"has an invalid port: {value!r}")
        return None
    return str(value)
