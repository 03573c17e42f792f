"""The emulated Looker REST API: a route table and one small handler per operation.

Paths are matched after collapsing doubled slashes and stripping `/api/4.0` or `/api/3.1`;
`GET /versions` and `DELETE /api/logout` also exist unversioned. Handlers raise ApiError
for Looker-shaped error answers; `handle` turns it into JSON."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import content
from .content import DEV, WORKSPACES, Json, Query, QueryTask
from .model import token_fingerprint
from .state import GitError, Session

if TYPE_CHECKING:
    from .server import LookerEmulator


class ApiError(Exception):
    """An error answer: Error, or ValidationError when errors are given."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[Json] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def validation_error(field_name: str, code: str, message: str) -> ApiError:
    detail = {
        "field": field_name,
        "code": code,
        "message": message,
        "documentation_url": content.DOCS_URL,
    }
    return ApiError(422, "Validation Failed", errors=[detail])


def error_response(exc: ApiError) -> web.Response:
    body: Json = {"message": exc.message}
    if exc.errors is not None:
        body["errors"] = exc.errors
    body["documentation_url"] = content.DOCS_URL
    return web.json_response(body, status=exc.status, headers=exc.headers)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def bearer_token(header: str | None) -> str | None:
    """The token of `Authorization: token X` or `Bearer X` (scheme in any case)."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() in ("token", "bearer") and token else None


@dataclass
class CallInfo:
    """Who made a call, filled in as the handler learns it; feeds the audit entry."""

    token_fingerprint: str | None = None
    user_id: str | None = None
    workspace: str | None = None


@dataclass
class Call:
    """One API request routed to a handler."""

    emu: LookerEmulator
    request: web.Request
    params: dict[str, str]
    token: str | None
    info: CallInfo
    session: Session | None = None

    def authenticate(self) -> Session:
        """The caller's live session, or a 401 answer."""
        if self.session is None:
            found = self.emu.session_for(self.token) if self.token else None
            if found is None:
                raise ApiError(401, "Requires authentication.")
            self.session = found
            self.info.user_id, self.info.workspace = found.user.id, found.workspace
        return self.session

    @property
    def origin(self) -> str:
        return f"{self.request.scheme}://{self.request.host}"


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


class Auth(Enum):
    """What the router checks before the handler runs."""

    REQUIRED = "required"  # a live session, else 401
    OPTIONAL = "optional"  # identify the caller if the token is good; answer anyway
    HANDLER = "handler"  # the handler authenticates itself
    NONE = "none"  # ignore the Authorization header


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: Auth = Auth.REQUIRED


def route(method: str, template: str, handler: Handler, auth: Auth = Auth.REQUIRED) -> Route:
    """`/projects/{project_id}/git_branch/{name:.+}` -> a Route matching that path."""

    def group(match: re.Match[str]) -> str:
        return f"(?P<{match[1]}>{match[2] or '[^/]+'})"

    regex = re.sub(r"\{(\w+)(?::([^}]+))?\}", group, template)
    return Route(method, re.compile(regex), handler, auth)


# --- helpers ---------------------------------------------------------------------------------


def ok(call: Call, body: Json | list[Json]) -> web.Response:
    """200 JSON, keeping only the top-level keys named in `?fields=a,b` if given."""
    wanted = {f.strip() for f in call.request.query.get("fields", "").split(",") if f.strip()}
    if wanted:
        items = body if isinstance(body, list) else [body]
        picked = [{k: v for k, v in item.items() if k in wanted} for item in items]
        body = picked if isinstance(body, list) else picked[0]
    return web.json_response(body)


async def json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "Request body is required")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def access_token(token: str, expires_in: int) -> web.Response:
    """AccessToken with exactly these keys: spectacles rejects any other."""
    return web.json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    )


def api_session(session: Session) -> Json:
    return {
        "can": {"view": True, "update": True},
        "workspace_id": session.workspace,
        "sudo_user_id": session.sudo_user_id,
    }


