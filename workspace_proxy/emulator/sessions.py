"""Hand-modelled operations: logging in and out, sudo, the API session, versions, `me`.

Tokens start in production; PATCH /session moves one token's session to another workspace.
Fault knobs (failing, slow or held logins and PATCHes) are honoured here."""

from __future__ import annotations

from aiohttp import web

from . import content
from .call import ApiError, Call, json_object, ok, reason, validation_error
from .content import WORKSPACES, Json
from .lookml import current_branch
from .state import Session


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
        if wanted == content.DEV and not current.user.can_develop:
            message = (
                f"{current.user.display_name} may not use the dev workspace (no develop permission)"
            )
            raise validation_error("workspace_id", "invalid", message)
        wrong = faults.patch_session_wrong_workspace
        current.workspace = wanted if wrong is None else wrong
    return ok(call, api_session(current))


async def versions(call: Call) -> web.StreamResponse:
    return ok(call, content.versions(call.origin))


async def me(call: Call) -> web.StreamResponse:
    session = call.authenticate()
    branch = current_branch(call, content.PROJECTS[0])
    return ok(call, content.user(session.user, session.workspace, branch.name))
