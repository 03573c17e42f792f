"""Configuration: example files, one pass reporting every problem, secrets never shown."""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from workspace_proxy.config import (
    Caller,
    Config,
    Limits,
    Listen,
    LookerConfig,
    Retry,
    Secret,
    Shutdown,
    TeamConfig,
    Timeouts,
    Tracing,
)
from workspace_proxy.errors import ConfigError
from workspace_proxy.fieldspec import yaml_fields
from workspace_proxy.loading import load_config, summary
from workspace_proxy.validation import parse_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

SIGNING_KEY = "signing-key-0123456789abcdef-0123456789abcdef"
ENV: dict[str, str] = {
    "WP_SIGNING_KEY": SIGNING_KEY,
    "A_LOOKER_ID": "a-looker-client-id",
    "A_LOOKER_SECRET": "a-looker-secret-Zq81",
    "A_CALLER_SECRET": "a-caller-secret-Wm42",
    "B_LOOKER_ID": "b-looker-client-id",
    "B_LOOKER_SECRET": "b-looker-secret-Pk93",
    "B_CALLER_SECRET": "b-caller-secret-Jx77",
}

settings_fast = settings(
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)


def team(prefix: str, workspace: str, caller: str) -> dict[str, Any]:
    """A valid team document whose secrets come from ``<PREFIX>_*`` variables."""
    return {
        "workspace": workspace,
        "looker_client_id": {"env": f"{prefix}_LOOKER_ID"},
        "looker_client_secret": {"env": f"{prefix}_LOOKER_SECRET"},
        "callers": [{"client_id": caller, "client_secret": {"env": f"{prefix}_CALLER_SECRET"}}],
    }


def valid_raw() -> dict[str, Any]:
    """A minimal valid document: analytics on dev, finance on production."""
    return {
        "looker": {"base_url": "https://example.cloud.looker.com"},
        "token_signing_key": {"env": "WP_SIGNING_KEY"},
        "teams": {
            "analytics": team("A", "dev", "analytics-caller"),
            "finance": team("B", "production", "finance-caller"),
        },
    }


def problems_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    """The problems parse_config reports for ``raw`` (fails if it validates)."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=ENV if env is None else env)
    return info.value.problems


def with_change(path: str, value: object) -> dict[str, Any]:
    """valid_raw() with the dotted ``path`` set to ``value`` (``DELETE`` removes it)."""
    raw = valid_raw()
    *parents, last = path.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


DELETE = object()


# --- the example files ------------------------------------------------------------------------


def references(node: object, kind: str) -> set[str]:
    """Every ``{kind: REF}`` secret reference in a parsed YAML document."""
    if isinstance(node, dict):
        if len(node) == 1 and kind in node and isinstance(node[kind], str):
            return {node[kind]}
        return set().union(*(references(v, kind) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(references(v, kind) for v in node))
    return set()


def header_comment(path: Path) -> str:
    """The comment block at the top of a config file."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture(name="example_env")
