"""Every operation of the 4.0 and 3.1 specs, walked through the proxy as a caller of a dev team.

Each operation is called with valid path parameters, its required query parameters and a body
valid for its schema (checked with the maintained validator before it is sent); its answer
must have a documented success status and media type, and a JSON answer must validate against
the spec's schema for that status. The emulator's audit must show every forwarded call in dev.

A few operations cannot reach the emulator through the proxy by the proxy's design
(PROXY_ANSWERS): they are called through the proxy for the proxy's own answer, and on the
emulator directly for the emulator's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from harness import Proxy, assert_every_call_pinned, is_pin_call
from openapi import VERSIONS, Op, is_raw_string, operations, problems

from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.emulator.api import HAND_MODELLED
from workspace_proxy.emulator.generate import example
from workspace_proxy.emulator.spec import load

# operationId -> why the emulator never sees it from a proxy caller.
PROXY_ANSWERS = {
    "login": "the proxy answers POST /login itself with a proxy token",
    "logout": "the proxy ends the caller's proxy token itself; the team's session stays",
    "update_session": "PATCH /session to the team's own workspace is answered by the proxy "
    "from GET /session; no PATCH is sent",
    "login_user": "sudo is refused (403) for a team without allow_sudo",
}
# (version, operationId) -> why its answer is validated against the 4.0 schema instead.
SPEC_SLIPS = {
    ("3.1", "query_task_multi_results"): "3.1 types each result as a string (it had no `any` "
    "type); Looker answered objects ({status, data}), which spectacles read from 3.1 for years "
    "and 4.0 documents as `any`",
}
TEAM = "analytics"  # the dev team of tests/harness.py
LOOKER_CREDS = {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"}
ADMIN_CREDS = {"client_id": "admin-client-id", "client_secret": "admin-client-secret"}

# Path parameters whose valid values are hand-modelled content; any other id is "1", which
# every generated collection has.
PATH_VALUES = {
    "project_id": "sales",
    "root_project_id": "sales",
    "lookml_model_name": "sales",
    "model_name": "sales",
    "explore_name": "orders",
    "view_name": "orders",
    "workspace_id": "dev",
    "user_id": "2",  # the team's own user: others are not visible to it
    "branch_name": "dev-analytics",
    "result_format": "json",
    "api_version": "4.0",
    "specification": "swagger.json",
    "type": "look",
}


@dataclass
class Walk:
    """What the walk needs from the setup: ids of things that must exist first."""

    query_id: str
    task_id: str
    task_to_kill: str

    def path_value(self, op: Op, name: str) -> str:
        if name == "query_task_id":
            return self.task_to_kill if op.id == "kill_query" else self.task_id
        if name == "query_id":
            return self.query_id
        if name == "branch_name" and op.method == "DELETE":
            return branch_of(op.version)
        return PATH_VALUES.get(name, "1")

    def typed_id(self, op: Op) -> str | int:
        return int(self.query_id) if op.version == "3.1" else self.query_id  # 3.1: integers

    def query(self, op: Op) -> dict[str, str]:
        values = {"query_task_ids": self.task_id}
        return {
            p["name"]: values.get(p["name"], "true" if _type(p) == "boolean" else "1")
            for p in op.params("query")
            if p.get("required")
        }

    def body(self, op: Op) -> dict[str, Any]:
        """aiohttp keyword arguments for the operation's request body."""
        hand = {
            "create_query": {"model": "sales", "view": "orders", "fields": ["orders.id"]},
            "create_query_task": {"query_id": self.typed_id(op), "result_format": "json"},
            "create_git_branch": {"name": branch_of(op.version)},
            "update_git_branch": {"name": "dev-analytics"},
            "update_session": {"workspace_id": "dev"},
        }
        body = op.raw.get("requestBody")
        if op.id == "login" or body is None:
            return {}
        media, content = next(iter(body["content"].items()))
        if media == "text/plain":
            return {"data": "<EntityDescriptor/>", "headers": {"Content-Type": media}}
        value = hand.get(op.id)
        if value is None:
            value = example(load(op.version), content["schema"], "dev", write=True)
        assert problems(op.version, content["schema"], value, write=True) == [], op.id
        return {"json": value}


def _type(param: dict[str, Any]) -> str:
    return str(param.get("schema", {}).get("type"))


def branch_of(version: str) -> str:
    return f"walk-{version.replace('.', '-')}"


def concrete(walk: Walk, op: Op) -> str:
    path = op.path
    for param in op.params("path"):
        path = path.replace(f"{{{param['name']}}}", walk.path_value(op, param["name"]))
    return f"/api/{op.version}{path}"


async def check_answer(op: Op, resp: aiohttp.ClientResponse) -> str:
    """Status, media type and (for JSON) schema of an answer; returns the body as text."""
    raw = await resp.read()
    if (op.version, op.id) in SPEC_SLIPS:
        op = next(o for o in operations("4.0") if o.id == op.id)
    success = op.success()
    assert resp.status in success, f"{op.id}: {resp.status} {raw[:500]!r}"
    documented = success[resp.status]
    if resp.status == 204 or not documented:
        assert raw == b"", op.id
        return ""
    media = resp.content_type
    offered = {"text/plain" if m == "text" else m for m in documented}
    text_ok = media.startswith("text/") and "text" in documented
    assert media in offered or text_ok, f"{op.id}: {media} not in {sorted(documented)}"
    schema = documented.get(media) or documented["text"]
    if media == "application/json" and not is_raw_string(op.version, schema):
        found = problems(op.version, schema, json.loads(raw))
        assert found == [], f"{op.version} {op.method} {op.path} ({op.id}): {found[:5]}"
    return raw.decode("utf-8", errors="replace")


