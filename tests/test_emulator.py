"""The Looker emulator over real sockets: routes, sessions, workspaces, git, faults, admin."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import FakeClock
from multidict import CIMultiDictProxy

from workspace_proxy.emulator import DEFAULT_USERS, ApiUser, AuditEntry, Faults, LookerEmulator

MakeLooker = Callable[..., Awaitable[LookerEmulator]]
V4 = "/api/4.0"
DOCS = "https://cloud.google.com/looker/docs/"
CREDS = {u.display_name.lower(): (u.client_id, u.client_secret) for u in DEFAULT_USERS}
USER_ID = {u.display_name.lower(): u.id for u in DEFAULT_USERS}


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    looker: LookerEmulator,
    method: str,
    path: str,
    token: str | None = None,
    *,
    scheme: str = "token",
    **kwargs: Any,
) -> Reply:
    """One request; the body parsed as JSON when the emulator says it is JSON."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    async with http.request(method, looker.url(path), headers=headers, **kwargs) as resp:
        text = await resp.text()
        body = json.loads(text) if resp.content_type == "application/json" else text
        return Reply(resp.status, body, resp.headers)


async def login(http: aiohttp.ClientSession, looker: LookerEmulator, who: str = "analytics") -> str:
    client_id, client_secret = CREDS[who]
    data = {"client_id": client_id, "client_secret": client_secret}
    reply = await call(http, looker, "POST", f"{V4}/login", data=data)
    assert reply.status == 200, reply.body
    return str(reply.body["access_token"])


async def set_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator, token: str, workspace: str
) -> Reply:
    return await call(
        http, looker, "PATCH", f"{V4}/session", token, json={"workspace_id": workspace}
    )


async def dev_token(
    http: aiohttp.ClientSession, looker: LookerEmulator, who: str = "analytics"
) -> str:
    token = await login(http, looker, who)
    assert (await set_workspace(http, looker, token, "dev")).status == 200
    return token


def assert_error(reply: Reply, status: int, message: str) -> None:
    assert reply.status == status, reply.body
    assert reply.body == {"message": message, "documentation_url": DOCS}


# --- /versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/versions", "//versions", f"{V4}/versions", "/api/3.1/versions"])
async def test_versions_need_no_auth(
    http: aiohttp.ClientSession, looker: LookerEmulator, path: str
) -> None:
    """GET /versions, /api/4.0/versions and /api/3.1/versions answer ApiVersion without a token."""
    reply = await call(http, looker, "GET", path)
    assert reply.status == 200
    assert reply.body["looker_release_version"] == "26.12.3"
    assert reply.body["current_version"]["version"] == "4.0"
    assert [v["version"] for v in reply.body["supported_versions"]] == ["3.1", "4.0"]
    assert reply.body["api_server_url"] == looker.base_url
    assert reply.body["web_server_url"] == looker.base_url


async def test_versions_accept_a_token(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """/versions with a good token is attributed to its user; a bad token is simply ignored."""
    token = await login(http, looker)
    assert (await call(http, looker, "GET", f"{V4}/versions", token)).status == 200
    assert (await call(http, looker, "GET", f"{V4}/versions", "bogus")).status == 200
    good, bad = looker.audit_paths("/versions")
    assert (good.user_id, good.workspace) == ("2", "production")
    assert (bad.user_id, bad.workspace, bad.status) == (None, None, 200)


# --- login / logout ------------------------------------------------------------------------------


async def test_login_form_body_returns_exactly_an_access_token(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """POST /login (form body) answers JSON with exactly access_token, token_type, expires_in."""
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    reply = await call(http, looker, "POST", f"{V4}/login", data=data)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert set(reply.body) == {"access_token", "token_type", "expires_in"}
    assert reply.body["token_type"] == "Bearer"
    assert reply.body["expires_in"] == 3600
    assert looker.workspace_of(reply.body["access_token"]) == "production"
    assert (looker.login_attempts, looker.logins) == (1, 1)


@pytest.mark.parametrize("version", ["4.0", "3.1"])
async def test_login_accepts_query_params(
    http: aiohttp.ClientSession, looker: LookerEmulator, version: str
) -> None:
    """client_id/client_secret may come as query parameters, under /api/4.0 and /api/3.1."""
    params = {"client_id": "finance-client-id", "client_secret": "finance-client-secret"}
    reply = await call(http, looker, "POST", f"/api/{version}/login", params=params)
    assert reply.status == 200
    me = await call(http, looker, "GET", f"/api/{version}/user", reply.body["access_token"])
    assert me.body["id"] == ("3" if version == "4.0" else 3)  # 3.1's User.id is an integer


@pytest.mark.parametrize(
    "data",
    [
        {"client_id": "analytics-client-id", "client_secret": "wrong"},
        {"client_id": "nobody", "client_secret": "analytics-client-secret"},
        {"client_id": "analytics-client-id"},
        {},
    ],
)
async def test_login_bad_credentials_answer_404(
    http: aiohttp.ClientSession, looker: LookerEmulator, data: dict[str, str]
) -> None:
    """Wrong or missing credentials answer 404 Not found, counted as an attempt but not a login."""
    assert_error(await call(http, looker, "POST", f"{V4}/login", data=data), 404, "Not found")
    assert (looker.login_attempts, looker.logins) == (1, 0)


async def test_every_login_gets_a_new_token_and_session(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Each login mints a fresh token whose session starts in production, even after a dev one."""
    first = await dev_token(http, looker)
    second = await login(http, looker)
    assert first != second
    assert (looker.workspace_of(first), looker.workspace_of(second)) == ("dev", "production")


async def test_doubled_slashes_are_tolerated(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Doubled slashes (`//api/4.0/login`, `//api/logout`) work; the audit keeps the raw path."""
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    reply = await call(http, looker, "POST", "//api/4.0/login", data=data)
    assert reply.status == 200
    token = reply.body["access_token"]
    assert (await call(http, looker, "GET", "/api/4.0//session", token)).status == 200
    assert (await call(http, looker, "DELETE", "//api/logout", token)).status == 204
    assert [e.path for e in looker.audit] == [
        "//api/4.0/login",
        "/api/4.0//session",
        "//api/logout",
    ]


@pytest.mark.parametrize("path", [f"{V4}/logout", "/api/3.1/logout", "/api/logout"])
async def test_logout_revokes_only_that_token(
    http: aiohttp.ClientSession, looker: LookerEmulator, path: str
) -> None:
    """DELETE logout, versioned or not, answers an empty 204; that token alone then gets 401."""
    token, other = await login(http, looker), await login(http, looker)
    reply = await call(http, looker, "DELETE", path, token)
    assert (reply.status, reply.body) == (204, "")
    assert_error(
        await call(http, looker, "GET", f"{V4}/user", token), 401, "Requires authentication."
    )
    assert (await call(http, looker, "GET", f"{V4}/user", other)).status == 200
    assert looker.workspace_of(token) is None


async def test_logout_needs_a_token(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Logout without a live token is a 401 like any other call."""
    assert (await call(http, looker, "DELETE", "/api/logout")).status == 401
    assert (await call(http, looker, "DELETE", "/api/logout", "bogus")).status == 401


# --- sudo ----------------------------------------------------------------------------------------


async def test_sudo_login_by_admin(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """An admin's POST /login/{id} returns a token acting as that user, with sudo_user_id set."""
    admin = await login(http, looker, "admin")
    reply = await call(http, looker, "POST", f"{V4}/login/2", admin)
    assert reply.status == 200
    assert set(reply.body) == {"access_token", "token_type", "expires_in"}
    sudo = reply.body["access_token"]
    assert looker.issued_tokens() == [admin, sudo]
    assert (await call(http, looker, "GET", f"{V4}/user", sudo)).body["id"] == "2"
    session = (await call(http, looker, "GET", f"{V4}/session", sudo)).body
    assert (session["workspace_id"], session["sudo_user_id"]) == ("production", "1")
    assert (looker.login_attempts, looker.logins) == (1, 1)  # sudo is not a POST /login


async def test_sudo_login_refusals(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Sudo needs a token (401), an admin (403 Permission Denied) and a known user (404)."""
    analytics, admin = await login(http, looker), await login(http, looker, "admin")
    assert (await call(http, looker, "POST", f"{V4}/login/3")).status == 401
    assert_error(
        await call(http, looker, "POST", f"{V4}/login/3", analytics), 403, "Permission Denied"
    )
    assert_error(await call(http, looker, "POST", f"{V4}/login/99", admin), 404, "Not found")


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["token", "Token", "Bearer", "bearer", "BEARER"])
async def test_both_auth_schemes_in_any_case(
    http: aiohttp.ClientSession, looker: LookerEmulator, scheme: str
) -> None:
    """`Authorization: token X` and `Bearer X` both authenticate, whatever the scheme's case."""
    token = await login(http, looker)
    reply = await call(http, looker, "GET", f"{V4}/user", token, scheme=scheme)
    assert (reply.status, reply.body["id"]) == (200, "2")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "token nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "token"},
    ],
)
async def test_missing_or_unknown_token_is_401(
    http: aiohttp.ClientSession, looker: LookerEmulator, headers: dict[str, str]
) -> None:
    """No token, an unknown one or another scheme answer 401 Requires authentication."""
    async with http.get(looker.url(f"{V4}/user"), headers=headers) as resp:
        assert resp.status == 401
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "message": "Requires authentication.",
            "documentation_url": DOCS,
        }
    assert looker.audit[-1].user_id is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{V4}/nope"),
        ("GET", "/api/5.0/user"),
        ("GET", "/nope"),
        ("PATCH", f"{V4}/user"),
        ("POST", "/api/login"),
        ("GET", f"{V4}/looks/1/extra"),
    ],
)
async def test_unknown_api_path_is_404_json(
    http: aiohttp.ClientSession, looker: LookerEmulator, method: str, path: str
) -> None:
    """Unknown paths and methods answer an audited 404 Error JSON with a plain docs URL."""
    token = await login(http, looker)
    assert_error(await call(http, looker, method, path, token), 404, "Not found")
    assert (looker.audit[-1].path, looker.audit[-1].status) == (path, 404)


