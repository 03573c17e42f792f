"""Route policy: what the proxy does with a request target. Pure functions, no I/O.

A request target is first parsed as RFC 9112's origin-form (``absolute-path [ "?" query ]``, with
RFC 3986's characters): a ``#``, a space, a raw non-ASCII byte, a bad ``%`` escape or any other
character outside that grammar is a ``400`` before any policy runs (``parse_target``). What is sent
to Looker is then *built* from the parsed and classified parts (``upstream_target``), and checked
once more at the point of sending (``check_sent``), so the path Looker receives is the path the
policy decided on.

Only ``/versions``, ``/api/logout`` and ``/api/<configured version>/...`` exist. Paths are
normalised before they are matched, and the normalised path is what is forwarded, so what is
matched is what Looker sees: runs of ``/`` are collapsed (real SDKs send ``//api/...``) and
percent-encoded unreserved characters are decoded (``%73ession`` is ``session``). Paths with dot
segments, encoded slashes, backslashes or dots, NUL or control bytes, or ``;`` parameters are not
found. The endpoints that could break the pin are matched case-insensitively and with or without a
format suffix (``session.json``).
"""

from __future__ import annotations

import enum
import re
import string
from dataclasses import dataclass
from typing import Final

from workspace_proxy.errors import BadRequest, ProxyError

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""What Looker's API uses; TRACE (which would echo the injected token), CONNECT and the rest
never reach Looker."""
_PCHAR: Final = r"A-Za-z0-9\-._~!$&'()*+,;=:@%"
"""RFC 3986 ``pchar``: unreserved, sub-delims, ``:``, ``@`` and ``%`` escapes."""
_ORIGIN_FORM: Final = re.compile(rf"((?:/[{_PCHAR}]*)+)(?:\?([{_PCHAR}/?]*))?")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_CHAR: Final = re.compile(rf"[{_PCHAR}/]")
_QUERY_CHAR: Final = re.compile(rf"[{_PCHAR}/?]")
_SLASHES: Final = re.compile(r"/{2,}")
_FORBIDDEN: Final = re.compile(r"%(2f|5c|2e|00)|[\\;]|[\x00-\x20\x7f]", re.IGNORECASE)
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_SUDO: Final = re.compile(r"^login/[^/]+$")
_GIT_BRANCH: Final = re.compile(r"^projects/[^/]+/git_branch$")
_FORMAT_SUFFIX: Final = re.compile(r"\.[a-z0-9]+$")

# Top-level resources of the Looker 4.0 and 3.1 specs: the only route names used as metric labels.
RESOURCES: Final = frozenset(
    [
        "agents",
        "alert_notifications",
        "alerts",
        "api_spec",
        "artifact",
        "artifacts",
        "backup_configuration",
        "board_items",
        "board_sections",
        "boards",
        "cloud_storage",
        "color_collections",
        "connections",
        "content",
        "content_favorite",
        "content_metadata",
        "content_metadata_access",
        "content_summary",
        "content_thumbnail",
        "content_validation",
        "content_view",
        "conversational_analytics",
        "conversations",
        "credentials_email",
        "custom_welcome_email",
        "custom_welcome_email_test",
        "dashboard_elements",
        "dashboard_filter_state",
        "dashboard_filters",
        "dashboard_layout_components",
        "dashboard_layouts",
        "dashboards",
        "data_actions",
        "datagroups",
        "derived_table",
        "dialect_info",
        "digest_email_send",
        "digest_emails_enabled",
        "embed",
        "embed_config",
        "external_oauth_applications",
        "fetch_and_parse_saml_idp_metadata",
        "folders",
        "golden_queries",
        "groups",
        "homepage_items",
        "homepage_sections",
        "homepages",
        "integration_hubs",
        "integrations",
        "internal",
        "internal_help_resources",
        "internal_help_resources_content",
        "internal_help_resources_enabled",
        "ldap_config",
        "legacy_features",
        "locales",
        "login",
        "logout",
        "lookml_models",
        "looks",
        "merge_queries",
        "mobile",
        "model_sets",
        "models",
        "oauth_client_apps",
        "oidc_config",
        "oidc_test_configs",
        "parse_saml_idp_metadata",
        "password_config",
        "permission_sets",
        "permissions",
        "primary_homepage_sections",
        "projects",
        "public_egress_ip_addresses",
        "queries",
        "query_tasks",
        "render_tasks",
        "reports",
        "roles",
        "running_queries",
        "saml_config",
        "saml_test_configs",
        "scheduled_plans",
        "self_service_models",
        "session",
        "session_config",
        "setting",
        "smtp_settings",
        "smtp_status",
        "spaces",
        "sql_interface_queries",
        "sql_queries",
        "ssh_public_key",
        "ssh_server",
        "ssh_servers",
        "ssh_tunnel",
        "ssh_tunnels",
        "support_access",
        "themes",
        "timezones",
        "user",
        "user_attributes",
        "user_login_lockout",
        "user_login_lockouts",
        "users",
        "vector_thumbnail",
        "versions",
        "whitelabel_configuration",
        "workspaces",
    ]
)


@dataclass(frozen=True, slots=True)
class Target:
    """A request target that parsed as origin-form: its path and query, still percent-encoded."""

    path: str
    query: str | None
    """Without the ``?``; None when there was none or nothing after it."""


def parse_target(raw: str) -> Target:
    """The origin-form target (RFC 9112 3.2.1), or a Looker-shaped 400 naming what is wrong."""
    found = _ORIGIN_FORM.fullmatch(raw)
    if found is None or _BAD_ESCAPE.search(raw):
        raise BadRequest(
            f"workspace-proxy: the request target must be a path with an optional query "
            f"(RFC 9112 origin-form); {_what_is_wrong(raw)}.",
            close=True,
        )
    return Target(found.group(1), found.group(2) or None)


def _what_is_wrong(raw: str) -> str:
    if not raw.startswith("/"):
        return "it must start with '/' (absolute URLs, '*' and authorities are not accepted)"
    if "#" in raw:
        return f"a fragment ('#', at offset {raw.index('#')}) is never sent in a request"
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        return f"'%' at offset {bad.start()} is not followed by two hex digits"
    query = raw.find("?")
    for offset, char in enumerate(raw):
        allowed = _QUERY_CHAR if 0 <= query <= offset else _PATH_CHAR
        if not allowed.fullmatch(char):
            shown = repr(char) if char.isprintable() and char.isascii() else f"U+{ord(char):04X}"
            return f"{shown} at offset {offset} is not allowed there"
    return "it does not parse"  # pragma: no cover (every refusal has one of the reasons above)


class TargetMismatch(ProxyError):
    """The target built for Looker does not say what was classified: never sent."""

    status = 500
    public_message = "workspace-proxy refused to forward a request it could not rebuild exactly."


class Action(enum.Enum):
    LOGIN = "login"  # the caller logs in to the proxy
    SUDO = "sudo"  # POST /login/{user_id}
    LOGOUT = "logout"  # ends the caller's proxy token, never the team's Looker session
    PATCH_SESSION = "patch_session"  # would change the pinned workspace
    BRANCH_SWITCH = "branch_switch"  # PUT/POST git_branch: would change a pinned dev branch
    VERSIONS = "versions"  # public, forwarded without credentials
    FORWARD = "forward"  # everything else under /api/<v>/, forwarded under the pinned session
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Route:
    action: Action
    path: str
    """Normalised path to use upstream (empty for NOT_FOUND)."""
    name: str
    """A bounded label for logs and metrics (no ids)."""


NOT_FOUND: Final = Route(Action.NOT_FOUND, "", "not_found")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def normalise(raw_path: str) -> str | None:
    """The path to match and forward, or None when the (percent-encoded) path is unsafe."""
    if not raw_path.startswith("/") or _FORBIDDEN.search(raw_path):
        return None
    path = _SLASHES.sub("/", _PERCENT.sub(_decode_unreserved, raw_path))
    if any(s in (".", "..") for s in path.split("/")):
        return None
    return path


def classify(method: str, raw_path: str, versions: tuple[str, ...]) -> Route:
    """Decide what to do with a request. ``raw_path`` is percent-encoded, without the query."""
    path = normalise(raw_path)
    if path is None or method not in METHODS:
        return NOT_FOUND
    if path.rstrip("/") == "/versions":
        return Route(Action.VERSIONS, "/versions", "versions") if method == "GET" else NOT_FOUND
    if path == "/api/logout":
        return Route(Action.LOGOUT, path, "logout") if method == "DELETE" else NOT_FOUND
    parts = path.split("/", 3)  # "", "api", version, rest
    if len(parts) < 4 or parts[1] != "api" or parts[2] not in versions or not parts[3]:
        return NOT_FOUND
    rest = _FORMAT_SUFFIX.sub("", parts[3].rstrip("/").lower())
    if rest == "login":
        return Route(Action.LOGIN, path, "login") if method == "POST" else NOT_FOUND
    if _SUDO.match(rest):
        return Route(Action.SUDO, path, "sudo") if method == "POST" else NOT_FOUND
    if rest == "logout":
        return Route(Action.LOGOUT, path, "logout") if method == "DELETE" else NOT_FOUND
    if rest == "session":
        if method == "PATCH":
            return Route(Action.PATCH_SESSION, path, "session")
        if method not in ("GET", "HEAD"):
            return NOT_FOUND  # no other method on /session may reach Looker

    if _GIT_BRANCH.match(rest) and method in ("PUT", "POST"):
        return Route(Action.BRANCH_SWITCH, path, "projects")
    if rest == "versions" and method == "GET":
        return Route(Action.VERSIONS, path, "versions")
    return Route(Action.FORWARD, path, _label(rest))


def upstream_target(base_path: str, route: Route, target: Target) -> str:
    """The target Looker gets: the classified (normalised) path under Looker's base path, and
    the parsed query; never the bytes the caller sent."""
    path = base_path + route.path
    return path if target.query is None else f"{path}?{target.query}"


def check_sent(sent: str, base_path: str, route: Route, target: Target) -> None:
    """At the point of sending: the target about to go out parses back to exactly the path that
    was classified and the query that was parsed, else TargetMismatch (nothing is sent)."""
    try:
        back = parse_target(sent)
    except BadRequest:
        raise TargetMismatch() from None
    if back.path != base_path + route.path or back.query != target.query:
        raise TargetMismatch()


def _label(rest: str) -> str:
    """The resource: ``queries/42/run/csv`` -> ``queries``; unknown ones are ``other``."""
    first = rest.split("/", 1)[0]
    return first if first in RESOURCES else "other"
