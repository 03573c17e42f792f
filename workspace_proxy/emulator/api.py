"""The emulated Looker REST API: every operation of the 4.0 and 3.1 specs, routed.

The route table of a version is derived from its spec the first time that version is called:
one route per operation, answered by the generic handler (generic.py: checked against the
spec, recorded, generated from the schema) unless HAND_MODELLED names the operation. That
table is the one place where hand-modelled behaviour overrides the generated one.

Paths are matched after collapsing doubled slashes and stripping `/api/4.0` or `/api/3.1`;
a literal segment beats a parameter (`/query_tasks/multi_results` before `{query_task_id}`).
`GET /versions` and `DELETE /api/logout` also exist unversioned. Handlers raise ApiError for
Looker-shaped error answers; `handle` turns it into JSON."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from . import generic, lookml, queries, sessions
from .call import ApiError, Auth, Call, CallInfo, bearer_token, error_response
from .model import token_fingerprint
from .spec import Operation, load

if TYPE_CHECKING:
    from .server import LookerEmulator

Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Hand:
    """A hand-modelled operation: its handler, what the router checks first, and whether its
    last path parameter takes the rest of the path (branch names may contain `/`)."""

    handler: Handler
    auth: Auth = Auth.REQUIRED
    rest_of_path: bool = False


# operationId -> the hand-modelled answer; every other operation is generic.answer.
HAND_MODELLED: Mapping[str, Hand] = {
    "versions": Hand(sessions.versions, Auth.OPTIONAL),
    "login": Hand(sessions.login, Auth.NONE),
    "login_user": Hand(sessions.login_user),
    "logout": Hand(sessions.logout),
    "session": Hand(sessions.session),
    "update_session": Hand(sessions.update_session, Auth.HANDLER),  # counts, then authenticates
    "me": Hand(sessions.me),
    "all_lookml_models": Hand(lookml.all_lookml_models),
    "lookml_model": Hand(lookml.lookml_model),
    "lookml_model_explore": Hand(lookml.lookml_model_explore),
    "look": Hand(lookml.look),
    "dashboard": Hand(lookml.dashboard),
    "all_workspaces": Hand(lookml.workspaces),
    "workspace": Hand(lookml.workspace),
    "all_projects": Hand(lookml.all_projects),
    "project": Hand(lookml.project),
    "git_branch": Hand(lookml.git_branch),
    "create_git_branch": Hand(lookml.create_git_branch),
    "update_git_branch": Hand(lookml.update_git_branch),
    "find_git_branch": Hand(lookml.find_git_branch, rest_of_path=True),
    "delete_git_branch": Hand(lookml.delete_git_branch, rest_of_path=True),
    "all_git_branches": Hand(lookml.all_git_branches),
    "manifest": Hand(lookml.manifest),
    "project_validation_results": Hand(lookml.validate),
    "validate_project": Hand(lookml.validate),
    "create_query": Hand(queries.create_query),
    "query": Hand(queries.get_query),
    "run_query": Hand(queries.run_query),
    "create_query_task": Hand(queries.create_query_task),
    "query_task_multi_results": Hand(queries.query_task_multi_results),
    "query_task": Hand(queries.query_task),
    "query_task_results": Hand(queries.query_task_results),
    "all_running_queries": Hand(queries.all_running_queries),
    "kill_query": Hand(queries.kill_query),
}
GENERATED = Hand(generic.answer)


@dataclass(frozen=True)
class Route:
    op: Operation
    hand: Hand

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters if `segments` match this route's template."""
        template = self.op.segments
        if self.hand.rest_of_path and len(segments) > len(template):
            segments = [*segments[: len(template) - 1], "/".join(segments[len(template) - 1 :])]
        if len(segments) != len(template):
            return None
        params: dict[str, str] = {}
        for want, got in zip(template, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


@dataclass(frozen=True)
class Table:
    """The routes of one API version, by method and number of path segments."""

    exact: Mapping[tuple[str, int], tuple[Route, ...]]
    longer: Mapping[str, tuple[Route, ...]]
    """Routes whose last parameter takes the rest of the path."""

    def candidates(self, method: str, count: int) -> tuple[Route, ...]:
        longer = tuple(r for r in self.longer.get(method, ()) if count > len(r.op.segments))
        return self.exact.get((method, count), ()) + longer


@functools.cache
def route_table(version: str) -> Table:
    """Every operation of a version, routed; literal segments are tried before parameters."""
    exact: dict[tuple[str, int], list[Route]] = {}
    longer: dict[str, list[Route]] = {}
    for op in load(version).operations:
        route = Route(op, HAND_MODELLED.get(op.operation_id, GENERATED))
        exact.setdefault((op.method, len(op.segments)), []).append(route)
        if route.hand.rest_of_path:
            longer.setdefault(op.method, []).append(route)
    return Table(
        {
            k: tuple(sorted(v, key=lambda r: [s.startswith("{") for s in r.op.segments]))
            for k, v in exact.items()
        },
        {k: tuple(v) for k, v in longer.items()},
    )


_VERSIONED = re.compile(r"/api/(4\.0|3\.1)(/.*)")
_UNVERSIONED = {"/versions": ("4.0", "/versions"), "/api/logout": ("4.0", "/logout")}


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a request path as received (doubled slashes tolerated)."""
    path = re.sub(r"/{2,}", "/", path)
    versioned = _VERSIONED.fullmatch(path)
    found = (versioned[1], versioned[2]) if versioned else _UNVERSIONED.get(path)
    if found is None:
        return None
    version, rest = found
    segments = rest.strip("/").split("/") if rest != "/" else []
    if rest.endswith("/") and rest != "/":
        segments.append("")
    for candidate in route_table(version).candidates(method, len(segments)):
        params = candidate.match(segments)
        if params is not None:
            return candidate, params
    return None


async def handle(emu: LookerEmulator, request: web.Request, info: CallInfo) -> web.StreamResponse:
    """Route, authenticate and answer one API request; every error is Looker-shaped JSON."""
    token = bearer_token(request.headers.get("Authorization"))
    info.token_fingerprint = None if token is None else token_fingerprint(token)
    call = Call(emu, request, {}, token, info)
    try:
        # HEAD is answered as the GET of the same path, without its body (aiohttp drops it).
        method = "GET" if request.method == "HEAD" else request.method
        resolved = resolve(method, request.path)
        if resolved is None:
            raise ApiError(404, "Not found")
        target, call.params = resolved
        call.op = target.op
        auth = target.hand.auth
        if auth is Auth.NONE:  # /login ignores any Authorization header
            call.token = info.token_fingerprint = None
        if auth is Auth.REQUIRED:
            call.authenticate()
        elif auth is Auth.OPTIONAL and token is not None:
            with contextlib.suppress(ApiError):  # /versions answers anyone
                call.authenticate()
        return await target.hand.handler(call)
    except ApiError as exc:
        return error_response(exc)