# --- session / workspace -------------------------------------------------------------------------


async def test_session_starts_in_production(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /session on a new token: workspace production, sudo_user_id null, a `can` map."""
    reply = await call(http, looker, "GET", f"{V4}/session", await login(http, looker))
    assert reply.status == 200
    assert reply.body == {
        "can": {"view": True, "update": True},
        "workspace_id": "production",
        "sudo_user_id": None,
    }


async def test_patch_session_is_per_token(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """PATCH /session switches only that token's session, not the same user's other tokens."""
    token, other = await login(http, looker), await login(http, looker)
    reply = await set_workspace(http, looker, token, "dev")
    assert (reply.status, reply.body["workspace_id"]) == (200, "dev")
    assert (await call(http, looker, "GET", f"{V4}/session", token)).body["workspace_id"] == "dev"
    assert (await call(http, looker, "GET", f"{V4}/session", other)).body[
        "workspace_id"
    ] == "production"
    assert (await set_workspace(http, looker, token, "production")).body[
        "workspace_id"
    ] == "production"
    assert looker.workspace_of(token) == "production"


async def test_patch_session_rejects_unknown_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """PATCH /session to neither dev nor production is a 422 ValidationError; nothing changes."""
    token = await login(http, looker)
    reply = await set_workspace(http, looker, token, "staging")
    assert reply.status == 422
    assert reply.body["message"] == "Validation Failed"
    assert reply.body["documentation_url"] == DOCS
    [detail] = reply.body["errors"]
    assert (detail["field"], detail["code"]) == ("workspace_id", "invalid")
    assert "staging" in detail["message"]
    assert detail["documentation_url"] == DOCS
    assert looker.workspace_of(token) == "production"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is required"),
        (b"{not json", "Request body is not valid JSON"),
        (b'["dev"]', "Request body must be a JSON object"),
    ],
)
async def test_patch_session_bad_body_is_400(
    http: aiohttp.ClientSession, looker: LookerEmulator, body: bytes, message: str
) -> None:
    """A missing, non-JSON or non-object PATCH /session body answers 400 Error."""
    token = await login(http, looker)
    headers = {"Content-Type": "application/json"}
    reply = await call(http, looker, "PATCH", f"{V4}/session", token, data=body, headers=headers)
    assert_error(reply, 400, message)


async def test_patch_session_ignores_read_only_fields(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """`can` and `sudo_user_id` in a PATCH body are ignored; only workspace_id is writable."""
    token = await login(http, looker)
    body = {"workspace_id": "dev", "sudo_user_id": "1", "can": {"x": True}}
    reply = await call(http, looker, "PATCH", f"{V4}/session", token, json=body)
    assert reply.body == {
        "can": {"view": True, "update": True},
        "workspace_id": "dev",
        "sudo_user_id": None,
    }


async def test_session_patches_count_every_outcome(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """session_patches counts each PATCH /session: success, 422, 400 and 401 alike."""
    token = await login(http, looker)
    await set_workspace(http, looker, token, "dev")
    await set_workspace(http, looker, token, "nowhere")
    await call(http, looker, "PATCH", f"{V4}/session", token, data=b"")
    await set_workspace(http, looker, "bogus", "dev")
    assert looker.session_patches == 4
    assert [e.status for e in looker.audit_paths("/session")] == [200, 422, 400, 401]


async def test_audit_records_workspace_before_the_patch(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """The PATCH's audit entry shows the workspace it started in; later calls show the new one."""
    token = await login(http, looker)
    await set_workspace(http, looker, token, "dev")
    await call(http, looker, "GET", f"{V4}/user", token)
    await set_workspace(http, looker, token, "production")
    assert [(e.method, e.workspace) for e in looker.audit[1:]] == [
        ("PATCH", "production"),
        ("GET", "dev"),
        ("PATCH", "dev"),
    ]


# --- workspace-dependent content ------------------------------------------------------------------


async def test_me_reports_user_and_session_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /user returns the token's user; ui_state shows its workspace and branch."""
    token = await login(http, looker, "marketing")
    prod = (await call(http, looker, "GET", f"{V4}/user", token)).body
    assert (prod["id"], prod["display_name"]) == ("4", "Marketing")
    assert prod["ui_state"] == {"workspace_id": "production", "git_branch": "main"}
    await set_workspace(http, looker, token, "dev")
    dev = (await call(http, looker, "GET", f"{V4}/user", token)).body
    assert dev["ui_state"] == {"workspace_id": "dev", "git_branch": "dev-marketing"}


async def test_lookml_models_differ_by_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Dev shows the dev-only model "sandbox" and explore "orders_wip"; production does not."""
    prod, dev = await login(http, looker), await dev_token(http, looker)

    async def explores(token: str) -> dict[str, list[str]]:
        models = (await call(http, looker, "GET", f"{V4}/lookml_models", token)).body
        return {m["name"]: [e["name"] for e in m["explores"]] for m in models}

    assert await explores(prod) == {"sales": ["orders", "customers"]}
    assert await explores(dev) == {
        "sales": ["orders", "customers", "orders_wip"],
        "sandbox": ["experiments"],
    }
    assert (await call(http, looker, "GET", f"{V4}/lookml_models/sandbox", prod)).status == 404
    sandbox = await call(http, looker, "GET", f"{V4}/lookml_models/sandbox", dev)
    assert (sandbox.status, sandbox.body["project_name"]) == (200, "sandbox")
    wip = f"{V4}/lookml_models/sales/explores/orders_wip"
    assert (await call(http, looker, "GET", wip, prod)).status == 404
    explore = (await call(http, looker, "GET", wip, dev)).body
    assert explore["fields"]["dimensions"][0]["name"] == "orders_wip.id"


async def test_look_and_dashboard_titles_differ_by_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Look and dashboard titles carry " (dev)" in the dev workspace; unknown ids are 404."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    assert (await call(http, looker, "GET", f"{V4}/looks/1", prod)).body["title"] == "Revenue"
    assert (await call(http, looker, "GET", f"{V4}/looks/1", dev)).body["title"] == "Revenue (dev)"
    board = f"{V4}/dashboards/1"
    assert (await call(http, looker, "GET", board, prod)).body["title"] == "Sales Overview"
    assert (await call(http, looker, "GET", board, dev)).body["title"] == "Sales Overview (dev)"
    assert_error(await call(http, looker, "GET", f"{V4}/looks/99", prod), 404, "Not found")
    assert_error(await call(http, looker, "GET", f"{V4}/dashboards/99", prod), 404, "Not found")


async def test_fields_parameter_keeps_named_keys(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """`?fields=a,b` keeps only those top-level keys, for objects and for lists."""
    token = await login(http, looker)
    look = await call(http, looker, "GET", f"{V4}/looks/1?fields=id,title", token)
    assert look.body == {"id": "1", "title": "Revenue"}
    models = await call(http, looker, "GET", f"{V4}/lookml_models?fields=name", token)
    assert models.body == [{"name": "sales"}]


async def test_workspaces_list_production_and_dev(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /workspaces lists production and dev, each with its projects; unknown ids are 404."""
    token = await login(http, looker)
    reply = await call(http, looker, "GET", f"{V4}/workspaces", token)
    assert {w["id"]: [p["id"] for p in w["projects"]] for w in reply.body} == {
        "production": ["sales"],
        "dev": ["sales", "sandbox"],
    }
    assert (await call(http, looker, "GET", f"{V4}/workspaces/dev", token)).body["id"] == "dev"
    assert (await call(http, looker, "GET", f"{V4}/workspaces/qa", token)).status == 404


# --- queries -------------------------------------------------------------------------------------


async def create_query(
    http: aiohttp.ClientSession, looker: LookerEmulator, token: str, **body: Any
) -> Reply:
    query = {"model": "sales", "view": "orders", "fields": ["orders.id", "orders.total"], **body}
    return await call(http, looker, "POST", f"{V4}/queries", token, json=query)


async def test_create_query_is_remembered(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """POST /queries returns the query with an id; GET /queries/{id} returns it again."""
    token = await login(http, looker)
    created = await create_query(http, looker, token, limit=10)
    assert created.status == 200
    body = created.body
    assert (body["model"], body["view"], body["fields"], body["limit"]) == (
        "sales",
        "orders",
        ["orders.id", "orders.total"],
        "10",
    )
    fetched = await call(http, looker, "GET", f"{V4}/queries/{body['id']}", token)
    assert fetched.body == body
    assert (await call(http, looker, "GET", f"{V4}/queries/999", token)).status == 404


async def test_create_query_validation(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """POST /queries needs model and view (422); a dev-only model exists only in dev."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    missing = await call(http, looker, "POST", f"{V4}/queries", prod, json={"view": "orders"})
    assert (missing.status, missing.body["errors"][0]["field"]) == (422, "model")
    sandbox = await create_query(http, looker, prod, model="sandbox", view="experiments")
    assert (sandbox.status, sandbox.body["errors"][0]["code"]) == (422, "not_found")
    assert (
        await create_query(http, looker, dev, model="sandbox", view="experiments")
    ).status == 200
    bad = await create_query(http, looker, prod, fields="orders.id")
    assert (bad.status, bad.body["errors"][0]["field"]) == (422, "fields")


async def test_run_query_json_rows_show_the_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Running the same query as json gives rows whose `_workspace` is the caller's workspace."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    query_id = (await create_query(http, looker, prod, limit=3)).body["id"]
    path = f"{V4}/queries/{query_id}/run/json"
    rows = (await call(http, looker, "GET", path, prod)).body
    assert rows == [
        {
            "_workspace": "production",
            "orders.id": f"orders.id {i}",
            "orders.total": f"orders.total {i}",
        }
        for i in range(3)
    ]
    assert {r["_workspace"] for r in (await call(http, looker, "GET", path, dev)).body} == {"dev"}
    assert len((await call(http, looker, "GET", f"{path}?limit=7", dev)).body) == 7


async def test_run_query_csv_is_chunked_and_shows_the_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """csv results are streamed with chunked encoding; the first column is the workspace."""
    token = await dev_token(http, looker)
    query_id = (await create_query(http, looker, token, limit=2)).body["id"]
    async with http.get(
        looker.url(f"{V4}/queries/{query_id}/run/csv"), headers={"Authorization": f"token {token}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.content_type == "text/csv"
        text = await resp.text()
    assert text == (
        "_workspace,orders.id,orders.total\n"
        "dev,orders.id 0,orders.total 0\n"
        "dev,orders.id 1,orders.total 1\n"
    )


async def _raw_exchange(looker: LookerEmulator, request: bytes) -> bytes:
    """Send ``request`` on a fresh socket that asks to close; everything the emulator wrote."""
    host, port = looker.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.parametrize("path", [f"{V4}/user", "run/csv"])
async def test_head_is_answered_like_get_without_a_body(
    http: aiohttp.ClientSession, looker: LookerEmulator, path: str
) -> None:
    """HEAD on a GET endpoint answers its status and headers with no body bytes at all (real
    Looker does; the proxy's HEAD call type runs against the emulator), JSON or streamed."""
    token = await dev_token(http, looker)
    if path == "run/csv":
        query_id = (await create_query(http, looker, token, limit=2)).body["id"]
        path = f"{V4}/queries/{query_id}/run/csv"
    head = (
        f"{path} HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"
    )
    got = await _raw_exchange(looker, b"HEAD " + head.encode())
    status_line, _, rest = got.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", got[:200]
    assert rest.endswith(b"\r\n\r\n"), "nothing after the head"
    assert rest.count(b"\r\n\r\n") == 1
    get = await _raw_exchange(looker, b"GET " + head.encode())
    content_type = [h for h in get.split(b"\r\n") if h.lower().startswith(b"content-type:")]
    assert content_type
    assert content_type[0] in rest.split(b"\r\n")
    assert looker.audit[-2].method == "HEAD"
    assert looker.audit[-2].status == 200


async def test_run_query_txt_and_sql(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """txt results are tab-separated; sql shows the generated SQL with the workspace."""
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token, limit=1)).body["id"]
    txt = await call(http, looker, "GET", f"{V4}/queries/{query_id}/run/txt", token)
    assert txt.body.splitlines()[1] == "production\torders.id 0\torders.total 0"
    sql = await call(http, looker, "GET", f"{V4}/queries/{query_id}/run/sql", token)
    assert sql.body.startswith("-- workspace: production\nSELECT orders.id, orders.total")


async def test_run_query_refusals(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Unknown query 404, bad format or emulator_bytes 400, dev-only model 404 in production."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    query_id = (await create_query(http, looker, prod)).body["id"]
    run = f"{V4}/queries/{query_id}/run"
    assert (await call(http, looker, "GET", f"{V4}/queries/999/run/json", prod)).status == 404
    assert (await call(http, looker, "GET", f"{run}/xlsx", prod)).status == 400
    assert (await call(http, looker, "GET", f"{run}/csv?emulator_bytes=-1", prod)).status == 400
    assert (await call(http, looker, "GET", f"{run}/json?emulator_bytes=10", prod)).status == 400
    sandbox = (await create_query(http, looker, dev, model="sandbox", view="experiments")).body
    assert (
        await call(http, looker, "GET", f"{V4}/queries/{sandbox['id']}/run/json", prod)
    ).status == 404


async def read_all(resp: aiohttp.ClientResponse) -> tuple[int, bytes]:
    """Total size of a body read in chunks, and its first 256 bytes."""
    size, head = 0, b""
    async for chunk in resp.content.iter_chunked(1 << 20):
        if len(head) < 256:
            head = (head + chunk)[:256]
        size += len(chunk)
    return size, head


@pytest.mark.parametrize("size", [0, 5, 64, 256 * 1024, 3 * 256 * 1024 + 17])
async def test_emulator_bytes_streams_exactly_n_bytes(
    http: aiohttp.ClientSession, looker: LookerEmulator, size: int
) -> None:
    """`?emulator_bytes=N` on a csv run streams exactly N bytes: a header, then workspace rows."""
    token = await dev_token(http, looker)
    query_id = (await create_query(http, looker, token)).body["id"]
    url = looker.url(f"{V4}/queries/{query_id}/run/csv?emulator_bytes={size}")
    async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        total, head = await read_all(resp)
    assert total == size
    expected = b"_workspace,orders.id,orders.total\ndev,xxxxxxxx"
    assert head[: min(size, len(expected))] == expected[:size]


@pytest.mark.slow
async def test_emulator_bytes_one_gib_with_flat_memory(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A 1 GiB csv result streams completely while the process grows by far less than that."""
    size = 1 << 30
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token)).body["id"]
    url = looker.url(f"{V4}/queries/{query_id}/run/csv?emulator_bytes={size}")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
        total, head = await read_all(resp)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert total == size
    assert head.startswith(b"_workspace,orders.id,orders.total\nproduction,")
    assert grown_mib < 100


# --- explore fields and query tasks (what spectacles sql calls) --------------------------------


async def test_explore_fields_are_lookml_model_explore_fields(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """`?fields=fields` gives dimensions and measures with the keys spectacles reads."""
    token = await login(http, looker)
    path = f"{V4}/lookml_models/sales/explores/orders?fields=fields"
    body = (await call(http, looker, "GET", path, token)).body
    assert list(body) == ["fields"]
    dimensions = body["fields"]["dimensions"]
    assert [d["name"] for d in dimensions] == ["orders.id", "orders.created_date"]
    first = dimensions[0]
    assert (first["type"], first["category"], first["measure"], first["hidden"]) == (
        "number",
        "dimension",
        False,
        False,
    )
    assert (first["tags"], first["sql"]) == ([], "${TABLE}.id")
    assert first["lookml_link"] == "/projects/sales/files/orders.view.lkml?line=1"
    [count] = body["fields"]["measures"]
    assert (count["name"], count["category"], count["measure"]) == ("orders.count", "measure", True)


async def create_task(
    http: aiohttp.ClientSession,
    looker: LookerEmulator,
    token: str,
    query_id: str,
    result_format: str = "json_bi",
    params: str = "",
) -> Reply:
    body = {"query_id": query_id, "result_format": result_format}
    return await call(http, looker, "POST", f"{V4}/query_tasks{params}", token, json=body)


async def multi_results(
    http: aiohttp.ClientSession, looker: LookerEmulator, token: str, *task_ids: str
) -> Any:
    path = f"{V4}/query_tasks/multi_results?query_task_ids={','.join(task_ids)}"
    reply = await call(http, looker, "GET", path, token)
    assert reply.status == 200, reply.body
    return reply.body


async def test_query_task_runs_then_completes_in_its_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A task is "added", reads "running" once, then has json_bi rows of its own workspace."""
    dev = await dev_token(http, looker)
    query_id = (await create_query(http, looker, dev, limit=2)).body["id"]
    created = await create_task(http, looker, dev, query_id, params="?fields=id&cache=false")
    assert list(created.body) == ["id"]
    task_id = created.body["id"]
    assert await multi_results(http, looker, dev, task_id) == {task_id: {"status": "running"}}
    done = (await multi_results(http, looker, dev, task_id))[task_id]
    assert done["status"] == "complete"
    metadata, rows = done["data"]["metadata"], done["data"]["rows"]
    assert metadata["sql"].startswith("-- workspace: dev\nSELECT orders.id, orders.total")
    assert [d["name"] for d in metadata["fields"]["dimensions"]] == ["orders.id", "orders.total"]
    assert [r["_workspace"] for r in rows] == ["dev", "dev"]
    await set_workspace(http, looker, dev, "production")  # a finished task keeps its workspace
    again = (await multi_results(http, looker, dev, task_id))[task_id]
    assert again["data"]["rows"] == rows


async def test_query_task_formats_filters_and_force_production(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """`filter_expression` "1=2" selects no rows; json, csv and sql work; force_production."""
    looker.query_task_polls = 0
    dev = await dev_token(http, looker)
    empty = (await create_query(http, looker, dev, filter_expression="1=2", limit=0)).body
    assert empty["filter_expression"] == "1=2"
    task = (await create_task(http, looker, dev, empty["id"])).body
    assert task["status"] == "added"
    result = (await multi_results(http, looker, dev, task["id"]))[task["id"]]
    assert result["data"]["rows"] == []
    assert "WHERE (1=2)" in result["data"]["metadata"]["sql"]
    query_id = (await create_query(http, looker, dev, limit=1)).body["id"]
    tasks = {
        fmt: (await create_task(http, looker, dev, query_id, fmt)).body["id"]
        for fmt in ("json", "csv", "sql")
    }
    forced = await create_task(http, looker, dev, query_id, "json", "?force_production=true")
    results = await multi_results(http, looker, dev, *tasks.values(), forced.body["id"])
    assert results[tasks["json"]]["data"][0]["_workspace"] == "dev"
    assert results[tasks["csv"]]["data"].splitlines()[1].startswith("dev,")
    assert results[tasks["sql"]]["data"].startswith("-- workspace: dev")
    assert results[forced.body["id"]]["data"][0]["_workspace"] == "production"


async def test_query_task_for_an_explore_missing_in_its_workspace_errors(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """The dev-only explore fails in production: json_bi error rows, json_detail errors."""
    looker.query_task_polls = 0
    prod = await login(http, looker)
    query_id = (await create_query(http, looker, prod, view="orders_wip")).body["id"]
    bi = (await create_task(http, looker, prod, query_id)).body["id"]
    detail = (await create_task(http, looker, prod, query_id, "json_detail")).body["id"]
    results = await multi_results(http, looker, prod, bi, detail)
    message = "Explore 'sales/orders_wip' not found in the production workspace"
    assert results[bi]["status"] == "error"
    assert results[bi]["data"]["rows"] == [{"looker_error": message}]
    assert results[detail]["data"]["errors"][0]["message"] == message
    results_path = f"{V4}/query_tasks/{bi}/results"
    assert_error(await call(http, looker, "GET", results_path, prod), 400, message)


async def test_query_task_refusals(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Missing fields or a bad format 422, unsupported format 400, unknown query 404."""
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token)).body["id"]
    post = f"{V4}/query_tasks"
    missing = await call(http, looker, "POST", post, token, json={"result_format": "json"})
    assert (missing.status, missing.body["errors"][0]["field"]) == (422, "query_id")
    bad = await create_task(http, looker, token, query_id, "pdf")
    assert (bad.status, bad.body["errors"][0]["field"]) == (422, "result_format")
    assert (await create_task(http, looker, token, query_id, "xlsx")).status == 400
    assert (await create_task(http, looker, token, "999")).status == 404
    no_ids = await call(http, looker, "GET", f"{V4}/query_tasks/multi_results", token)
    assert no_ids.status == 400


async def test_query_tasks_belong_to_their_user(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Another user's task is "missing" in multi_results and 404 elsewhere."""
    analytics, finance = await login(http, looker), await login(http, looker, "finance")
    query_id = (await create_query(http, looker, analytics)).body["id"]
    task_id = (await create_task(http, looker, analytics, query_id)).body["id"]
    assert await multi_results(http, looker, finance, task_id) == {task_id: {"status": "missing"}}
    for method, path in (
        ("GET", f"/query_tasks/{task_id}"),
        ("GET", f"/query_tasks/{task_id}/results"),
        ("DELETE", f"/running_queries/{task_id}"),
    ):
        assert (await call(http, looker, method, f"{V4}{path}", finance)).status == 404


async def test_running_queries_can_be_listed_and_killed(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A running task is listed and can be killed (204); a finished one cannot (404)."""
    looker.query_task_polls = 5
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token)).body["id"]
    task_id = (await create_task(http, looker, token, query_id)).body["id"]
    task_path = f"{V4}/query_tasks/{task_id}"
    assert (await call(http, looker, "GET", task_path, token)).body["status"] == "running"
    assert (await call(http, looker, "GET", f"{task_path}/results", token)).status == 202
    running = (await call(http, looker, "GET", f"{V4}/running_queries", token)).body
    assert [(r["query_task_id"], r["status"]) for r in running] == [(task_id, "running")]
    kill = f"{V4}/running_queries/{task_id}"
    assert (await call(http, looker, "DELETE", kill, token)).status == 204
    assert await multi_results(http, looker, token, task_id) == {task_id: {"status": "killed"}}
    assert (await call(http, looker, "GET", f"{V4}/running_queries", token)).body == []
    assert (await call(http, looker, "DELETE", kill, token)).status == 404


async def test_query_task_results_once_complete(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /query_tasks/{id}/results: json as JSON, csv as text, once the task is complete."""
    looker.query_task_polls = 0
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token, limit=1)).body["id"]
    json_task = (await create_task(http, looker, token, query_id, "json")).body["id"]
    csv_task = (await create_task(http, looker, token, query_id, "csv")).body["id"]
    rows = (await call(http, looker, "GET", f"{V4}/query_tasks/{json_task}/results", token)).body
    assert rows[0]["_workspace"] == "production"
    text = (await call(http, looker, "GET", f"{V4}/query_tasks/{csv_task}/results", token)).body
    assert text.splitlines()[0] == "_workspace,orders.id,orders.total"
    task = (await call(http, looker, "GET", f"{V4}/query_tasks/{json_task}", token)).body
    assert (task["status"], task["query_id"], task["result_format"]) == (
        "complete",
        query_id,
        "json",
    )


# --- projects and git ----------------------------------------------------------------------------


async def test_projects_differ_by_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /projects and /projects/{id} show the dev-only project "sandbox" only in dev."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    assert [p["id"] for p in (await call(http, looker, "GET", f"{V4}/projects", prod)).body] == [
        "sales"
    ]
    listed = (await call(http, looker, "GET", f"{V4}/projects", dev)).body
    assert [p["id"] for p in listed] == ["sales", "sandbox"]
    sales = (await call(http, looker, "GET", f"{V4}/projects/sales", prod)).body
    assert sales["git_production_branch_name"] == "main"
    assert (await call(http, looker, "GET", f"{V4}/projects/sandbox", prod)).status == 404
    assert (await call(http, looker, "GET", f"{V4}/projects/sandbox", dev)).status == 200


async def test_git_branch_follows_the_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET git_branch: "main" (production) in production, the user's "dev-<name>" in dev."""
    prod, dev = await login(http, looker, "finance"), await dev_token(http, looker, "finance")
    path = f"{V4}/projects/sales/git_branch"
    main = (await call(http, looker, "GET", path, prod)).body
    assert (main["name"], main["is_production"], main["readonly"]) == ("main", True, True)
    mine = (await call(http, looker, "GET", path, dev)).body
    assert (mine["name"], mine["personal"], mine["readonly"]) == ("dev-finance", True, False)
    assert mine["owner_name"] == "Finance"


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_branch_changes_only_in_dev(
    http: aiohttp.ClientSession, looker: LookerEmulator, method: str
) -> None:
    """PUT/POST git_branch in production answer 422 "Only allowed in development mode"."""
    token = await login(http, looker)
    path = f"{V4}/projects/sales/git_branch"
    reply = await call(http, looker, method, path, token, json={"name": "feature"})
    assert reply.status == 422
    assert reply.body["message"].startswith("Only allowed in development mode")


async def test_branch_state_is_per_user_and_shared_by_their_tokens(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A branch checked out with one token is current for all that user's tokens, not others'."""
    first, second = await dev_token(http, looker), await dev_token(http, looker)
    finance = await dev_token(http, looker, "finance")
    path = f"{V4}/projects/sales/git_branch"
    created = await call(http, looker, "POST", path, first, json={"name": "feature-x"})
    assert (created.status, created.body["name"]) == (200, "feature-x")
    assert (await call(http, looker, "GET", path, second)).body["name"] == "feature-x"
    assert (await call(http, looker, "GET", path, finance)).body["name"] == "dev-finance"
    back = await call(http, looker, "PUT", path, second, json={"name": "dev-analytics"})
    assert (back.status, back.body["name"]) == (200, "dev-analytics")
    assert (await call(http, looker, "GET", path, first)).body["name"] == "dev-analytics"
    prod = await login(http, looker)
    assert (await call(http, looker, "GET", path, prod)).body["name"] == "main"


async def test_checkout_of_production_branch_gives_personal_branch(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """PUT git_branch {"name": "main"} in dev silently checks out the user's own dev branch."""
    token = await dev_token(http, looker, "marketing")
    path = f"{V4}/projects/sales/git_branch"
    await call(http, looker, "POST", path, token, json={"name": "tmp"})
    reply = await call(http, looker, "PUT", path, token, json={"name": "main"})
    assert (reply.status, reply.body["name"]) == (200, "dev-marketing")


async def test_branch_errors(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Creating an existing branch is 409, checking out an unknown one 404, a nameless POST 422."""
    token = await dev_token(http, looker)
    path = f"{V4}/projects/sales/git_branch"
    assert (await call(http, looker, "POST", path, token, json={"name": "main"})).status == 409
    assert (await call(http, looker, "PUT", path, token, json={"name": "ghost"})).status == 404
    assert (await call(http, looker, "POST", path, token, json={})).status == 422
    reset = await call(http, looker, "PUT", path, token, json={"name": "dev-finance", "ref": "abc"})
    assert reset.status == 422  # another user's personal branch is read-only


async def test_git_branches_list_find_and_delete(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """git_branches lists production and personal branches; created ones can be found, deleted."""
    token = await dev_token(http, looker)
    base = f"{V4}/projects/sales"
    await call(http, looker, "POST", f"{base}/git_branch", token, json={"name": "feature/y"})
    listed = (await call(http, looker, "GET", f"{base}/git_branches", token)).body
    names = {b["name"]: (b["personal"], b["readonly"]) for b in listed}
    assert names["main"] == (False, True)
    assert names["dev-analytics"] == (True, False)
    assert names["dev-finance"] == (True, True)
    assert names["feature/y"] == (False, False)
    assert (await call(http, looker, "GET", f"{base}/git_branch/feature/y", token)).status == 200
    current = await call(http, looker, "DELETE", f"{base}/git_branch/feature/y", token)
    assert current.status == 422  # checked out
    await call(http, looker, "PUT", f"{base}/git_branch", token, json={"name": "dev-analytics"})
    assert (await call(http, looker, "DELETE", f"{base}/git_branch/feature/y", token)).status == 204
    assert (await call(http, looker, "GET", f"{base}/git_branch/feature/y", token)).status == 404


async def test_manifest_and_validate(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """manifest and validate (GET cached, POST fresh) answer; the digest differs by workspace."""
    prod, dev = await login(http, looker), await dev_token(http, looker)
    base = f"{V4}/projects/sales"
    manifest = (await call(http, looker, "GET", f"{base}/manifest", prod)).body
    assert (manifest["name"], manifest["imports"]) == ("sales", [])
    cached = (await call(http, looker, "GET", f"{base}/validate", prod)).body
    assert (cached["errors"], cached["stale"]) == ([], False)
    fresh = (await call(http, looker, "POST", f"{base}/validate", prod)).body
    assert "stale" not in fresh
    in_dev = (await call(http, looker, "POST", f"{base}/validate", dev)).body
    assert in_dev["project_digest"] != fresh["project_digest"]


async def test_restart_keeps_branches_but_drops_tokens(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """restart(): every token answers 401, but checked-out dev branches (git state) persist."""
    token = await dev_token(http, looker)
    path = f"{V4}/projects/sales/git_branch"
    await call(http, looker, "POST", path, token, json={"name": "kept"})
    looker.restart()
    assert (await call(http, looker, "GET", path, token)).status == 401
    again = await dev_token(http, looker)
    assert (await call(http, looker, "GET", path, again)).body["name"] == "kept"


# --- token lifetime ------------------------------------------------------------------------------


async def test_token_expires_after_token_ttl(
    http: aiohttp.ClientSession, make_looker: MakeLooker
) -> None:
    """With the injected clock, a token works until token_ttl seconds have passed, then 401."""
    clock = FakeClock()
    looker = await make_looker(token_ttl=120, clock=clock)
    token = await login(http, looker)
    clock.now += 119.9
    assert (await call(http, looker, "GET", f"{V4}/user", token)).status == 200
    clock.now += 0.1
    assert (await call(http, looker, "GET", f"{V4}/user", token)).status == 401
    assert looker.workspace_of(token) is None


async def test_expires_in_reports_token_ttl(
    http: aiohttp.ClientSession, make_looker: MakeLooker
) -> None:
    """expires_in in the AccessToken is the configured token_ttl."""
    looker = await make_looker(token_ttl=77)
    data = {"client_id": "admin-client-id", "client_secret": "admin-client-secret"}
    reply = await call(http, looker, "POST", f"{V4}/login", data=data)
    assert reply.body["expires_in"] == 77


async def test_token_ttl_override_kills_tokens_early(
    http: aiohttp.ClientSession, make_looker: MakeLooker
) -> None:
    """faults.token_ttl_override: tokens die that early while expires_in still says token_ttl."""
    clock = FakeClock()
    looker = await make_looker(clock=clock)
    looker.faults.token_ttl_override = 5
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    reply = await call(http, looker, "POST", f"{V4}/login", data=data)
    assert reply.body["expires_in"] == 3600
    clock.now += 5
    assert (await call(http, looker, "GET", f"{V4}/user", reply.body["access_token"])).status == 401


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (429, 7), (503, 2)])
async def test_login_failures_fail_the_next_n_logins(
    http: aiohttp.ClientSession, looker: LookerEmulator, status: int, retry_after: int | None
) -> None:
    """faults.login_failures=N: the next N logins answer the failure status (+ Retry-After)."""
    looker.faults.login_failures = 2
    looker.faults.login_failure_status = status
    looker.faults.login_retry_after = retry_after
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    for _ in range(2):
        reply = await call(http, looker, "POST", f"{V4}/login", data=data)
        assert reply.status == status
        assert reply.body["documentation_url"] == DOCS
        assert reply.headers.get("Retry-After") == (
            None if retry_after is None else str(retry_after)
        )
    assert (await call(http, looker, "POST", f"{V4}/login", data=data)).status == 200
    assert (looker.login_attempts, looker.logins, looker.faults.login_failures) == (3, 1, 0)


async def test_hold_login_waits_for_the_event(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.hold_login: logins arrive (login_started is set) but answer once the event is set."""
    looker.faults.hold_login = asyncio.Event()
    logins = asyncio.gather(*(login(http, looker) for _ in range(3)))
    await looker.login_started.wait()
    assert looker.logins == 0
    assert looker.audit[0] == AuditEntry("POST", f"{V4}/login", None, None, None, 0, f"{V4}/login")
    looker.faults.hold_login.set()
    tokens = await logins
    assert len(set(tokens)) == 3
    assert (looker.login_attempts, looker.logins) == (3, 3)
    assert [e.status for e in looker.audit] == [200, 200, 200]


async def test_hold_session_patch_waits_for_the_event(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.hold_session_patch: the PATCH arrives (event set) but applies once released."""
    token = await login(http, looker)
    looker.faults.hold_session_patch = asyncio.Event()
    headers = {"Authorization": f"token {token}"}
    patch = asyncio.ensure_future(
        http.patch(looker.url(f"{V4}/session"), json={"workspace_id": "dev"}, headers=headers)
    )
    await looker.session_patch_started.wait()
    assert looker.workspace_of(token) == "production"
    looker.faults.hold_session_patch.set()
    resp = await patch
    assert resp.status == 200
    assert looker.workspace_of(token) == "dev"


async def test_login_timeout_hangs_until_the_client_gives_up(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.login_timeout: a failing login never answers, the client times out; next one works."""
    looker.faults.login_failures = 1
    looker.faults.login_timeout = True
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await http.post(looker.url(f"{V4}/login"), data=data, timeout=timeout)
    assert looker.login_started.is_set()
    await login(http, looker)
    assert (looker.login_attempts, looker.logins) == (2, 1)


async def test_restart_ends_hung_and_held_logins(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """restart() releases a hung failing login (its failure status) and a held one (503)."""
    looker.faults.login_failures = 1
    looker.faults.login_timeout = True
    looker.faults.login_failure_status = 500
    looker.faults.hold_login = asyncio.Event()  # never set
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    hung = asyncio.create_task(call(http, looker, "POST", f"{V4}/login", data=data))
    await looker.login_started.wait()
    looker.login_started.clear()
    held = asyncio.create_task(call(http, looker, "POST", f"{V4}/login", data=data))
    await looker.login_started.wait()
    looker.restart()
    assert (await hung).status == 500
    assert (await held).status == 503
    assert looker.logins == 0


async def test_shutdown_ends_a_held_login(
    http: aiohttp.ClientSession, make_looker: MakeLooker
) -> None:
    """Stopping the server answers a held login at once instead of leaving it waiting."""
    looker = await make_looker()
    looker.faults.hold_login = asyncio.Event()
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    held = asyncio.create_task(call(http, looker, "POST", f"{V4}/login", data=data))
    await looker.login_started.wait()
    assert looker.server is not None
    await asyncio.wait_for(looker.server.close(), timeout=10)
    assert (await held).status == 503


@pytest.mark.parametrize("status", [500, 429, 422])
async def test_patch_session_failures(
    http: aiohttp.ClientSession, looker: LookerEmulator, status: int
) -> None:
    """faults.patch_session_failures=N: the next N PATCHes fail with that status, change nothing."""
    token = await login(http, looker)
    looker.faults.patch_session_failures = 1
    looker.faults.patch_session_status = status
    failed = await set_workspace(http, looker, token, "dev")
    assert failed.status == status
    assert failed.body["documentation_url"] == DOCS
    if status == 422:
        assert failed.body["errors"][0]["field"] == "workspace_id"
    assert looker.workspace_of(token) == "production"
    assert (await set_workspace(http, looker, token, "dev")).status == 200
    assert looker.workspace_of(token) == "dev"
    assert looker.session_patches == 2


async def test_a_user_who_may_not_develop_cannot_enter_dev(
    http: aiohttp.ClientSession, make_looker: MakeLooker
) -> None:
    """A user with can_develop false: PATCH /session to dev is a 422 ValidationError naming
    the permission; production stays open to it."""
    users = [replace(u, can_develop=False) if u.id == "2" else u for u in DEFAULT_USERS]
    looker = await make_looker(users=users)
    token = await login(http, looker)
    reply = await set_workspace(http, looker, token, "dev")
    assert reply.status == 422
    assert "may not use the dev workspace (no develop permission)" in str(reply.body)
    assert (await set_workspace(http, looker, token, "production")).status == 200
    assert looker.workspace_of(token) == "production"


async def test_get_faults_shows_the_knobs(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """GET /_emulator/faults: every settable knob and its value, as POST changed it."""
    before = await call(http, looker, "GET", "/_emulator/faults")
    assert before.body == {
        "login_failures": 0,
        "login_failure_status": 500,
        "login_retry_after": None,
        "login_timeout": False,
        "patch_session_failures": 0,
        "patch_session_status": 500,
        "patch_session_wrong_workspace": None,
        "latency_s": 0.0,
        "reset_after_bytes": None,
        "token_ttl_override": None,
    }
    await call(http, looker, "POST", "/_emulator/faults", json={"login_failures": 2})
    after = await call(http, looker, "GET", "/_emulator/faults")
    assert after.body == {**before.body, "login_failures": 2}
    assert looker.audit == [], "admin endpoints are not audited"


async def test_patch_session_wrong_workspace(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.patch_session_wrong_workspace: PATCH answers 200 but leaves that workspace."""
    token = await login(http, looker)
    looker.faults.patch_session_wrong_workspace = "production"
    reply = await set_workspace(http, looker, token, "dev")
    assert (reply.status, reply.body["workspace_id"]) == (200, "production")
    assert (await call(http, looker, "GET", f"{V4}/session", token)).body[
        "workspace_id"
    ] == "production"


async def test_latency_delays_every_api_call(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.latency_s delays each answer, authenticated or not."""
    looker.faults.latency_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await call(http, looker, "GET", "/versions")).status == 200
    assert (await call(http, looker, "GET", f"{V4}/user")).status == 401
    assert loop.time() - started >= 0.4


async def test_reset_after_bytes_breaks_the_next_stream(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """faults.reset_after_bytes=N: the next stream breaks after N bytes; later ones are whole."""
    token = await login(http, looker)
    query_id = (await create_query(http, looker, token)).body["id"]
    url = looker.url(f"{V4}/queries/{query_id}/run/csv?emulator_bytes=1000000")
    headers = {"Authorization": f"token {token}"}
    looker.faults.reset_after_bytes = 300_000
    received: list[int] = []

    async def consume() -> None:
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(65536):
                received.append(len(chunk))

    with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
        await consume()
    assert sum(received) == 300_000
    assert looker.faults.reset_after_bytes is None
    async with http.get(url, headers=headers) as resp:
        assert (await read_all(resp))[0] == 1_000_000


async def test_revoke_all_tokens(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """revoke_all_tokens(): every issued token answers 401; new logins work."""
    tokens = [await login(http, looker, who) for who in ("analytics", "finance")]
    looker.revoke_all_tokens()
    for token in tokens:
        assert (await call(http, looker, "GET", f"{V4}/session", token)).status == 401
    assert looker.issued_tokens() == tokens  # history survives revocation
    assert (
        await call(http, looker, "GET", f"{V4}/session", await login(http, looker))
    ).status == 200


# --- audit ---------------------------------------------------------------------------------------


async def test_audit_covers_every_request_in_order(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Each request is audited: user, token fingerprint (not the token), workspace, status."""
    token = await login(http, looker, "finance")
    await call(http, looker, "GET", f"{V4}/user", token)
    await call(http, looker, "GET", f"{V4}/user", "wrong")
    await call(http, looker, "GET", f"{V4}/missing", token)
    entries = looker.audit
    assert [(e.method, e.path, e.user_id, e.workspace, e.status) for e in entries] == [
        ("POST", f"{V4}/login", None, None, 200),
        ("GET", f"{V4}/user", "3", "production", 200),
        ("GET", f"{V4}/user", None, None, 401),
        ("GET", f"{V4}/missing", None, None, 404),
    ]
    fingerprints = [e.token_fingerprint for e in entries]
    assert fingerprints[0] is None
    assert fingerprints[1] == fingerprints[3] != fingerprints[2]
    assert all(fp is not None and len(fp) == 12 and fp not in token for fp in fingerprints[1:])
    assert looker.audit_paths("/user") == entries[1:3]


# --- admin namespace -----------------------------------------------------------------------------


async def test_admin_audit_and_stats(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """GET /_emulator/audit[?since=N] and /_emulator/stats report state without being audited."""
    token = await login(http, looker)
    await set_workspace(http, looker, token, "dev")
    everything = await call(http, looker, "GET", "/_emulator/audit")
    assert [e["path"] for e in everything.body] == [f"{V4}/login", f"{V4}/session"]
    assert everything.body[1] == {
        "method": "PATCH",
        "path": f"{V4}/session",
        "user_id": "2",
        "token_fingerprint": looker.audit[1].token_fingerprint,
        "workspace": "production",
        "status": 200,
        "target": f"{V4}/session",
    }
    assert len((await call(http, looker, "GET", "/_emulator/audit?since=1")).body) == 1
    assert (await call(http, looker, "GET", "/_emulator/audit?since=x")).status == 400
    stats = (await call(http, looker, "GET", "/_emulator/stats")).body
    assert stats == {
        "login_attempts": 1,
        "logins": 1,
        "session_patches": 1,
        "active_tokens": 1,
        "audit_entries": 2,
    }
    assert len(looker.audit) == 2


async def test_admin_faults(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """POST /_emulator/faults sets fields, ignores hold_login, names bad fields in a 400."""
    body = {"login_failures": 1, "login_failure_status": 503, "latency_s": 0, "hold_login": None}
    reply = await call(http, looker, "POST", "/_emulator/faults", json=body)
    assert reply.status == 200
    assert (reply.body["login_failures"], reply.body["latency_s"]) == (1, 0.0)
    assert looker.faults.hold_login is None
    data = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
    assert (await call(http, looker, "POST", f"{V4}/login", data=data)).status == 503
    unknown = await call(http, looker, "POST", "/_emulator/faults", json={"bogus": 1})
    assert unknown.status == 400
    assert "bogus" in unknown.body["message"]
    typed = await call(http, looker, "POST", "/_emulator/faults", json={"login_failures": "2"})
    assert (typed.status, "login_failures" in typed.body["message"]) == (400, True)
    assert looker.faults.login_failures == 0
    assert looker.audit_paths("faults") == []


async def test_admin_revoke_restart_reset(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """POST /_emulator/revoke and /restart drop tokens; /reset clears audit, counters and faults."""
    for action in ("revoke", "restart"):
        token = await login(http, looker)
        assert (await call(http, looker, "POST", f"/_emulator/{action}")).status == 204
        assert (await call(http, looker, "GET", f"{V4}/user", token)).status == 401
    looker.faults.latency_s = 0.5
    looker.faults.patch_session_failures = 3
    faults = looker.faults
    assert (await call(http, looker, "POST", "/_emulator/reset")).status == 204
    assert looker.audit == []
    assert (looker.login_attempts, looker.logins, looker.session_patches) == (0, 0, 0)
    assert looker.faults is faults
    assert looker.faults == Faults()
    assert not looker.login_started.is_set()


# --- users ---------------------------------------------------------------------------------------


async def test_from_users_file(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """from_users_file reads a YAML list of users; they can log in, ids may be YAML integers."""
    path = tmp_path / "users.yaml"
    path.write_text(
        "- {id: 7, client_id: ops-id, client_secret: ops-secret, display_name: Ops Team}\n"
        "- {id: '8', client_id: boss-id, client_secret: boss-secret, display_name: Boss,"
        " is_admin: true}\n"
    )
    path.write_text(
        path.read_text() + "- {id: 9, client_id: v-id, client_secret: v-secret, display_name: V,"
        " can_develop: false}\n"
    )
    looker = LookerEmulator.from_users_file(str(path), token_ttl=99)
    assert looker.users == (
        ApiUser("7", "ops-id", "ops-secret", "Ops Team"),
        ApiUser("8", "boss-id", "boss-secret", "Boss", is_admin=True),
        ApiUser("9", "v-id", "v-secret", "V", can_develop=False),
    )
    assert looker.token_ttl == 99
    assert looker.authenticate_client("ops-id", "ops-secret") == looker.users[0]
    assert looker.git.current(looker.users[0], "sales").name == "dev-ops-team"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{}", "expected a non-empty YAML list"),
        ("[]", "expected a non-empty YAML list"),
        ("- [1]\n", "entry 0: expected a mapping"),
        ("- {id: '1', client_id: a, display_name: A}\n", "entry 0 (id '1'): 'client_secret'"),
        (
            "- {id: '1', client_id: a, client_secret: b, display_name: A, role: x}\n",
            "unknown key(s) role",
        ),
        (
            "- {id: '1', client_id: a, client_secret: b, display_name: A, is_admin: yes please}\n",
            "is_admin",
        ),
        (
            "- {id: '1', client_id: a, client_secret: b, display_name: A, can_develop: 1}\n",
            "'can_develop' must be true or false",
        ),
        (
            "- {id: '1', client_id: a, client_secret: b, display_name: A}\n"
            "- {id: '1', client_id: c, client_secret: d, display_name: C}\n",
            "entry 1: duplicate id '1'",
        ),
        ("- {id: [unclosed\n", "invalid YAML"),
    ],
)
def test_from_users_file_rejects_bad_input(tmp_path: Path, text: str, problem: str) -> None:
    """Bad users files raise ValueError naming the file and the offending entry."""
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"users\.yaml") as raised:
        LookerEmulator.from_users_file(str(path))
    assert problem in str(raised.value)


def test_from_users_file_missing_file(tmp_path: Path) -> None:
    """A missing users file is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"nope\.yaml: cannot read users file"):
        LookerEmulator.from_users_file(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "users",
    [
        (),
        (ApiUser("1", "a", "s", "A"), ApiUser("1", "b", "s", "B")),
        (ApiUser("1", "a", "s", "A"), ApiUser("2", "a", "s", "B")),
    ],
)
def test_constructor_rejects_empty_or_duplicate_users(users: tuple[ApiUser, ...]) -> None:
    """LookerEmulator needs at least one user, with unique ids and client_ids."""
    with pytest.raises(ValueError, match="LookerEmulator"):
        LookerEmulator(users)


def test_default_users() -> None:
    """DEFAULT_USERS: admin 1, analytics 2, finance 3, marketing 4, with matching credentials."""
    assert [(u.id, u.client_id, u.client_secret, u.is_admin) for u in DEFAULT_USERS] == [
        ("1", "admin-client-id", "admin-client-secret", True),
        ("2", "analytics-client-id", "analytics-client-secret", False),
        ("3", "finance-client-id", "finance-client-secret", False),
        ("4", "marketing-client-id", "marketing-client-secret", False),
    ]
