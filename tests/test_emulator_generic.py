"""The emulator's generated operations over real sockets: ids that exist, request checks as
Looker answers them, items that can be created and read back, and answers that name the
workspace. Every answer checked here is also validated against the spec (tests/openapi.py)."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from harness import Proxy, assert_every_call_pinned
from openapi import problems

from workspace_proxy.emulator import LookerEmulator

V4, V31 = "/api/4.0", "/api/3.1"
DOCS = "https://cloud.google.com/looker/docs/"
VALIDATION_ERROR = {"$ref": "#/components/schemas/ValidationError"}


@dataclass
class Reply:
    status: int
    body: Any
    content_type: str
    raw: bytes


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Client:
    """Calls on the emulator with one caller's token."""

    def __init__(self, http: aiohttp.ClientSession, looker: LookerEmulator, token: str) -> None:
        self.http, self.looker, self.token = http, looker, token

    async def __call__(self, method: str, path: str, **kwargs: Any) -> Reply:
        headers = {"Authorization": f"token {self.token}"}
        async with self.http.request(
            method, self.looker.url(path), headers=headers, **kwargs
        ) as resp:
            raw = await resp.read()
            body = json.loads(raw) if resp.content_type == "application/json" else raw
            return Reply(resp.status, body, resp.content_type, raw)


async def client(
    http: aiohttp.ClientSession, looker: LookerEmulator, workspace: str = "dev", who: str = "2"
) -> Client:
    user = next(u for u in looker.users if u.id == who)
    form = {"client_id": user.client_id, "client_secret": user.client_secret}
    async with http.post(looker.url(f"{V4}/login"), data=form) as resp:
        token = (await resp.json())["access_token"]
    caller = Client(http, looker, token)
    assert (await caller("PATCH", f"{V4}/session", json={"workspace_id": workspace})).status == 200
    return caller


def schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{V4}/connections/nope",
        f"{V4}/folders/999",
        f"{V4}/folders/999/children",  # an item inside an unknown one
        f"{V4}/users/3",  # another user: not visible without see_users
        f"{V4}/projects/nope/files",
        f"{V4}/projects/sandbox/files",  # sandbox is a dev-only project
        f"{V31}/users/abc",  # 3.1 ids are integers
        f"{V4}/looks/99",
    ],
)
async def test_unknown_ids_are_404(
    http: aiohttp.ClientSession, looker: LookerEmulator, path: str
) -> None:
    """An id that does not exist (for this caller, in this workspace) is 404 Not found."""
    caller = await client(http, looker, "production")
    reply = await caller("GET", path)
    assert (reply.status, reply.body) == (404, {"message": "Not found", "documentation_url": DOCS})
    assert (looker.audit[-1].path, looker.audit[-1].status) == (path, 404)


async def test_known_ids_answer(http: aiohttp.ClientSession, looker: LookerEmulator) -> None:
    """Seeded items 1-3, the caller's own user, and dev-only projects in dev answer 200."""
    dev = await client(http, looker, "dev")
    for path in ("/connections/1", "/folders/3/children", "/users/2", "/projects/sandbox/files"):
        assert (await dev("GET", f"{V4}{path}")).status == 200, path
    admin = await client(http, looker, "production", who="1")
    assert (await admin("GET", f"{V4}/users/3")).status == 200  # an admin sees every user


