"""Team checks of the validation pass: each team's settings, and the rules that span teams.

A team's keys depend on its mode (managed or passthrough); some settings cannot go together
(:data:`~workspace_proxy.config.TEAM_CONFLICTS`); across teams, caller ids are unique and teams
sharing a Looker API user agree on its workspace and dev branch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from workspace_proxy.config import (
    PROJECT_ID,
    SET,
    TEAM_CONFLICTS,
    TEAM_NAME,
    Caller,
    GitBranch,
    TeamConfig,
)
from workspace_proxy.fieldspec import (
    TEAM_MODES,
    key_spec,
    required_keys,
    spec_of,
    yaml_fields,
    yaml_keys,
)
from workspace_proxy.valuechecks import (
    Env,
    Problems,
    boolean,
    choice,
    join,
    mapping,
    resolve_secret,
    setting,
)

_TEAM_NAME = re.compile(TEAM_NAME)

_TEAM_DEFAULTS: Final = TeamConfig(
    name="-", workspace="dev", looker_client_id=None, looker_client_secret=None
)
"""Where ``setting`` finds the defaults of a team (those of its keys that have one)."""


def parse_team(name: str, raw: object, env: Env, problems: Problems) -> TeamConfig | None:
    path = join("teams", name)
    if not _TEAM_NAME.fullmatch(name):
        problems.add(path, "team names use letters, digits, '_', '-', '.' (at most 64)")
    keys = yaml_keys(TeamConfig) | {"mode"}
    mode = raw.get("mode", "managed") if isinstance(raw, dict) else "managed"
    if mode == "passthrough":
        required = required_keys(TeamConfig, "passthrough")
        for f in yaml_fields(TeamConfig):
            if "passthrough" not in spec_of(f).modes and isinstance(raw, dict) and f.name in raw:
                problems.add(
                    join(path, f.name),
                    "not used in passthrough mode (callers log in "
                    "with their own Looker credentials, listed in looker_client_ids)",
                )
    else:
        required = required_keys(TeamConfig, "managed")
        if mode != "managed":
            problems.add(join(path, "mode"), f"must be one of {', '.join(TEAM_MODES)}")
        else:
            for f in yaml_fields(TeamConfig):
                if "managed" not in spec_of(f).modes and isinstance(raw, dict) and f.name in raw:
                    problems.add(join(path, f.name), "only for mode: passthrough")
    data = mapping(raw, path, keys, problems, required=required)
    workspace = (
        choice(data, "workspace", path, key_spec(TeamConfig, "workspace").choices, problems)
        if "workspace" in data
        else None
    )
    cid = secret = None
    if "looker_client_id" in data:
        cid = resolve_secret(
            data["looker_client_id"],
            join(path, "looker_client_id"),
            env,
            problems,
            allow_plain=True,
        )
    if "looker_client_secret" in data:
        secret = resolve_secret(
            data["looker_client_secret"], join(path, "looker_client_secret"), env, problems
        )
    callers = _callers(data.get("callers"), join(path, "callers"), env, problems)
    if mode != "passthrough" and "callers" in data and data["callers"] is None:
        # ``callers:`` left empty: refused like ``callers: []`` (it once dropped the team)
        problems.add(
            join(path, "callers"), "must be a non-empty list of {client_id, client_secret}"
        )
    client_ids: tuple[str, ...] = ()
    if mode == "passthrough":
        client_ids = _client_ids(
            data.get("looker_client_ids"), join(path, "looker_client_ids"), problems
        )
        callers = ()
    max_conc = setting(data, _TEAM_DEFAULTS, "max_concurrency", path, problems)
    branch = None
    if data.get("git_branch") is not None:
        branch = _git_branch(data["git_branch"], join(path, "git_branch"), problems)
        values = {"workspace": workspace, "git_branch": data["git_branch"]}
        _conflicts("git_branch", values, path, problems)
    allow_switch = boolean(data, "allow_branch_switch", path, False, problems)
    allow_sudo = boolean(data, "allow_sudo", path, False, problems)
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


def _conflicts(key: str, values: Mapping[str, object], path: str, problems: Problems) -> None:
    """Report the :data:`TEAM_CONFLICTS` at ``key`` that ``values`` (checked ones) break."""
    for rule in TEAM_CONFLICTS:
        if rule.key == key and all(
            values.get(name) is not None if want is SET else values.get(name) == want
            for name, want in ((rule.key, rule.value), (rule.other, rule.other_value))
        ):
            problems.add(join(path, rule.key), rule.message)


def _client_ids(raw: object, path: str, problems: Problems) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add(path, "must be a non-empty list of Looker API client ids")
        return ()
    if not all(isinstance(v, str) and v.strip() for v in raw):
        problems.add(path, "every entry must be a non-empty string")
        return ()
    return tuple(raw)


def _git_branch(raw: object, path: str, problems: Problems) -> GitBranch | None:
    keys = yaml_keys(GitBranch)
    data = mapping(raw, path, keys, problems, required=required_keys(GitBranch))
    ok = data.keys() == keys
    for key in sorted(keys & data.keys()):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            problems.add(join(path, key), "must be a non-empty string")
            ok = False
        elif key == "project" and not re.fullmatch(PROJECT_ID, value):
            problems.add(join(path, key), "must be a Looker project id (letters, digits, _ . -)")
            ok = False
    return GitBranch(project=data["project"], name=data["name"]) if ok else None


def _callers(raw: object, path: str, env: Env, problems: Problems) -> tuple[Caller, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        problems.add(path, "must be a non-empty list of {client_id, client_secret}")
        return None
    out: list[Caller] = []
    for i, item in enumerate(raw):
        ipath = join(path, i)
        data = mapping(item, ipath, yaml_keys(Caller), problems, required=required_keys(Caller))
        cid = data.get("client_id")
        if "client_id" in data and (not isinstance(cid, str) or not cid.strip()):
            problems.add(join(ipath, "client_id"), "must be a non-empty string")
            cid = None
        secret = None
        if "client_secret" in data:
            secret = resolve_secret(
                data["client_secret"], join(ipath, "client_secret"), env, problems
            )
        if isinstance(cid, str) and secret is not None:
            out.append(Caller(client_id=cid, client_secret=secret))
    return tuple(out) if len(out) == len(raw) else None


def cross_checks(teams: Mapping[str, TeamConfig], problems: Problems) -> None:
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
    by_user: dict[str, TeamConfig], client_id: str, team: TeamConfig, problems: Problems
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