def _example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set every variable and create every secret file the example configs refer to."""
    monkeypatch.chdir(tmp_path)
    values: dict[str, str] = {}
    for path in CONFIG_FILES:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for name in references(raw, "env"):
            values[name] = f"value-of-{name}-0123456789abcdef0123456789abcdef"
            monkeypatch.setenv(name, values[name])
        for ref in references(raw, "file"):
            assert not Path(ref).is_absolute(), "example secret files are relative to the cwd"
            target = tmp_path / ref
            target.parent.mkdir(parents=True, exist_ok=True)
            values[ref] = f"content-of-{ref}-0123456789abcdef"
            target.write_text(values[ref] + "\n", encoding="utf-8")
    return values


def test_example_configs_exist() -> None:
    """config/ ships the reference, sidecar, shared-service and demo examples."""
    assert {p.name for p in CONFIG_FILES} >= {
        "example.yaml",
        "sidecar.yaml",
        "shared-service.yaml",
        "demo.yaml",
    }


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_example_config_loads(path: Path, example_env: dict[str, str]) -> None:
    """Every config/*.yaml validates once its variables and secret files exist."""
    config = load_config(path)
    assert config.source == str(path)
    assert config.teams
    for name, value in example_env.items():
        assert value not in repr(config), name
        assert value not in summary(config), name


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_example_config_documents_its_variables(path: Path) -> None:
    """Each example names every environment variable and secret file it uses in its header."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    header = header_comment(path)
    used = references(raw, "env") | references(raw, "file")
    assert used
    missing = {name for name in used if name not in header}
    assert not missing


def yaml_keys(node: object, prefix: str = "") -> set[str]:
    """Dotted key paths of a document; team names and list indexes become ``*``."""
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            name = "*" if prefix == "teams" else key
            path = f"{prefix}.{name}" if prefix else name
            keys.add(path)
            if not (isinstance(value, dict) and len(value) == 1 and {"env", "file"} & set(value)):
                keys |= yaml_keys(value, path)
    elif isinstance(node, list):
        for value in node:
            keys |= yaml_keys(value, f"{prefix}.*")
    return keys


def test_reference_example_sets_every_key() -> None:
    """config/example.yaml lists every configuration key there is."""
    raw = yaml.safe_load((CONFIG_DIR / "example.yaml").read_text(encoding="utf-8"))

    def names(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> set[str]:
        return {f"{prefix}{f.name}" for f in fields(cls) if f.name not in skip}

    expected = (
        names(Config, "", ("source",))
        | names(LookerConfig, "looker.")
        | names(Timeouts, "looker.timeouts.")
        | names(Retry, "looker.retry.")
        | names(Listen, "listen.")
        | names(Listen, "admin.")
        | names(Shutdown, "shutdown.")
        | names(Limits, "limits.")
        | {"teams.*"}
        | names(TeamConfig, "teams.*.", ("name", "looker_client_ids"))
        | names(Caller, "teams.*.callers.*.")
    )
    assert yaml_keys(raw) - {"teams.*.callers.*"} == expected
    # Tracing is off in the reference: its keys are shown commented out, each with its default.
    text = (CONFIG_DIR / "example.yaml").read_text(encoding="utf-8")
    for f in yaml_fields(Tracing):
        assert re.search(rf"^#   {f.name}: {re.escape(str(f.default))} +# default", text, re.M)
    passthrough = yaml.safe_load((CONFIG_DIR / "passthrough.yaml").read_text(encoding="utf-8"))
    assert {"teams.*.mode", "teams.*.looker_client_ids"} <= yaml_keys(passthrough)


def test_reference_example_shows_the_defaults(example_env: dict[str, str]) -> None:
    """The values in config/example.yaml are the defaults its comments claim."""
    config = load_config(CONFIG_DIR / "example.yaml")
    assert config.listen == Listen()
    assert config.admin == Listen(port=9090)
    assert config.shutdown == Shutdown()
    assert config.limits == Limits()
    assert config.looker.timeouts == Timeouts()
    assert config.looker.retry == Retry()
    assert (config.caller_token_ttl_s, config.log_level) == (3600, "info")
    looker = config.looker
    assert (looker.api_versions, looker.max_connections) == (("4.0", "3.1"), 1000)
    assert (looker.verify_tls, looker.ca_file) == (True, None)
    assert {t.name: t.max_concurrency for t in config.teams.values()} == {
        "analytics": 256,
        "finance": 256,
    }


def test_reference_example_reads_a_secret_from_a_file(example_env: dict[str, str]) -> None:
    """The finance team's Looker secret in example.yaml comes from its file, stripped."""
    config = load_config(CONFIG_DIR / "example.yaml")
    secret = config.teams["finance"].looker_client_secret.reveal()
    assert secret == example_env["secrets/finance-looker-client-secret"]
    assert config.teams["analytics"].workspace == "dev"
    assert config.teams["finance"].workspace == "production"


def test_demo_config_matches_make_demo(example_env: dict[str, str]) -> None:
    """demo.yaml points at the emulator and uses the documented variables and callers."""
    config = load_config(CONFIG_DIR / "demo.yaml")
    assert config.looker.base_url == "http://127.0.0.1:19999"
    assert (config.listen.port, config.admin.port) == (8080, 9090)
    assert config.token_signing_key.reveal() == example_env["WP_SIGNING_KEY"]
    for name, workspace, prefix in [
        ("analytics", "dev", "ANALYTICS"),
        ("finance", "production", "FINANCE"),
    ]:
        t = config.teams[name]
        assert t.workspace == workspace
        assert t.looker_client_id.reveal() == f"{name}-client-id"  # the emulator's user
        assert t.looker_client_secret.reveal() == example_env[f"{prefix}_LOOKER_CLIENT_SECRET"]
        assert [c.client_id for c in t.callers] == [f"{name}-caller"]
        assert t.callers[0].client_secret.reveal() == example_env[f"{prefix}_CALLER_SECRET"]


def test_demo_config_equals_the_embedded_demo_config() -> None:
    """config/demo.yaml and the copy `workspace-proxy demo` embeds describe the same proxy."""
    from workspace_proxy.demo import DEMO_ENV

    embedded = Path(__file__).resolve().parent.parent / "workspace_proxy" / "demo.yaml"
    ours = load_config(CONFIG_DIR / "demo.yaml", env=DEMO_ENV)
    theirs = load_config(embedded, env=DEMO_ENV)
    assert replace(ours, source="") == replace(theirs, source="")


def test_shared_service_config_listens_everywhere(example_env: dict[str, str]) -> None:
    """shared-service.yaml has three teams, binds 0.0.0.0 and raises the limits."""
    config = load_config(CONFIG_DIR / "shared-service.yaml")
    assert len(config.teams) == 3
    assert config.listen.host == "0.0.0.0"
    assert config.limits.max_request_body_bytes > Limits().max_request_body_bytes
    assert config.looker.max_connections > LookerConfig(base_url="https://x").max_connections


def test_sidecar_config_is_minimal(example_env: dict[str, str]) -> None:
    """sidecar.yaml has one team and leaves the rest at its defaults."""
    config = load_config(CONFIG_DIR / "sidecar.yaml")
    assert len(config.teams) == 1
    assert config.listen == Listen()


# --- one pass, every problem --------------------------------------------------------------------


def test_valid_document_parses() -> None:
    """The baseline document used by these tests is valid and resolves its secrets."""
    config = parse_config(valid_raw(), env=ENV)
    assert config.looker.base_url == "https://example.cloud.looker.com"
    assert config.teams["analytics"].looker_client_secret.reveal() == ENV["A_LOOKER_SECRET"]
    assert config.teams["finance"].callers[0].client_id == "finance-caller"
    assert config.token_signing_key.reveal() == SIGNING_KEY


def test_every_problem_is_reported_in_one_error() -> None:
    """A config with many mistakes reports all of them, each with its path, in one ConfigError."""
    raw = valid_raw()
    raw["colour"] = "blue"
    raw["looker"] = {
        "base_url": "example.cloud.looker.com",
        "timeouts": {"read_s": "slow"},
        "retri": {},
    }
    raw["listen"] = {"port": 70000}
    raw["admin"] = {"port": -1}
    raw["caller_token_ttl_s"] = 10
    raw["log_level"] = "loud"
    raw["limits"] = {"max_request_body_bytes": 0}
    raw["shutdown"] = {"grace_s": "soon"}
    raw["token_signing_key"] = {"env": "SHORT_KEY"}
    raw["teams"]["analytics"]["workspace"] = "staging"
    raw["teams"]["analytics"]["callers"][0]["client_secret"] = "plain-text-secret"
    raw["teams"]["finance"]["looker_client_secret"] = {"env": "MISSING_SECRET"}
    raw["teams"]["finance"]["colour"] = "green"
    raw["tracing"] = {"sampling_ratio": 2}
    env = {**ENV, "SHORT_KEY": "too-short"}

    problems = problems_of(raw, env)

    expected = [
        "colour: unknown key (allowed: admin, caller_token_ttl_s, limits, listen, log_level, "
        "looker, shutdown, teams, token_signing_key, tracing)",
        "looker.retri: unknown key (allowed: api_versions, base_url, ca_file, max_connections, "
        "retry, timeouts, verify_tls)",
        "looker.base_url: must be an http(s) URL with a host, got 'example.cloud.looker.com'",
        "looker.timeouts.read_s: must be a number",
        "listen.port: must be at most 65535",
        "admin.port: must be at least 0",
        "caller_token_ttl_s: must be at least 120",
        "log_level: must be one of debug, info, warning, error",
        "limits.max_request_body_bytes: must be at least 1",
        "shutdown.grace_s: must be a number",
        "token_signing_key: must be at least 32 characters of random data",
        "teams.analytics.workspace: must be one of dev, production",
        "teams.analytics.callers[0].client_secret: must be {env: VARIABLE} or "
        "{file: /path/to/secret}",
        "teams.finance.looker_client_secret: environment variable MISSING_SECRET is not set: "
        "export it, then start",
        "teams.finance.colour: unknown key (allowed: allow_branch_switch, allow_sudo, callers, "
        "git_branch, "
        "looker_client_id, looker_client_ids, looker_client_secret, max_concurrency, mode, "
        "workspace)",
        "tracing.sampling_ratio: must be at most 1",
    ]
    for message in expected:
        assert message in problems
    assert len(problems) == len(expected), problems
    assert all(p in str(ConfigError(problems)) for p in problems)
    assert "plain-text-secret" not in "\n".join(problems)
    assert "too-short" not in "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("surprise", 1, "surprise: unknown key"),
        ("looker.surprise", 1, "looker.surprise: unknown key"),
        ("looker.timeouts.connect", 1, "looker.timeouts.connect: unknown key"),
        ("looker.retry.max_s", 1, "looker.retry.max_s: unknown key"),
        ("listen.address", "::", "listen.address: unknown key"),
        ("shutdown.drain", 1, "shutdown.drain: unknown key"),
        ("limits.body", 1, "limits.body: unknown key"),
        ("teams.analytics.team_workspace", "dev", "teams.analytics.team_workspace: unknown key"),
        (
            "teams.analytics.callers.0.name",
            "x",
            "teams.analytics.callers[0].name: unknown key",
        ),
    ],
)
def test_unknown_keys_are_reported_with_their_path(path: str, value: object, problem: str) -> None:
    """Unknown keys anywhere are errors naming the full path and the allowed keys."""
    problems = problems_of(with_change(path, value))
    assert len(problems) == 1
    assert problems[0].startswith(problem + " (allowed: ")


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("listen", "8080", "listen: must be a mapping, got a string"),
        ("listen.port", "8080", "listen.port: must be an integer"),
        ("listen.port", 8080.5, "listen.port: must be an integer"),
        ("listen.port", True, "listen.port: must be an integer"),
        ("listen.host", "", "listen.host: must be a host name or address"),
        ("listen.host", 127, "listen.host: must be a host name or address"),
        ("looker", ["https://x"], "looker: must be a mapping, got a list"),
        ("looker.timeouts", 30, "looker.timeouts: must be a mapping, got int"),
        ("looker.timeouts.connect_s", "10s", "looker.timeouts.connect_s: must be a number"),
        ("looker.timeouts.connect_s", 0, "looker.timeouts.connect_s: must be at least 0.1"),
        ("looker.retry.deadline_s", False, "looker.retry.deadline_s: must be a number"),
        ("looker.verify_tls", "yes", "looker.verify_tls: must be true or false"),
        ("looker.max_connections", 0, "looker.max_connections: must be at least 1"),
        ("looker.max_connections", 1.5, "looker.max_connections: must be an integer"),
        (
            "looker.api_versions",
            "4.0",
            "looker.api_versions: must be a non-empty list of ('4.0', '3.1')",
        ),
        (
            "looker.api_versions",
            ["4.0", "5.0"],
            "looker.api_versions: must be a non-empty list of ('4.0', '3.1')",
        ),
        (
            "looker.api_versions",
            [],
            "looker.api_versions: must be a non-empty list of ('4.0', '3.1')",
        ),
        ("looker.ca_file", "/nonexistent/ca.pem", "looker.ca_file: cannot read CA bundle"),
        ("caller_token_ttl_s", "1h", "caller_token_ttl_s: must be an integer"),
        ("log_level", "INFO", "log_level: must be one of debug, info, warning, error"),
        ("limits.replay_buffer_bytes", -1, "limits.replay_buffer_bytes: must be at least 0"),
        ("teams", [], "teams: must be a non-empty mapping of team name to team settings"),
        ("teams", {}, "teams: must be a non-empty mapping of team name to team settings"),
        ("teams.analytics", "dev", "teams.analytics: must be a mapping, got a string"),
        ("teams.analytics.workspace", "Dev", "teams.analytics.workspace: must be one of"),
        ("teams.analytics.workspace", DELETE, "teams.analytics.workspace: required"),
        ("teams.analytics.callers", [], "teams.analytics.callers: must be a non-empty list"),
        ("teams.analytics.callers", {}, "teams.analytics.callers: must be a non-empty list"),
        ("teams.analytics.callers", DELETE, "teams.analytics.callers: required"),
        ("teams.analytics.callers.0", "me", "teams.analytics.callers[0]: must be a mapping"),
        (
            "teams.analytics.callers.0.client_id",
            " ",
            "teams.analytics.callers[0].client_id: must be a non-empty string",
        ),
        (
            "teams.analytics.callers.0.client_id",
            42,
            "teams.analytics.callers[0].client_id: must be a non-empty string",
        ),
        (
            "teams.analytics.callers.0.client_secret",
            DELETE,
            "teams.analytics.callers[0].client_secret: required",
        ),
        ("teams.analytics.max_concurrency", 0, "teams.analytics.max_concurrency: must be at least"),
        (
            "teams.analytics.looker_client_secret",
            {"env": "A_LOOKER_SECRET", "file": "/x"},
            "teams.analytics.looker_client_secret: must be {env: VARIABLE} or {file: ",
        ),
        (
            "teams.analytics.looker_client_secret",
            {"vault": "kv/looker"},
            "teams.analytics.looker_client_secret: must be {env: VARIABLE} or {file: ",
        ),
        (
            "teams.analytics.looker_client_secret",
            {"env": ""},
            "teams.analytics.looker_client_secret.env: must be a non-empty string",
        ),
        (
            "teams.analytics.looker_client_id",
            "",
            "teams.analytics.looker_client_id: must not be empty",
        ),
        (
            "token_signing_key",
            "a-plain-key-that-is-long-enough-0123456789",
            "token_signing_key: must be {env: VARIABLE} or {file: ",
        ),
    ],
)
def test_wrong_values_are_reported_with_their_path(path: str, value: object, problem: str) -> None:
    """A wrong type or out-of-range value is one problem that names its path."""
    problems = problems_of(with_change(path, value))
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


@pytest.mark.parametrize(
    "path", ["looker.timeouts.connect_s", "looker.retry.deadline_s", "shutdown.grace_s"]
)
def test_nan_durations_are_refused(path: str) -> None:
    """A NaN duration (YAML .nan) is a problem, like any value below the minimum."""
    problems = problems_of(with_change(path, float("nan")))
    assert problems[0].startswith(f"{path}: ")


def test_bad_team_name_is_reported() -> None:
    """Team names are restricted to a safe character set."""
    raw = valid_raw()
    raw["teams"]["bad name!"] = raw["teams"].pop("finance")
    assert problems_of(raw) == [
        "teams[\"bad name!\"]: team names use letters, digits, '_', '-', '.' (at most 64)"
    ]


@pytest.mark.parametrize("name", ["finance\n", "finance\r", "fin\nance", "\u00e9t\u00e9"])
def test_team_names_with_control_or_non_ascii_characters_are_refused(name: str) -> None:
    """A trailing newline does not slip past the name rule (a ``$`` anchor would let it), and
    the problem shows the name quoted: the control character never reaches a terminal raw."""
    raw = valid_raw()
    raw["teams"][name] = raw["teams"].pop("finance")
    (problem,) = problems_of(raw)
    assert problem.startswith(f"teams[{json.dumps(name)}]: team names use letters")
    assert "\n" not in problem
    assert "\r" not in problem


def test_dotted_team_names_are_accepted_and_quoted_in_problems() -> None:
    """A dot is allowed in a team name; its problems quote the name so the path stays readable."""
    raw = valid_raw()
    raw["teams"]["fin.ance"] = raw["teams"].pop("finance")
    raw["teams"]["fin.ance"]["workspace"] = "staging"
    (problem,) = problems_of(raw)
    assert problem.startswith('teams["fin.ance"].workspace: ')


@pytest.mark.parametrize(
    "path", ["looker.timeouts.read_s", "limits.body_timeout_s", "looker.retry.interval_s"]
)
@pytest.mark.parametrize("value", [10**400, 1e300, 86400.5])
def test_absurd_durations_are_refused_not_crashed_on(path: str, value: float) -> None:
    """A duration beyond a day is a typo: refused by name (an int too large for a float used to
    crash the check with OverflowError; an event loop refuses a 1e300 s timer)."""
    assert problems_of(with_change(path, value)) == [f"{path}: must be at most 86400"]


def test_huge_integers_where_no_maximum_applies_are_accepted() -> None:
    """Byte limits have no upper bound: a huge one means 'no practical limit', not a crash."""
    config = parse_config(with_change("limits.max_request_body_bytes", 10**400), env=ENV)
    assert config.limits.max_request_body_bytes == 10**400


@pytest.mark.parametrize(
    "raw",
    [None, {}, []],
    ids=["empty-file", "empty-mapping", "list"],
)
def test_empty_or_non_mapping_document_is_reported(raw: object) -> None:
    """An empty or non-mapping document names what is missing rather than crashing."""
    problems = problems_of(raw)
    if isinstance(raw, list):
        assert problems == ["<top level>: must be a mapping, got a list"]
    else:
        assert problems == ["looker: required", "teams: required", "token_signing_key: required"]


def test_missing_env_var_names_it_and_shows_no_secret() -> None:
    """A missing variable is named; the values of the variables that are set never appear."""
    env = {k: v for k, v in ENV.items() if k != "B_LOOKER_SECRET"}
    raw = valid_raw()
    raw["teams"]["analytics"]["looker_client_secret"] = {"env": "NOT_SET_ANYWHERE"}
    raw["looker"]["base_url"] = "ftp://x"  # another problem, so secrets resolved so far exist
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    text = str(info.value) + repr(info.value) + "\n".join(info.value.problems)
    assert (
        "teams.finance.looker_client_secret: environment variable B_LOOKER_SECRET is not set: "
        "export it, then start" in (info.value.problems)
    )
    assert "environment variable NOT_SET_ANYWHERE is not set" in text
    for value in env.values():
        assert value not in text


def test_empty_env_var_is_reported() -> None:
    """A variable set to the empty string is not a secret."""
    problems = problems_of(valid_raw(), {**ENV, "A_CALLER_SECRET": ""})
    assert problems == ["teams.analytics.callers[0].client_secret: env A_CALLER_SECRET is empty"]


# --- secret files ---------------------------------------------------------------------------------


def file_secret_problems(path: Path) -> list[str]:
    raw = with_change("teams.finance.looker_client_secret", {"file": str(path)})
    return problems_of(raw)


def test_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    """A secret file's content, without surrounding whitespace, is the secret."""
    secret = tmp_path / "secret"
    secret.write_text("  file-secret-value\n", encoding="utf-8")
    raw = with_change("teams.finance.looker_client_secret", {"file": str(secret)})
    config = parse_config(raw, env=ENV)
    assert config.teams["finance"].looker_client_secret.reveal() == "file-secret-value"


def test_missing_secret_file_is_reported(tmp_path: Path) -> None:
    """A secret file that does not exist is named, with what to do."""
    missing = tmp_path / "nope"
    assert file_secret_problems(missing) == [
        f"teams.finance.looker_client_secret: secret file {missing} does not exist: create it"
    ]


def test_missing_relative_secret_file_names_the_directory_it_is_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative secret file path is read from the working directory, which is named."""
    monkeypatch.chdir(tmp_path)
    assert problems_of(with_change("token_signing_key", {"file": "secrets/key"})) == [
        f"token_signing_key: secret file secrets/key does not exist (in {tmp_path}): create it"
    ]


def test_directory_as_secret_file_is_reported(tmp_path: Path) -> None:
    """A directory where a secret file is expected is reported, not raised."""
    assert file_secret_problems(tmp_path) == [
        f"teams.finance.looker_client_secret: cannot read secret file {tmp_path}: IsADirectoryError"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_secret_file_is_reported(tmp_path: Path) -> None:
    """A secret file without read permission is reported as PermissionError."""
    secret = tmp_path / "secret"
    secret.write_text("value", encoding="utf-8")
    secret.chmod(0)
    try:
        assert file_secret_problems(secret) == [
            f"teams.finance.looker_client_secret: cannot read secret file {secret}: PermissionError"
        ]
    finally:
        secret.chmod(0o600)


def test_non_utf8_secret_file_is_reported(tmp_path: Path) -> None:
    """Binary content in a secret file is reported, not raised."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xff\xfe\x00secret")
    assert file_secret_problems(secret) == [
        f"teams.finance.looker_client_secret: cannot read secret file {secret}: UnicodeDecodeError"
    ]


@pytest.mark.parametrize("content", ["", " \n\t\n"], ids=["empty", "whitespace"])
def test_empty_secret_file_is_reported(tmp_path: Path, content: str) -> None:
    """An empty (or whitespace-only) secret file is an error, not an empty secret."""
    secret = tmp_path / "secret"
    secret.write_text(content, encoding="utf-8")
    assert file_secret_problems(secret) == [
        f"teams.finance.looker_client_secret: file {secret} is empty"
    ]


def test_secret_file_path_with_nul_is_a_config_error() -> None:
    """A secret file path containing NUL is reported as a problem, not a ValueError."""
    problems = problems_of(with_change("token_signing_key", {"file": "/run/secrets/key\x00"}))
    assert problems[0].startswith("token_signing_key: cannot read secret file")


# --- cross-team rules -------------------------------------------------------------------------


def test_duplicate_caller_ids_across_teams_are_refused() -> None:
    """One caller id can belong to only one team; the second use is named."""
    raw = with_change("teams.finance.callers.0.client_id", "analytics-caller")
    assert problems_of(raw) == [
        "teams.finance.callers[0].client_id: duplicate caller id 'analytics-caller' "
        "(first used in team 'analytics')"
    ]


def test_duplicate_caller_ids_within_a_team_are_refused() -> None:
    """The same caller id twice in one team is refused too."""
    raw = valid_raw()
    callers = raw["teams"]["analytics"]["callers"]
    callers.append(copy.deepcopy(callers[0]))
    assert problems_of(raw) == [
        "teams.analytics.callers[1].client_id: duplicate caller id 'analytics-caller' "
        "(first used in team 'analytics')"
    ]


def test_shared_looker_user_with_different_workspaces_is_refused() -> None:
    """Two teams on one Looker API user cannot be pinned to different workspaces."""
    raw = with_change("teams.finance.looker_client_id", {"env": "A_LOOKER_ID"})
    problems = problems_of(raw)
    assert len(problems) == 1
    assert problems[0].startswith(
        "teams.finance.looker_client_id: same Looker API user as team 'analytics' but a "
        "different workspace (production vs dev)"
    )
    assert ENV["A_LOOKER_ID"] not in problems[0]


def test_shared_looker_user_with_same_workspace_is_allowed() -> None:
    """Two teams on one Looker API user and the same workspace are fine."""
    raw = with_change("teams.finance.looker_client_id", {"env": "A_LOOKER_ID"})
    raw["teams"]["finance"]["workspace"] = "dev"
    config = parse_config(raw, env=ENV)
    assert config.teams["analytics"].looker_client_id == config.teams["finance"].looker_client_id


# --- base_url and ports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("example.cloud.looker.com", "must be an http(s) URL with a host"),
        ("example.cloud.looker.com:19999", "must be an http(s) URL with a host"),
        ("ftp://example.cloud.looker.com", "must be an http(s) URL with a host"),
        ("https://", "must be an http(s) URL with a host"),
        ("https:///api/4.0", "must be an http(s) URL with a host"),
        ("https://example.cloud.looker.com/api/4.0", "must be the root of the Looker API host"),
        ("https://example.cloud.looker.com/api/4.0/", "must be the root of the Looker API host"),
        ("https://example.cloud.looker.com/looker", "must be the root of the Looker API host"),
        ("https://example.cloud.looker.com?x=1", "must be the root of the Looker API host"),
        ("https://example.cloud.looker.com#top", "must be the root of the Looker API host"),
        ("https://example.cloud.looker.com:99999", "has an invalid port"),
        ("https://example.cloud.looker.com:port", "has an invalid port"),
        (19999, "must be a URL string"),
        (None, "must be a URL string"),
    ],
)
def test_bad_base_url_is_refused(url: object, problem: str) -> None:
    """base_url must be an http(s) URL of the API host's root."""
    problems = problems_of(with_change("looker.base_url", url))
    assert len(problems) == 1
    assert problems[0].startswith(f"looker.base_url: {problem}")


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://example.cloud.looker.com", "https://example.cloud.looker.com"),
        ("https://example.cloud.looker.com/", "https://example.cloud.looker.com"),
        ("https://looker.internal:19999", "https://looker.internal:19999"),
        ("http://127.0.0.1:19999", "http://127.0.0.1:19999"),
        ("http://[::1]:19999", "http://[::1]:19999"),
    ],
)
def test_good_base_url_is_normalised(url: str, normalised: str) -> None:
    """A valid base_url loses a trailing slash and keeps scheme, host and port."""
    config = parse_config(with_change("looker.base_url", url), env=ENV)
    assert config.looker.base_url == normalised


def test_base_url_missing_is_required() -> None:
    """looker.base_url is required."""
    assert problems_of(with_change("looker.base_url", DELETE)) == ["looker.base_url: required"]


@pytest.mark.parametrize("url", ["http://[::1", "https://[not-an-address]"])
def test_malformed_ipv6_base_url_is_a_config_error(url: str) -> None:
    """A base_url with a broken IPv6 literal is a reported problem."""
    problems = problems_of(with_change("looker.base_url", url))
    assert problems[0].startswith("looker.base_url: ")


def test_ca_file_with_nul_is_a_config_error() -> None:
    """A ca_file path containing NUL is a reported problem."""
    problems = problems_of(with_change("looker.ca_file", "/etc/ssl/ca\x00.pem"))
    assert problems[0].startswith("looker.ca_file: cannot read CA bundle")


@pytest.mark.parametrize(
    ("section", "port", "problem"),
    [
        ("listen", 65536, "listen.port: must be at most 65535"),
        ("listen", 70000, "listen.port: must be at most 65535"),
        ("listen", -1, "listen.port: must be at least 0"),
        ("admin", 65536, "admin.port: must be at most 65535"),
        ("admin", -8080, "admin.port: must be at least 0"),
    ],
)
def test_port_out_of_range_is_refused(section: str, port: int, problem: str) -> None:
    """Ports outside 0..65535 are refused."""
    assert problems_of(with_change(f"{section}.port", port)) == [problem]


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_bounds_are_accepted(port: int) -> None:
    """0 (any free port), 1 and 65535 are valid ports."""
    config = parse_config(with_change("listen.port", port), env=ENV)
    assert config.listen.port == port


@pytest.mark.parametrize("length", [0, 1, 31])
def test_short_signing_key_is_refused(length: int) -> None:
    """The signing key must have at least 32 characters; the key itself is never shown."""
    key = "k" * length
    problems = problems_of(valid_raw(), {**ENV, "WP_SIGNING_KEY": key})
    expected = (
        "token_signing_key: env WP_SIGNING_KEY is empty"
        if length == 0
        else "token_signing_key: must be at least 32 characters of random data"
    )
    assert problems == [expected]


def test_signing_key_of_32_characters_is_accepted() -> None:
    """A 32-character signing key is long enough."""
    config = parse_config(valid_raw(), env={**ENV, "WP_SIGNING_KEY": "k" * 32})
    assert config.token_signing_key.reveal() == "k" * 32


# --- YAML files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("looker:\n  base_url: https://x\n teams: oops\n", "line 3, column 2"),
        ("teams: [1, 2\n", "line 2, column 1"),
        ("token_signing_key: {env: hunter2-secret\nteams: x\n", "line 2, column 6"),
        ("log_level:\tinfo\n", "line 1, column 11"),
        ("log_level: info\nlog_level: debug\n", "line 2, column 1"),
        ("teams:\n  a: {}\n  b: {}\n  a: {}\n", "line 4, column 3"),
    ],
)
def test_broken_yaml_reports_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    """Broken YAML is one problem with file, line and column, without a traceback or the text."""
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: invalid YAML at {where}: ")
    assert "Traceback" not in str(info.value)
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_duplicate_key_names_the_key(tmp_path: Path) -> None:
    """A key written twice is refused, named (YAML alone keeps the last silently)."""
    path = tmp_path / "twice.yaml"
    path.write_text("teams:\n  analytics: {}\n  analytics: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.problems == [
        f"{path}: invalid YAML at line 3, column 3: duplicate key 'analytics'"
    ]


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """``<<: *defaults`` then a key of one's own is an override, not a duplicate."""
    raw = valid_raw()
    base = "x-base: &base\n  workspace: production\nteams:\n"
    text = yaml.safe_dump(raw).replace("teams:\n", base)
    text = text.replace("  analytics:\n", "  analytics:\n    <<: *base\n", 1)
    path = tmp_path / "merged.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:  # x-base is an unknown key: the only problem
        load_config(path, env=ENV)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: x-base: unknown key")


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    """A config file that does not exist is one problem naming it."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.problems == [f"{path}: cannot read config file: FileNotFoundError"]


def test_non_utf8_config_file_is_reported(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is one problem naming it."""
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"looker: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.problems == [f"{path}: cannot read config file: UnicodeDecodeError"]


def test_file_problems_are_prefixed_with_the_file(tmp_path: Path) -> None:
    """Validation problems from a file name the file first, then the path inside it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(with_change("log_level", "loud")), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.problems == [f"{path}: log_level: must be one of debug, info, warning, error"]


def test_load_config_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without env=, load_config resolves {env: NAME} from os.environ."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(valid_raw()), encoding="utf-8")
    config = load_config(path)
    assert config.teams["finance"].looker_client_secret.reveal() == ENV["B_LOOKER_SECRET"]
    assert config.source == str(path)


# --- secrets never shown --------------------------------------------------------------------------

DISTINCT_SECRETS = {
    "WP_SIGNING_KEY": "SIGNKEY-e5b1c0ffee-0123456789abcdef0123456789",
    "A_LOOKER_ID": "LOOKERIDA-7f3a91",
    "A_LOOKER_SECRET": "LOOKERSECA-44d2e8",
    "A_CALLER_SECRET": "CALLERSECA-9be3c1",
    "B_LOOKER_ID": "LOOKERIDB-0a77f5",
    "B_LOOKER_SECRET": "LOOKERSECB-c1d9a2",
    "B_CALLER_SECRET": "CALLERSECB-5e6f70",
}


def test_secret_repr_and_str_hide_the_value() -> None:
    """repr(), str() and f-strings of a Secret never contain its value; reveal() does."""
    secret = Secret("hunter2-very-secret")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", format(secret, "")):
        assert "hunter2" not in shown
        assert "***" in shown
    assert secret.reveal() == "hunter2-very-secret"


def test_secret_compares_by_value() -> None:
    """Secrets with equal values are equal and hash alike; different values differ."""
    assert Secret("a") == Secret("a")
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


def test_config_repr_contains_no_secret(tmp_path: Path) -> None:
    """repr(config) shows the structure but none of the secret values, whatever their source."""
    secret_file = tmp_path / "caller-secret"
    secret_file.write_text("FILESECRET-3c2b1a\n", encoding="utf-8")
    raw = valid_raw()
    raw["teams"]["finance"]["callers"].append(
        {"client_id": "finance-batch", "client_secret": {"file": str(secret_file)}}
    )
    config = parse_config(raw, env=DISTINCT_SECRETS)
    shown = repr(config) + str(config) + repr(config.teams) + repr(config.looker)
    assert "analytics-caller" in shown
    assert "finance-batch" in shown
    for value in [*DISTINCT_SECRETS.values(), "FILESECRET-3c2b1a"]:
        assert value not in shown
    assert config.teams["finance"].callers[1].client_secret.reveal() == "FILESECRET-3c2b1a"


def test_summary_lists_teams_and_workspaces_without_secrets() -> None:
    """summary() names every team, its workspace and callers, and no secret."""
    raw = valid_raw()
    raw["teams"]["marketing"] = team("A", "dev", "marketing-caller")
    raw["teams"]["marketing"]["looker_client_id"] = "marketing-plain-id"
    text = summary(parse_config(raw, env=DISTINCT_SECRETS, source="prod.yaml"))
    assert "config prod.yaml: OK" in text
    assert "https://example.cloud.looker.com" in text
    assert "team analytics: workspace dev; callers: analytics-caller" in text
    assert "team finance: workspace production; callers: finance-caller" in text
    assert "team marketing: workspace dev; callers: marketing-caller" in text
    for value in [*DISTINCT_SECRETS.values(), "marketing-plain-id"]:
        assert value not in text


# --- property tests -------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
ANY_KEY = st.text(max_size=12) | st.integers() | st.booleans() | st.none()


def parse_outcome(doc: object) -> Config | ConfigError:
    """parse_config's result or its ConfigError; any other exception propagates (and fails)."""
    try:
        return parse_config(doc, env=ENV)
    except ConfigError as exc:
        return exc


def json_like(keys: st.SearchStrategy[Any], leaves: st.SearchStrategy[Any]) -> Any:
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5),
        max_leaves=25,
    )


@settings_fast
@given(json_like(ANY_KEY, SCALARS))
def test_arbitrary_documents_give_config_or_config_error(doc: object) -> None:
    """Any JSON/YAML-like document yields a Config or a ConfigError, never another exception."""
    result = parse_outcome(doc)
    if isinstance(result, ConfigError):
        assert result.problems
        assert all(isinstance(p, str) and p for p in result.problems)
    else:
        assert isinstance(result, Config)


SCHEMA_KEYS = sorted(
    {
        f.name
        for cls in (Config, LookerConfig, Timeouts, Retry, Listen, Shutdown, Limits, TeamConfig)
        for f in fields(cls)
    }
    | {"client_id", "client_secret", "env", "file", "analytics", "finance"}
)
SCHEMA_STRINGS = [
    "https://example.cloud.looker.com",
    "http://127.0.0.1:19999",
    "https://x/api/4.0",
    "ftp://x",
    "dev",
    "production",
    "4.0",
    "3.1",
    "info",
    *ENV,
    "/nonexistent/secret",
    "/",
    "",
]
# Any text, NUL and "[" included (they once crashed secret-file, ca_file and base_url parsing).
SAFE_TEXT = st.text(max_size=20)
SCHEMA_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(SCHEMA_STRINGS)
    | SAFE_TEXT
)
SCHEMA_KEY = st.sampled_from(SCHEMA_KEYS) | SAFE_TEXT


@settings_fast
@given(json_like(SCHEMA_KEY, SCHEMA_LEAVES))
@example({"looker": {"base_url": "https://x"}, "teams": {"t": None}, "token_signing_key": None})
@example({"teams": {"a": {"callers": [{"client_id": None, "client_secret": {"env": 1}}]}}})
def test_schema_shaped_documents_give_config_or_config_error(doc: object) -> None:
    """Documents built from the real key names never raise anything but ConfigError."""
    result = parse_outcome(doc)
    assert isinstance(result, Config) or result.problems


@settings_fast
@given(
    mutations=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "looker.base_url",
                    "looker.timeouts.read_s",
                    "looker.api_versions",
                    "listen.port",
                    "admin",
                    "token_signing_key",
                    "teams.analytics",
                    "teams.analytics.workspace",
                    "teams.finance.callers",
                    "teams.finance.callers.0.client_secret",
                    "teams.finance.looker_client_id",
                    "caller_token_ttl_s",
                ]
            ),
            SCHEMA_LEAVES | st.dictionaries(st.sampled_from(["env", "file"]), SCHEMA_LEAVES),
        ),
        max_size=4,
    )
)
def test_mutated_valid_documents_give_config_or_config_error(
    mutations: list[tuple[str, object]],
) -> None:
    """A valid document with random values at real paths never raises anything but ConfigError."""
    raw = valid_raw()
    for path, value in mutations:
        *parents, last = path.split(".")
        node: Any = raw
        for key in parents:
            if isinstance(node, list) and node:
                node = node[0]
            elif isinstance(node, dict) and isinstance(node.get(key), dict | list):
                node = node[key]
            else:
                break
        else:
            if isinstance(node, dict):
                node[last] = value
    result = parse_outcome(raw)
    if isinstance(result, ConfigError):
        assert result.problems
        for secret in ENV.values():
            assert secret not in str(result)
    else:
        assert isinstance(result, Config)


@pytest.mark.parametrize("key", ["initial_backoff_s", "max_backoff_s"])
def test_removed_retry_keys_say_what_replaced_them(key: str) -> None:
    """A 0.1 config with the old backoff keys is refused with a migration hint, once."""
    problems = problems_of(with_change(f"looker.retry.{key}", 1.0))
    assert len(problems) == 1
    assert problems[0].startswith(f"looker.retry.{key}: was removed in 0.2")
    assert "interval_s" in problems[0]


def test_retry_defaults_meet_the_recovery_targets() -> None:
    """The shipped defaults: an attempt every 2 s on average, calls wait up to 15 s."""
    assert Retry() == Retry(interval_s=2.0, deadline_s=15.0)