async def setup_walk(proxy: Proxy, token: str, version: str) -> Walk:
    v = f"/api/{version}"
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    made = await proxy.call("POST", f"{v}/queries", token, json=query)
    query_id = str((await made.json())["id"])
    ids = []
    for _ in range(2):
        task = {"query_id": query_id, "result_format": "json"}
        made = await proxy.call("POST", f"{v}/query_tasks", token, json=task)
        ids.append(str((await made.json())["id"]))
    return Walk(query_id, ids[0], ids[1])


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_operation_answers_through_the_proxy(
    looker: LookerEmulator, proxy: Proxy, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operation of the spec answers a documented success, valid for its schema, in dev."""
    looker.query_task_polls = 0
    token = await proxy.login(TEAM)
    walk = await setup_walk(proxy, token, version)
    walked = proxied = generated = named = 0
    bad: list[str] = []
    for op in operations(version):
        path = concrete(walk, op)
        params = walk.query(op)
        start = len(looker.audit)
        if op.id == "logout":  # a throw-away proxy token: the walk's own must stay valid
            resp = await proxy.call(op.method, path, await proxy.login(TEAM))
        elif op.id == "login":
            data = {"client_id": f"{TEAM}-caller", "client_secret": f"{TEAM}-caller-secret"}
            resp = await proxy.client.post(path, data=data)
        else:
            resp = await proxy.call(op.method, path, token, params=params, **walk.body(op))
        if op.id == "login_user":
            assert resp.status == 403, await resp.text()
        else:
            try:
                text = await check_answer(op, resp)
                assert "[production:" not in text, op.id
                assert "/production/" not in text, op.id
                if op.id not in HAND_MODELLED and text:
                    generated += 1
                    named += "[dev:" in text or "/dev/" in text
            except AssertionError as exc:
                bad.append(str(exc).splitlines()[0])
                continue
        walked += 1
        reached = [
            e
            for e in looker.audit[start:]
            if (e.method, e.path) == (op.method, path) and not is_pin_call(e)
        ]
        if op.id in PROXY_ANSWERS:
            assert reached == [], op.id
            continue
        assert [e.status for e in reached] == [resp.status], op.id
        expected = None if op.id == "versions" else "dev"  # /versions is public: no session
        assert reached[0].workspace == expected, reached
        proxied += 1
    assert not bad, "\n".join(bad)
    assert_every_call_pinned(looker)
    direct = await walk_directly(looker, version)
    total = sum(1 for _ in operations(version))
    assert walked == total
    assert proxied + len(direct) == total
    with capsys.disabled():
        print(
            f"\n{version}: {walked}/{total} operations answered through the proxy; "
            f"{proxied} reached the emulator in dev, {len(direct)} called on it directly "
            f"({', '.join(direct)}); {named} of {generated} generated answers with a body "
            "name the workspace (the others hold only ids, enums, numbers, booleans, dates)"
        )


async def walk_directly(looker: LookerEmulator, version: str) -> dict[str, str]:
    """The operations the proxy answers itself, on the emulator (each session first in dev)."""
    v = f"{looker.base_url}/api/{version}"
    answered: dict[str, str] = {}
    ops = {op.id: op for op in operations(version) if op.id in PROXY_ANSWERS}
    async with aiohttp.ClientSession() as http:

        async def dev_token(creds: dict[str, str]) -> str:
            async with http.post(f"{v}/login", data=creds) as resp:
                await check_answer(ops["login"], resp)
                token = str((await resp.json())["access_token"])
            dev = {"workspace_id": "dev"}
            auth = {"Authorization": f"token {token}"}
            async with http.patch(f"{v}/session", json=dev, headers=auth) as resp:
                assert (await check_answer(ops["update_session"], resp)).count('"dev"') == 1
            return token

        user, admin = await dev_token(LOOKER_CREDS), await dev_token(ADMIN_CREDS)
        start = len(looker.audit)
        async with http.post(f"{v}/login/2", headers={"Authorization": f"token {admin}"}) as resp:
            await check_answer(ops["login_user"], resp)
        async with http.delete(f"{v}/logout", headers={"Authorization": f"token {user}"}) as resp:
            await check_answer(ops["logout"], resp)
    assert [(e.path.rsplit("/", 2)[-2:], e.workspace) for e in looker.audit[start:]] == [
        (["login", "2"], "dev"),
        ([version, "logout"], "dev"),
    ]
    for op_id, why in PROXY_ANSWERS.items():
        answered[op_id] = why
    return answered


def test_shipped_specs_are_the_recorded_ones() -> None:
    """The spec files inside the package are byte for byte the ones SOURCE.txt records."""
    from importlib import resources

    folder = resources.files("workspace_proxy.emulator") / "specs"
    recorded = (folder / "SOURCE.txt").read_text()
    for version in VERSIONS:
        name = f"Looker.{version}.oas.json"
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in recorded
