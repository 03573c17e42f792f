"""Hand-modelled LookML content: models, explores, looks, dashboards, workspaces, projects,
git branches, manifests and validation; all of it depends on the session's workspace.

Looks and dashboards other than the hand-modelled ones are generic resources (created ones)."""

from __future__ import annotations

from aiohttp import web

from . import content, generic
from .call import ApiError, Call, found, json_object, ok, optional_str, validation_error
from .content import DEV, WORKSPACES, Json
from .state import GitError, Session


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


async def all_lookml_models(call: Call) -> web.StreamResponse:
    return ok(call, content.lookml_models(call.authenticate().workspace))


def model_of(call: Call) -> content.LookmlModel:
    model = content.find_model(call.authenticate().workspace, call.params["lookml_model_name"])
    if model is None:
        raise ApiError(404, "Not found")
    return model


async def lookml_model(call: Call) -> web.StreamResponse:
    return ok(call, content.lookml_model(model_of(call), call.authenticate().workspace))


async def lookml_model_explore(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    return ok(call, found(content.explore(model_of(call), call.params["explore_name"], workspace)))


async def look(call: Call) -> web.StreamResponse:
    """Looks 1 and 2; any other id is a generic look (one created with POST /looks, or 404)."""
    workspace = call.authenticate().workspace
    branch = current_branch(call, content.PROJECTS[0]).name
    body = content.look(call.params["look_id"], workspace, branch)
    return await generic.answer(call) if body is None else ok(call, body)


async def dashboard(call: Call) -> web.StreamResponse:
    """Dashboard 1; any other id is a generic dashboard (created with POST /dashboards, or 404)."""
    body = content.dashboard(call.params["dashboard_id"], call.authenticate().workspace)
    return await generic.answer(call) if body is None else ok(call, body)


async def workspaces(call: Call) -> web.StreamResponse:
    return ok(call, [content.workspace(w) for w in WORKSPACES])


async def workspace(call: Call) -> web.StreamResponse:
    workspace_id = call.params["workspace_id"]
    if workspace_id not in WORKSPACES:
        raise ApiError(404, "Not found")
    return ok(call, content.workspace(workspace_id))


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