def found(value: Json | None) -> Json:
    if value is None:
        raise ApiError(404, "Not found")
    return value


def project_of(call: Call) -> content.Project:
    project = content.find_project(call.authenticate().workspace, call.params["project_id"])
    if project is None:
        raise ApiError(404, "Not found")
    return project


def current_branch(call: Call, project: content.Project) -> content.Branch:
    session = call.authenticate()
    if session.workspace == DEV:
        return call.emu.git.current(session.user, project.id)
    return call.emu.git.production(project.id)


DEV_ONLY = "Only allowed in development mode - Call `update_session` to select the 'dev' workspace"


def require_dev(call: Call) -> Session:
    session = call.authenticate()
    if session.workspace != DEV:
        raise ApiError(422, DEV_ONLY)
    return session


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise validation_error(key, "invalid", f"{key} must be a string")
    return value


def str_list(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise validation_error(key, "invalid", f"{key} must be a list of strings")
    return tuple(value)


# --- authentication --------------------------------------------------------------------------


async def login(call: Call) -> web.StreamResponse:
    emu, faults = call.emu, call.emu.faults
    emu.login_started.set()
    emu.login_attempts += 1
    failing = faults.login_failures > 0
    if failing:
        faults.login_failures -= 1
    if faults.hold_login is not None or (failing and faults.login_timeout):
        released = await emu.hang(faults.hold_login)
        if not (released or failing):  # interrupted by a restart, reset or shutdown
            raise ApiError(503, reason(503))
    if failing:
        retry_after = faults.login_retry_after
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        status = faults.login_failure_status
        raise ApiError(status, reason(status), headers=headers)
    form = await call.request.post()
    creds = [form.get(key) or call.request.query.get(key) for key in ("client_id", "client_secret")]
    client_id, client_secret = (c if isinstance(c, str) else "" for c in creds)
    user = emu.authenticate_client(client_id, client_secret)
    if user is None:
        raise ApiError(404, "Not found")
    token, _ = emu.tokens.issue(user)
    emu.logins += 1
    return access_token(token, emu.token_ttl)


async def login_user(call: Call) -> web.StreamResponse:
    admin = call.authenticate().user
    if not admin.is_admin:
        raise ApiError(403, "Permission Denied")
    target = call.emu.user(call.params["user_id"])
    if target is None:
        raise ApiError(404, "Not found")
    token, _ = call.emu.tokens.issue(target, sudo_user_id=admin.id)
    return access_token(token, call.emu.token_ttl)


async def logout(call: Call) -> web.StreamResponse:
    call.authenticate()
    assert call.token is not None  # authenticate() succeeded, so a token was given
    call.emu.tokens.revoke(call.token)
    return web.Response(status=204)


async def session(call: Call) -> web.StreamResponse:
    return ok(call, api_session(call.authenticate()))


async def update_session(call: Call) -> web.StreamResponse:
    call.emu.session_patches += 1
    call.emu.session_patch_started.set()
    current = call.authenticate()
    faults = call.emu.faults
    if faults.hold_session_patch is not None and not await call.emu.hang(faults.hold_session_patch):
        raise ApiError(503, reason(503))  # interrupted by a restart, reset or shutdown
    if faults.patch_session_failures > 0:
        faults.patch_session_failures -= 1
        status = faults.patch_session_status
        if status == 422:
            raise validation_error("workspace_id", "invalid", "Workspace could not be changed")
        raise ApiError(status, reason(status))
    body = await json_object(call.request)
    if "workspace_id" in body:
        wanted = body["workspace_id"]
        if wanted not in WORKSPACES:
            message = f"workspace_id must be one of {', '.join(WORKSPACES)}, got {wanted!r}"
            raise validation_error("workspace_id", "invalid", message)
        wrong = faults.patch_session_wrong_workspace
        current.workspace = wanted if wrong is None else wrong
    return ok(call, api_session(current))


async def versions(call: Call) -> web.StreamResponse:
    return ok(call, content.versions(call.origin))


# --- content ---------------------------------------------------------------------------------


async def me(call: Call) -> web.StreamResponse:
    session = call.authenticate()
    branch = current_branch(call, content.PROJECTS[0])
    return ok(call, content.user(session.user, session.workspace, branch.name))


async def all_lookml_models(call: Call) -> web.StreamResponse:
    return ok(call, content.lookml_models(call.authenticate().workspace))


def model_of(call: Call) -> content.LookmlModel:
    model = content.find_model(call.authenticate().workspace, call.params["model"])
    if model is None:
        raise ApiError(404, "Not found")
    return model


async def lookml_model(call: Call) -> web.StreamResponse:
    return ok(call, content.lookml_model(model_of(call), call.authenticate().workspace))


async def lookml_model_explore(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    return ok(call, found(content.explore(model_of(call), call.params["explore"], workspace)))


async def look(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    branch = current_branch(call, content.PROJECTS[0]).name
    return ok(call, found(content.look(call.params["look_id"], workspace, branch)))


async def dashboard(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    return ok(call, found(content.dashboard(call.params["dashboard_id"], workspace)))


async def workspaces(call: Call) -> web.StreamResponse:
    return ok(call, [content.workspace(w) for w in WORKSPACES])


async def workspace(call: Call) -> web.StreamResponse:
    workspace_id = call.params["workspace_id"]
    if workspace_id not in WORKSPACES:
        raise ApiError(404, "Not found")
    return ok(call, content.workspace(workspace_id))


# --- queries ---------------------------------------------------------------------------------


async def create_query(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    body = await json_object(call.request)
    model, view = optional_str(body, "model"), optional_str(body, "view")
    if not model:
        raise validation_error("model", "missing", "model is required")
    if not view:
        raise validation_error("view", "missing", "view is required")
    if content.find_model(workspace, model) is None:
        message = f"Model '{model}' not found in the {workspace} workspace"
        raise validation_error("model", "not_found", message)
    limit = body.get("limit")
    filter_expression = optional_str(body, "filter_expression")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict) or not all(isinstance(v, str) for v in filters.values()):
        raise validation_error("filters", "invalid", "filters must map field names to strings")
    query = Query(
        id=str(len(call.emu.queries) + 1),
        model=model,
        view=view,
        fields=str_list(body, "fields"),
        limit=None if limit is None else str(limit),
        filters={str(k): v for k, v in filters.items()},
        sorts=str_list(body, "sorts"),
        slug=secrets.token_hex(4)[:7],
        client_id=secrets.token_hex(11),
        filter_expression=filter_expression or None,
    )
    call.emu.queries[query.id] = query
    return ok(call, content.query(query, call.origin))


def query_of(call: Call) -> Query:
    query = call.emu.queries.get(call.params["query_id"])
    if query is None:
        raise ApiError(404, "Not found")
    return query


async def get_query(call: Call) -> web.StreamResponse:
    return ok(call, content.query(query_of(call), call.origin))


_TEXT_FORMATS = {"csv": (",", "text/csv"), "txt": ("\t", "text/plain")}


async def run_query(call: Call) -> web.StreamResponse:
    query, workspace = query_of(call), call.authenticate().workspace
    if content.find_model(workspace, query.model) is None:
        raise ApiError(404, "Not found")
    result_format = call.params["result_format"]
    size = emulator_bytes(call.request)
    rows = content.row_count(call.request.query.get("limit", query.limit))
    if result_format in _TEXT_FORMATS:
        sep, content_type = _TEXT_FORMATS[result_format]
        if size is None:
            return await stream(call, [content.table(query, workspace, rows, sep)], content_type)
        return await stream(call, content.bulk_table(query, workspace, sep, size), content_type)
    if size is not None:
        raise ApiError(400, "emulator_bytes needs result_format csv or txt")
    if result_format == "json":
        return web.json_response(content.json_rows(query, workspace, rows))
    if result_format == "sql":
        return web.Response(text=content.sql(query, workspace), content_type="text/plain")
    raise ApiError(400, f"Unsupported result format '{result_format}'")


def emulator_bytes(request: web.Request) -> int | None:
    raw = request.query.get("emulator_bytes")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(400, "emulator_bytes must be a non-negative integer")
    return int(raw)


async def stream(
    call: Call, pieces: Iterable[bytes | memoryview], content_type: str
) -> web.StreamResponse:
    """Chunked response; with `faults.reset_after_bytes` the connection dies mid-body."""
    response = web.StreamResponse()
    response.content_type, response.charset = content_type, "utf-8"
    response.enable_chunked_encoding()
    await response.prepare(call.request)
    cut = call.emu.take_reset_after_bytes()
    sent = 0
    for piece in pieces:
        if cut is not None and sent + len(piece) >= cut:
            piece = piece[: cut - sent]
        if piece:
            await response.write(piece)
            sent += len(piece)
        if cut is not None and sent >= cut:
            break
    if cut is not None and call.request.transport is not None:
        # close() flushes what was written, then drops the connection before the last chunk.
        call.request.transport.close()
    return response


# --- query tasks ----------------------------------------------------------------------------


async def create_query_task(call: Call) -> web.StreamResponse:
    """Runs the query in the session's workspace (production with ?force_production=true)."""
    session = call.authenticate()
    body = await json_object(call.request)
    query_id, result_format = optional_str(body, "query_id"), optional_str(body, "result_format")
    if not query_id:
        raise validation_error("query_id", "missing", "query_id is required")
    if not result_format:
        raise validation_error("result_format", "missing", "result_format is required")
    if result_format not in content.RESULT_FORMATS:
        message = f"result_format must be one of {', '.join(content.RESULT_FORMATS)}"
        raise validation_error("result_format", "invalid", message)
    if result_format not in content.TASK_FORMATS:
        raise ApiError(400, f"Unsupported result format '{result_format}'")
    query = call.emu.queries.get(query_id)
    if query is None:
        raise ApiError(404, "Not found")
    forced = call.request.query.get("force_production", "").lower() == "true"
    workspace = content.PRODUCTION if forced else session.workspace
    task = QueryTask(
        id=secrets.token_hex(16),
        query_id=query.id,
        user_id=session.user.id,
        workspace=workspace,
        result_format=result_format,
        force_production=forced,
        polls_left=call.emu.query_task_polls,
        error=content.compile_error(query, workspace),
    )
    call.emu.query_tasks[task.id] = task
    return ok(call, content.query_task(task, query, call.origin))


def own_task(call: Call, task_id: str) -> QueryTask | None:
    """The caller's query task of that id; other users' tasks are not theirs to see."""
    task = call.emu.query_tasks.get(task_id)
    return task if task is not None and task.user_id == call.authenticate().user.id else None


async def query_task(call: Call) -> web.StreamResponse:
    task = own_task(call, call.params["query_task_id"])
    if task is None:
        raise ApiError(404, "Not found")
    task.observe()
    return ok(call, content.query_task(task, call.emu.queries[task.query_id], call.origin))


async def query_task_results(call: Call) -> web.StreamResponse:
    """The result once complete; 202 while running; a failed run is a 400 with its message."""
    task = own_task(call, call.params["query_task_id"])
    if task is None:
        raise ApiError(404, "Not found")
    task.observe()
    result = content.task_result(task, call.emu.queries[task.query_id])
    if result["status"] == "error" and task.result_format != "json_detail":
        raise ApiError(400, task.error or reason(400))
    if result["status"] in ("complete", "error"):
        data = result["data"]
        if isinstance(data, str):
            return web.Response(text=data, content_type="text/plain")
        return web.json_response(data)
    if result["status"] == "killed":
        raise ApiError(404, "Not found")
    return web.Response(status=202, text="", content_type="text/plain")  # not finished yet


async def query_task_multi_results(call: Call) -> web.StreamResponse:
    """Task id -> {status[, data]}; ids that are not the caller's are "missing"."""
    call.authenticate()
    ids = [i for raw in call.request.query.getall("query_task_ids", ()) for i in raw.split(",")]
    ids = [i.strip() for i in ids if i.strip()]
    if not ids:
        raise ApiError(400, "query_task_ids is required")
    out: Json = {}
    for task_id in ids:
        task = own_task(call, task_id)
        if task is None:
            out[task_id] = {"status": "missing"}
        else:
            task.observe()
            out[task_id] = content.task_result(task, call.emu.queries[task.query_id])
    return web.json_response(out)


async def all_running_queries(call: Call) -> web.StreamResponse:
    user = call.authenticate().user
    running = [
        content.running_query(task, call.emu.queries[task.query_id], call.origin)
        for task in call.emu.query_tasks.values()
        if task.user_id == user.id and task.status in ("added", "running")
    ]
    return ok(call, running)


async def kill_query(call: Call) -> web.StreamResponse:
    """Kills a query task still added or running; a finished or unknown one is 404."""
    task = own_task(call, call.params["query_task_id"])
    if task is None or task.status not in ("added", "running"):
        raise ApiError(404, "Not found")
    task.status = "killed"
    return web.Response(status=204)


# --- projects --------------------------------------------------------------------------------


async def all_projects(call: Call) -> web.StreamResponse:
    projects = content.visible_projects(call.authenticate().workspace)
    return ok(call, [content.project(p) for p in projects])


async def project(call: Call) -> web.StreamResponse:
    return ok(call, content.project(project_of(call)))


def branch_json(call: Call, project: content.Project, branch: content.Branch) -> Json:
    return content.git_branch(branch, project, call.authenticate().user)


async def git_branch(call: Call) -> web.StreamResponse:
    project = project_of(call)
    return ok(call, branch_json(call, project, current_branch(call, project)))


async def all_git_branches(call: Call) -> web.StreamResponse:
    project = project_of(call)
    return ok(call, [branch_json(call, project, b) for b in call.emu.git.branches(project.id)])


async def find_git_branch(call: Call) -> web.StreamResponse:
    project = project_of(call)
    branch = call.emu.git.find(project.id, call.params["branch_name"])
    if branch is None:
        raise ApiError(404, "Not found")
    return ok(call, branch_json(call, project, branch))


async def create_git_branch(call: Call) -> web.StreamResponse:
    project, session = project_of(call), require_dev(call)
    body = await json_object(call.request)
    name, ref = optional_str(body, "name"), optional_str(body, "ref")
    if not name:
        raise validation_error("name", "missing", "name is required")
    try:
        branch = call.emu.git.create(session.user, project.id, name, ref)
    except GitError as exc:
        raise ApiError(exc.status, exc.message) from exc
    return ok(call, branch_json(call, project, branch))


async def update_git_branch(call: Call) -> web.StreamResponse:
    project, session = project_of(call), require_dev(call)
    body = await json_object(call.request)
    name, ref = optional_str(body, "name"), optional_str(body, "ref")
    name = name or call.emu.git.current(session.user, project.id).name
    try:
        branch = call.emu.git.checkout(session.user, project.id, name, ref)
    except GitError as exc:
        raise ApiError(exc.status, exc.message) from exc
    return ok(call, branch_json(call, project, branch))


async def delete_git_branch(call: Call) -> web.StreamResponse:
    project, session = project_of(call), require_dev(call)
    try:
        call.emu.git.delete(session.user, project.id, call.params["branch_name"])
    except GitError as exc:
        raise ApiError(exc.status, exc.message) from exc
    return web.Response(status=204)


async def manifest(call: Call) -> web.StreamResponse:
    return ok(call, content.manifest(project_of(call)))


async def validate(call: Call) -> web.StreamResponse:
    project = project_of(call)
    ref = current_branch(call, project).ref
    cached = call.request.method == "GET"
    body = content.validation(project, call.authenticate().workspace, ref, cached=cached)
    return ok(call, body)


# --- routing ---------------------------------------------------------------------------------

_P = "/projects/{project_id}"
ROUTES: tuple[Route, ...] = (
    route("GET", "/versions", versions, Auth.OPTIONAL),
    route("POST", "/login", login, Auth.NONE),
    route("POST", "/login/{user_id}", login_user),
    route("DELETE", "/logout", logout),
    route("GET", "/session", session),
    route("PATCH", "/session", update_session, Auth.HANDLER),  # counts, then authenticates
    route("GET", "/user", me),
    route("GET", "/lookml_models", all_lookml_models),
    route("GET", "/lookml_models/{model}", lookml_model),
    route("GET", "/lookml_models/{model}/explores/{explore}", lookml_model_explore),
    route("GET", "/looks/{look_id}", look),
    route("GET", "/dashboards/{dashboard_id}", dashboard),
    route("POST", "/queries", create_query),
    route("GET", "/queries/{query_id}", get_query),
    route("GET", "/queries/{query_id}/run/{result_format}", run_query),
    route("POST", "/query_tasks", create_query_task),
    route("GET", "/query_tasks/multi_results", query_task_multi_results),
    route("GET", "/query_tasks/{query_task_id}", query_task),
    route("GET", "/query_tasks/{query_task_id}/results", query_task_results),
    route("GET", "/running_queries", all_running_queries),
    route("DELETE", "/running_queries/{query_task_id}", kill_query),
    route("GET", "/projects", all_projects),
    route("GET", _P, project),
    route("GET", f"{_P}/git_branch", git_branch),
    route("POST", f"{_P}/git_branch", create_git_branch),
    route("PUT", f"{_P}/git_branch", update_git_branch),
    route("GET", f"{_P}/git_branch/{{branch_name:.+}}", find_git_branch),
    route("DELETE", f"{_P}/git_branch/{{branch_name:.+}}", delete_git_branch),
    route("GET", f"{_P}/git_branches", all_git_branches),
    route("GET", f"{_P}/manifest", manifest),
    route("GET", f"{_P}/validate", validate),
    route("POST", f"{_P}/validate", validate),
    route("GET", "/workspaces", workspaces),
    route("GET", "/workspaces/{workspace_id}", workspace),
)
_VERSIONED = re.compile(r"/api/(?:4\.0|3\.1)(/.*)")
_UNVERSIONED = {"/versions": "/versions", "/api/logout": "/logout"}


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a request path as received (doubled slashes tolerated)."""
    path = re.sub(r"/{2,}", "/", path)
    versioned = _VERSIONED.fullmatch(path)
    rest = versioned[1] if versioned else _UNVERSIONED.get(path)
    if rest is None:
        return None
    for candidate in ROUTES:
        if candidate.method == method and (match := candidate.pattern.fullmatch(rest)):
            return candidate, match.groupdict()
    return None


async def handle(emu: LookerEmulator, request: web.Request, info: CallInfo) -> web.StreamResponse:
    """Route, authenticate and answer one API request; every error is Looker-shaped JSON."""
    token = bearer_token(request.headers.get("Authorization"))
    info.token_fingerprint = None if token is None else token_fingerprint(token)
    call = Call(emu, request, {}, token, info)
    try:
        resolved = resolve(request.method, request.path)
        if resolved is None:
            raise ApiError(404, "Not found")
        target, call.params = resolved
        if target.auth is Auth.NONE:  # /login ignores any Authorization header
            call.token = info.token_fingerprint = None
        if target.auth is Auth.REQUIRED:
            call.authenticate()
        elif target.auth is Auth.OPTIONAL and token is not None:
            with contextlib.suppress(ApiError):  # /versions answers anyone
                call.authenticate()
        return await target.handler(call)
    except ApiError as exc:
        return error_response(exc)
