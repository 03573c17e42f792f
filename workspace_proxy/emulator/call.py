"""One API request as the handlers see it, and the Looker-shaped answers they give.

Handlers get a Call (the emulator, the request, its path parameters, the caller's token and
the spec operation it was routed to) and raise ApiError for an error answer: `Error`, or
`ValidationError` when `errors` are given; api.handle turns it into JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import content
from .content import Json
from .generate import fit
from .spec import Operation, load
from .state import Session

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


def error_detail(field_name: str, code: str, message: str) -> Json:
    """One ValidationErrorDetail."""
    return {
        "field": field_name,
        "code": code,
        "message": message,
        "documentation_url": content.DOCS_URL,
    }


def validation_error(field_name: str, code: str, message: str) -> ApiError:
    return ApiError(422, "Validation Failed", errors=[error_detail(field_name, code, message)])


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


class Auth(Enum):
    """What the router checks before the handler runs."""

    REQUIRED = "required"  # a live session, else 401
    OPTIONAL = "optional"  # identify the caller if the token is good; answer anyway
    HANDLER = "handler"  # the handler authenticates itself
    NONE = "none"  # ignore the Authorization header


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
    op: Operation | None = None
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

    @property
    def operation(self) -> Operation:
        """The spec operation this call was routed to."""
        if self.op is None:
            raise ApiError(404, "Not found")
        return self.op


def pick_fields(call: Call, body: Any) -> Any:
    """`body`, keeping only the top-level keys named in `?fields=a,b` if given."""
    wanted = {f.strip() for f in call.request.query.get("fields", "").split(",") if f.strip()}
    if not wanted:
        return body
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k in wanted}
    if isinstance(body, list):
        return [pick_fields(call, item) for item in body]
    return body


def ok(call: Call, body: Json | list[Json]) -> web.Response:
    """200 JSON, keeping only the top-level keys named in `?fields=a,b` if given.

    Hand-modelled content is written in 4.0's shapes (ids are strings, some fields null); under
    /api/3.1 it is fitted to 3.1's schema, where most ids are integers and fewer fields nullable."""
    op = call.op
    if op is not None and op.version != "4.0" and "application/json" in op.content:
        body = fit(load(op.version), op.content["application/json"], body)
    return web.json_response(pick_fields(call, body))


async def json_object(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


async def json_body(request: web.Request) -> Any:
    """The request's JSON document; 400 when it is missing or does not parse."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "Request body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Request body is not valid JSON") from exc


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


def found(value: Json | None) -> Json:
    if value is None:
        raise ApiError(404, "Not found")
    return value
