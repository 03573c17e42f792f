"""Route policy: which method and path does what; hostile paths are not found."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workspace_proxy.routes import NOT_FOUND, Action, Route, classify, normalise

V = ("4.0", "3.1")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # the caller's own login
        ("POST", "/api/4.0/login", Route(Action.LOGIN, "/api/4.0/login", "login")),
        ("POST", "/api/3.1/login", Route(Action.LOGIN, "/api/3.1/login", "login")),
        ("POST", "/api/4.0/login/", Route(Action.LOGIN, "/api/4.0/login/", "login")),
        ("POST", "//api/4.0/login", Route(Action.LOGIN, "/api/4.0/login", "login")),
        # sudo as another user
        ("POST", "/api/4.0/login/42", Route(Action.SUDO, "/api/4.0/login/42", "sudo")),
        ("POST", "/api/4.0/login/42/", Route(Action.SUDO, "/api/4.0/login/42/", "sudo")),
        ("POST", "/api/4.0//login//42", Route(Action.SUDO, "/api/4.0/login/42", "sudo")),
        # logout, versioned and the Python SDK's unversioned form
        ("DELETE", "/api/4.0/logout", Route(Action.LOGOUT, "/api/4.0/logout", "logout")),
        ("DELETE", "/api/3.1/logout", Route(Action.LOGOUT, "/api/3.1/logout", "logout")),
        ("DELETE", "/api/logout", Route(Action.LOGOUT, "/api/logout", "logout")),
        ("DELETE", "//api/logout", Route(Action.LOGOUT, "/api/logout", "logout")),
        ("DELETE", "//api//logout", Route(Action.LOGOUT, "/api/logout", "logout")),
        # changing the workspace
        ("PATCH", "/api/4.0/session", Route(Action.PATCH_SESSION, "/api/4.0/session", "session")),
        ("PATCH", "/api/3.1/session", Route(Action.PATCH_SESSION, "/api/3.1/session", "session")),
        (
            "PATCH",
            "/api/4.0/session/",
            Route(Action.PATCH_SESSION, "/api/4.0/session/", "session"),
        ),
        ("PATCH", "//api/4.0/session", Route(Action.PATCH_SESSION, "/api/4.0/session", "session")),
        # versions, both forms
        ("GET", "/versions", Route(Action.VERSIONS, "/versions", "versions")),
        ("GET", "/versions/", Route(Action.VERSIONS, "/versions", "versions")),
        ("GET", "//versions", Route(Action.VERSIONS, "/versions", "versions")),
        ("GET", "/api/4.0/versions", Route(Action.VERSIONS, "/api/4.0/versions", "versions")),
        ("GET", "/api/3.1/versions", Route(Action.VERSIONS, "/api/3.1/versions", "versions")),
        # everything else under the pinned session
        ("GET", "/api/4.0/user", Route(Action.FORWARD, "/api/4.0/user", "user")),
        ("GET", "/api/4.0/session", Route(Action.FORWARD, "/api/4.0/session", "session")),
        (
            "POST",
            "/api/4.0/queries/42/run/csv",
            Route(Action.FORWARD, "/api/4.0/queries/42/run/csv", "queries"),
        ),
        (
            "PUT",
            "/api/4.0/projects/p/git_branch",
            Route(Action.BRANCH_SWITCH, "/api/4.0/projects/p/git_branch", "projects"),
        ),
        (
            "DELETE",
            "/api/4.0/looks/7",
            Route(Action.FORWARD, "/api/4.0/looks/7", "looks"),
        ),
        (
            "GET",
            "//api//4.0///dashboards//1",
            Route(Action.FORWARD, "/api/4.0/dashboards/1", "dashboards"),
        ),
        (
            "GET",
            "/api/4.0/queries/slug/a%20b",
            Route(Action.FORWARD, "/api/4.0/queries/slug/a%20b", "queries"),
        ),
        ("GET", "/api/3.1/user", Route(Action.FORWARD, "/api/3.1/user", "user")),
        ("OPTIONS", "/api/4.0/user", Route(Action.FORWARD, "/api/4.0/user", "user")),
    ],
)
def test_classify(method: str, path: str, expected: Route) -> None:
    """Each method and path maps to its action, with slash runs collapsed in the path."""
    assert classify(method, path, V) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # wrong methods on the special routes
        *[(m, "/api/4.0/login") for m in METHODS if m != "POST"],
        *[(m, "/api/4.0/login/42") for m in METHODS if m != "POST"],
        *[(m, "/api/4.0/logout") for m in METHODS if m != "DELETE"],
        *[(m, "/api/logout") for m in METHODS if m != "DELETE"],
        *[(m, "/versions") for m in METHODS if m != "GET"],
        # unknown versions and places outside /api/<v>/
        ("GET", "/api/5.0/user"),
        ("GET", "/api/3.0/user"),
        ("GET", "/api/4/user"),
        ("GET", "/api/4.0"),
        ("GET", "/api/4.0/"),
        ("GET", "/api/"),
        ("GET", "/api"),
        ("GET", "/"),
        ("GET", ""),
        ("GET", "/user"),
        ("POST", "/login"),
        ("POST", "/api/login"),
        ("DELETE", "/api/logout/"),
        ("GET", "/API/4.0/user"),
        ("GET", "/admin/metrics"),
        ("GET", "/healthz"),
        ("GET", "/versions/x"),
    ],
)
def test_not_found(method: str, path: str) -> None:
    """Wrong methods on special routes, unknown versions and paths outside /api are not found."""
    assert classify(method, path, V) is NOT_FOUND


def test_unconfigured_version_is_not_found() -> None:
    """Only the configured API versions exist."""
    assert classify("GET", "/api/3.1/user", ("4.0",)) is NOT_FOUND
    assert classify("POST", "/api/3.1/login", ("4.0",)) is NOT_FOUND
    assert classify("GET", "/api/4.0/user", ("4.0",)).action is Action.FORWARD


@pytest.mark.parametrize(
    "path",
    [
        "/api/4.0/../4.0/session",
        "/api/4.0/user/..",
        "/api/4.0/./session",
        "/api/4.0/user/.",
        "/api/../api/4.0/user",
        "/api/4.0/%2e%2e/4.0/session",
        "/api/4.0/%2E%2E/4.0/session",
        "/api/4.0/%2e/session",
        "/api/4.0/.%2e/session",
        "/api/4.0/%2e./session",
        "/api/4.0/user%2F..%2F..%2Fsession",
        "/api/4.0/user%2f1",
        "/api%2F4.0/user",
        "/api/4.0/user%5c..%5csession",
        "/api/4.0/user%5C1",
        "/api/4.0/user\\..\\session",
        "/api\\4.0\\user",
        "/api/4.0/user\x00",
        "/api/4.0/user%00",
        "/api/4.0/user\r\nX-Injected: 1",
        "/api/4.0/us er",
        "/api/4.0/user\t",
        "/api/4.0/user\x7f",
        "//evil.example.com/api/4.0/user",
        "//evil.example.com/x",
        "http://evil.example.com/api/4.0/user",
        "https://example.cloud.looker.com/api/4.0/session",
        "evil.example.com:443",
        "example.cloud.looker.com:443",
        "*",
        "api/4.0/user",
        "%2Fapi/4.0/user",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "POST", "DELETE", "CONNECT"])
def test_hostile_paths_are_not_found(method: str, path: str) -> None:
    """Dot segments, encoded slashes/dots/backslashes, NUL, control characters, absolute-form
    and authority-form targets are all not found."""
    assert classify(method, path, V) is NOT_FOUND


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("/api/4.0/user", "/api/4.0/user"),
        ("//api/4.0/user", "/api/4.0/user"),
        ("/api//4.0///user//", "/api/4.0/user/"),
        ("/", "/"),
        ("////", "/"),
        ("/api/4.0/a.b/..c/c..", "/api/4.0/a.b/..c/c.."),
        ("/api/4.0/queries/a%20b", "/api/4.0/queries/a%20b"),
    ],
)
def test_normalise_collapses_slashes(raw: str, normalised: str) -> None:
    """Runs of slashes collapse to one; dots inside names are fine."""
    assert normalise(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    ["", "api/4.0", "/a/../b", "/a/./b", "/a/%2e%2e/b", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00"],
)
def test_normalise_refuses_unsafe_paths(raw: str) -> None:
    """Relative, dot-segment and encoded-separator paths normalise to None."""
    assert normalise(raw) is None


# --- ways a caller might reach a special endpoint that classify does not see ----------------

ENCODED_BYPASSES = [
    ("PATCH", "/api/4.0/%73ession"),
    ("PATCH", "/api/4.0/sess%69on"),
    ("PATCH", "/api/4.0/%73%65%73%73%69%6f%6e"),
    ("DELETE", "/api/4.0/%6cogout"),
    ("POST", "/api/4.0/%6cogin/42"),
    ("POST", "/api/4.0/logi%6E"),
]


@pytest.mark.parametrize(("method", "path"), ENCODED_BYPASSES)
def test_special_endpoints_cannot_be_reached_percent_encoded(method: str, path: str) -> None:
    """Percent-encoded spellings of session/login/logout are never forwarded as ordinary calls."""
    assert classify(method, path, V).action is not Action.FORWARD


SPELLING_BYPASSES = [
    ("PATCH", "/api/4.0/SESSION"),
    ("PATCH", "/api/4.0/Session"),
    ("PATCH", "/api/4.0/session.json"),
    ("PATCH", "/api/4.0/session;jsessionid=1"),
    ("DELETE", "/api/4.0/logout;x"),
    ("POST", "/api/4.0/LOGIN/42"),
    ("POST", "/api/4.0/login.json"),
]


@pytest.mark.parametrize(("method", "path"), SPELLING_BYPASSES)
def test_special_endpoints_cannot_be_reached_by_other_spellings(method: str, path: str) -> None:
    """Case variants, format suffixes and matrix parameters of special endpoints are not
    forwarded as ordinary calls."""
    assert classify(method, path, V).action is not Action.FORWARD


def test_route_names_are_bounded() -> None:
    """Arbitrary first path segments share a bounded set of route labels."""
    names = {classify("GET", f"/api/4.0/junk{i}", V).name for i in range(1000)}
    assert len(names) <= 1


# --- properties -----------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    [
        "api",
        "4.0",
        "3.1",
        "5.0",
        "session",
        "login",
        "logout",
        "versions",
        "user",
        "queries",
        "42",
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%00",
        "%25",
        "%252f",
        "\\",
        "\x00",
        ";",
        "a.json",
        "host:443",
        "http:",
        "?",
        "#",
        "%",
    ]
) | st.text(max_size=6)


@st.composite
def paths(draw: st.DrawFn) -> str:
    start = draw(st.sampled_from(["/", "//", "", "/api/4.0/", "/api/3.1/", "http://x/"]))
    parts = draw(st.lists(SEGMENTS, max_size=6))
    end = draw(st.sampled_from(["", "/", "//"]))
    return start + "/".join(parts) + end


ENCODED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)


@settings(
    database=None, deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    method=st.sampled_from([*METHODS, "CONNECT", "patch", "TRACE"]),
    path=paths() | st.text(),
    versions=st.sampled_from([("4.0",), ("3.1",), ("4.0", "3.1")]),
)
def test_classify_never_raises_and_forwards_only_safe_paths(
    method: str, path: str, versions: tuple[str, ...]
) -> None:
    """For any path, classify returns a Route; a FORWARD path stays under /api/<version>/."""
    route = classify(method, path, versions)
    assert isinstance(route, Route)
    assert len(route.name) <= 40
    if route.action is Action.NOT_FOUND:
        assert route == NOT_FOUND
        return
    assert route.path.startswith("/")
    assert "//" not in route.path
    segments = route.path.split("/")
    assert not {".", ".."} & set(segments)
    assert not {".", ".."} & {unquote(s) for s in segments}
    assert not ENCODED_SLASH.search(route.path)
    assert "\\" not in route.path
    assert "\x00" not in unquote(route.path)
    if route.action is Action.FORWARD:
        assert any(route.path.startswith(f"/api/{v}/") for v in versions)
        assert route.path.split("/")[3] != ""