# --- request checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "errors"),
    [
        (
            "/folders",
            {"name": "x"},
            [("parent_id", "missing", "This field is required.")],
        ),
        (
            "/connections",
            {"name": 5, "max_connections": "x", "ssl": "yes"},
            [
                ("name", "invalid", "name must be of type string"),
                ("max_connections", "invalid", "max_connections must be of type integer"),
                ("ssl", "invalid", "ssl must be of type boolean"),
            ],
        ),
        (
            "/mobile/device",
            {"device_token": "t", "device_type": "pager"},
            [("device_type", "invalid", "device_type must be one of: android, ios")],
        ),
        (
            "/alerts",
            {"comparison_type": "EQUAL_TO", "cron": "", "destinations": [{}], "field": {},
             "owner_id": "1", "threshold": 1},
            [
                ("destinations[0].destination_type", "missing", "This field is required."),
                ("field.title", "missing", "This field is required."),
                ("field.name", "missing", "This field is required."),
            ],
        ),
        ("/folders", [], [("body", "invalid", "body must be of type object")]),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_422_validation_errors(
    http: aiohttp.ClientSession,
    looker: LookerEmulator,
    path: str,
    body: Any,
    errors: list[tuple[str, str, str]],
) -> None:
    """Missing required fields, wrong JSON types and values outside an enum are all listed in
    one 422 ValidationError; nothing is created."""
    caller = await client(http, looker)
    reply = await caller("POST", f"{V4}{path}", json=body)
    assert reply.status == 422, reply.body
    assert problems("4.0", VALIDATION_ERROR, reply.body) == []
    assert reply.body["message"] == "Validation Failed"
    found = [(e["field"], e["code"], e["message"]) for e in reply.body["errors"]]
    assert sorted(found) == sorted(errors)
    listed = await caller("GET", f"{V4}{path}") if path == "/folders" else None
    assert listed is None or [f["id"] for f in listed.body] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "message"),
    [
        ("POST", "/folders", {"data": b"{not json"}, "Request body is not valid JSON"),
        ("POST", "/folders", {}, "Request body is required"),
        ("GET", "/projects/sales/files/file", {}, "Missing required parameter 'file_id'"),
        (
            "GET",
            "/folders/search",
            {"params": {"page": "two"}},
            "Parameter 'page' must be an integer",
        ),
    ],
)
async def test_malformed_requests_are_400(
    http: aiohttp.ClientSession,
    looker: LookerEmulator,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    """A body that is not JSON, a missing required body or query parameter, or a query
    parameter of the wrong type is a 400 Error."""
    caller = await client(http, looker)
    reply = await caller(method, f"{V4}{path}", **kwargs)
    assert (reply.status, reply.body) == (400, {"message": message, "documentation_url": DOCS})


async def test_generated_operations_need_a_session(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Without a live token a generated operation is 401 Requires authentication."""
    async with http.get(looker.url(f"{V4}/connections")) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == "Requires authentication."


# --- persistence -------------------------------------------------------------------------------


async def test_created_items_are_read_listed_updated_and_deleted(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """POST on a collection creates an item that GET reads back and lists; PATCH changes it;
    DELETE removes it (then 404), and a deleted seeded item is gone too. Each write is audited."""
    caller = await client(http, looker)
    made = await caller("POST", f"{V4}/connections", json={"name": "wh2", "host": "db.example"})
    assert made.status == 200
    assert problems("4.0", schema("DBConnection"), made.body) == []
    assert (made.body["name"], made.body["host"]) == ("wh2", "db.example")
    read = await caller("GET", f"{V4}/connections/wh2")
    assert (read.body["name"], read.body["host"]) == ("wh2", "db.example")
    names = [c["name"] for c in (await caller("GET", f"{V4}/connections")).body]
    assert names == ["1", "2", "3", "wh2"]
    again = await caller("POST", f"{V4}/connections", json={"name": "wh2"})
    assert again.status == 409  # documented for create_connection
    patched = await caller("PATCH", f"{V4}/connections/wh2", json={"host": "db2.example"})
    assert (patched.status, patched.body["host"]) == (200, "db2.example")
    assert (await caller("GET", f"{V4}/connections/wh2")).body["host"] == "db2.example"
    assert (await caller("DELETE", f"{V4}/connections/wh2")).status == 204
    assert (await caller("DELETE", f"{V4}/connections/2")).status == 204
    for gone in ("wh2", "2"):
        assert (await caller("GET", f"{V4}/connections/{gone}")).status == 404
    assert [c["name"] for c in (await caller("GET", f"{V4}/connections")).body] == ["1", "3"]
    writes = [
        (e.method, e.path.removeprefix(f"{V4}/connections"), e.workspace, e.status)
        for e in looker.audit
        if e.method != "GET" and "/connections" in e.path
    ]
    assert writes == [
        ("POST", "", "dev", 200),
        ("POST", "", "dev", 409),
        ("PATCH", "/wh2", "dev", 200),
        ("DELETE", "/wh2", "dev", 204),
        ("DELETE", "/2", "dev", 204),
    ]


async def test_items_get_new_ids_and_are_shared_by_api_versions(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """Created items without a key in their body get ids from 101; 3.1 reads them too."""
    caller = await client(http, looker)
    first = await caller("POST", f"{V4}/folders", json={"name": "Reports", "parent_id": "1"})
    second = await caller("POST", f"{V4}/folders", json={"name": "Drafts", "parent_id": "1"})
    assert (first.body["id"], second.body["id"]) == ("101", "102")
    old = await caller("GET", f"{V31}/folders/102")
    assert (old.status, old.body["name"]) == (200, "Drafts")
    assert problems("3.1", schema("Folder"), old.body) == []


async def test_created_look_is_read_back_through_the_proxy(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A tool creating a look and reading it back through the proxy gets what it wrote, from
    the hand-modelled GET /looks/{id} (which keeps looks 1 and 2), all of it in dev."""
    token = await proxy.login("analytics")
    made = await proxy.call(
        "POST", f"{V4}/looks", token, json={"title": "Pipeline", "query_id": "1"}
    )
    look_id = (await made.json())["id"]
    read = await proxy.call("GET", f"{V4}/looks/{look_id}", token)
    body = await read.json()
    assert (read.status, body["title"], body["id"]) == (200, "Pipeline", look_id)
    assert problems("4.0", schema("LookWithQuery"), body) == []
    hand = await (await proxy.call("GET", f"{V4}/looks/1", token)).json()
    assert hand["title"] == "Revenue (dev)"
    assert assert_every_call_pinned(looker) == 3


# --- answers -----------------------------------------------------------------------------------


async def test_answers_are_stable_and_name_the_workspace(
    http: aiohttp.ClientSession, make_looker: Any
) -> None:
    """The same call gives the same answer, on any emulator; free text names the workspace."""
    answers = []
    for _ in range(2):
        looker = await make_looker()
        for workspace in ("dev", "production"):
            caller = await client(http, looker, workspace)
            answers.append((workspace, (await caller("GET", f"{V4}/connections/1")).body))
    assert answers[0] == answers[2]
    assert answers[1] == answers[3]
    dev, prod = answers[0][1], answers[1][1]
    assert (dev["host"], prod["host"]) == ("[dev:host 1]", "[production:host 1]")
    assert problems("4.0", schema("DBConnection"), dev) == []


async def test_lists_have_a_few_items_and_honour_fields(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A list answer has the collection's items; ?fields=a,b keeps only those keys."""
    caller = await client(http, looker)
    reply = await caller("GET", f"{V4}/folders", params={"fields": "id,name"})
    assert reply.body == [{"id": str(n), "name": f"[dev:name {n}]"} for n in (1, 2, 3)]


async def test_literal_segments_win_over_parameters(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """/themes/active is its own operation (a list), not /themes/{theme_id}."""
    caller = await client(http, looker)
    active, one = await caller("GET", f"{V4}/themes/active"), await caller("GET", f"{V4}/themes/1")
    assert (type(active.body), type(one.body)) == (list, dict)


async def test_images_and_text_answers_are_placeholders(
    http: aiohttp.ClientSession, looker: LookerEmulator
) -> None:
    """A PNG answer is a real 1x1 PNG naming the workspace; text answers name it too."""
    caller = await client(http, looker)
    png = await caller("GET", f"{V4}/content_thumbnail/look/1", params={"format": "png"})
    assert (png.status, png.content_type) == (200, "image/png")
    assert png.raw.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"tEXtworkspace\x00[dev:content_thumbnail 1]" in png.raw
    start = png.raw.index(b"IDAT") + 4
    assert zlib.decompress(png.raw[start:]) == b"\x00\xff"  # stops at the end of its stream
    svg = await caller("GET", f"{V4}/vector_thumbnail/look/1")
    assert svg.content_type == "image/svg+xml"
    assert b"[dev:vector_thumbnail 1]" in svg.raw
    key = await caller("GET", f"{V4}/projects/sales/git/deploy_key")
    assert (key.content_type, key.raw) == ("text/plain", b"[dev:git_deploy_key 1]\n")
    csv = await caller("GET", f"{V4}/looks/1/run/csv")
    assert (csv.content_type, csv.raw) == ("text/csv", b"[dev:run_look 1]\n")
    run = await caller("POST", f"{V4}/queries/run/json", json={"model": "m", "view": "v"})
    assert (run.content_type, run.body) == ("application/json", "[dev:run_inline_query 1]")
