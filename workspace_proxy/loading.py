"""Loading the configuration file: YAML in, a validated ``Config`` out.

``load_config(path)`` reads the file as YAML (refusing a key written twice in one mapping), then
validates it in one pass, which resolves secrets (``{env: NAME}`` or ``{file: PATH}``): it
returns a :class:`~workspace_proxy.config.Config`, or raises one :class:`ConfigError` that lists
every problem found as ``file: path.to.key: message``. ``summary`` is what check-config prints of
a valid one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from workspace_proxy.config import Config
from workspace_proxy.errors import ConfigError
from workspace_proxy.validation import parse_config
from workspace_proxy.valuechecks import Env


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping: YAML would keep the
    last silently (a second ``analytics:`` block replacing the first team whole)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
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
    if config.tracing is not None:
        t = config.tracing
        lines.append(
            f"  tracing: OTLP/HTTP to {t.traces_url}, sampler {t.sampler} "
            f"(ratio {t.sampling_ratio:g}), service {t.service_name}"
        )
    return "\n".join(lines)
