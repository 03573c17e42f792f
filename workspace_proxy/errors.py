"""The few exception types of workspace-proxy.

Hierarchy::

    ConfigError                 the YAML config is invalid; carries every problem found
    ProxyError                  an answer the caller gets, Looker-shaped (status + public message)
    ├── NotFound                404: unknown route, bad login credentials
    │   └── LoginRefused        404 to a login, and why (for the log)
    ├── Unauthenticated         401: missing, invalid or expired proxy token
    ├── Forbidden               403: a call that would break the workspace pin
    ├── BadRequest              400 / 408 / 413 / 414 / 431 / 505: malformed or stalled request
    ├── Invalid                 422: a body Looker would refuse (``errors`` listed)
    ├── TooManyRequests         429: the team's concurrency limit is reached
    ├── LookerUnavailable       502 / 504: Looker unreachable, broken or too slow while forwarding
    └── SessionUnavailable      503: no verified pinned Looker session can be had
        ├── LoginFailed         Looker refused or failed the login
        └── PinFailed           PATCH /session failed or did not verify

Public messages never contain secrets or exception text from libraries; details go to the log.
``answer`` is the one map from an error to the Looker-shaped answer a caller gets.
"""

from __future__ import annotations

import json
from typing import Any, Final

DOCS_URL: Final = "https://cloud.google.com/looker/docs/"


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` lists every error as ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class ProxyError(Exception):
    """An error answered to the caller as a Looker-shaped JSON body."""

    status = 500
    public_message = "Internal proxy error."

    def __init__(self, public_message: str | None = None, *, headers: dict[str, str] | None = None):
        if public_message is not None:
            self.public_message = public_message
        self.headers = headers or {}
        super().__init__(self.public_message)


class NotFound(ProxyError):
    status = 404
    public_message = "Not found"


class Unauthenticated(ProxyError):
    status = 401
    public_message = "Requires authentication."


class Forbidden(ProxyError):
    status = 403
    public_message = "Forbidden by workspace-proxy policy."


class BadRequest(ProxyError):
    status = 400
    public_message = "Bad request."

    def __init__(
        self, public_message: str | None = None, *, status: int = 400, close: bool = False
    ) -> None:
        super().__init__(public_message)
        self.status = status
        self.close = close
        """Close the connection after answering (the request's framing cannot be trusted)."""


class Invalid(ProxyError):
    status = 422
    public_message = "Validation Failed"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__()
        self.errors = errors


class LookerUnavailable(ProxyError):
    """Looker could not be reached, broke off or did not answer in time while forwarding."""

    def __init__(self, *, status: int = 502, kind: str = "upstream_unreachable") -> None:
        super().__init__(
            "workspace-proxy: Looker did not answer in time."
            if status == 504
            else "workspace-proxy: Looker is unavailable."
        )
        self.status = status
        self.kind = kind


class TooManyRequests(ProxyError):
    status = 429
    public_message = "Too many concurrent requests for this team."


class SessionUnavailable(ProxyError):
    """No verified, pinned Looker session is available; nothing was forwarded."""

    status = 503
    public_message = "No Looker session pinned to the team's workspace is available."

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float,
        kind: str = "unavailable",
        fix: str | None = None,
    ) -> None:
        self.reason = reason
        self.kind = kind
        self.retry_after = retry_after
        self.fix = fix
        """What to change: set when the failure is a configuration error (``fixes``)."""
        seconds = max(1, round(retry_after))
        if fix is None:
            message = (
                f"workspace-proxy could not obtain a Looker session pinned to the team's "
                f"workspace: {reason}. Nothing was forwarded; retry later."
            )
        else:
            message = (
                f"workspace-proxy cannot pin a Looker session to the team's workspace: "
                f"{reason}. This is a configuration error, not an outage: {fix}. Nothing was "
                f"forwarded; the proxy tries again in {seconds} s."
            )
        super().__init__(message, headers={"Retry-After": str(seconds)})

    @property
    def permanent(self) -> bool:
        """A configuration error: attempting again soon would fail the same way."""
        return self.fix is not None


class LoginRefused(NotFound):
    """A caller's login refused with Looker's own answer to wrong credentials (404); ``kind``
    says why, for the log only: ``unknown_caller``, ``wrong_secret``, ``no_credentials`` or
    ``looker_refused`` (a passthrough login Looker refused)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind


class LoginFailed(SessionUnavailable):
    """Looker refused or failed ``POST /login`` for the team."""


class PinFailed(SessionUnavailable):
    """``PATCH /session`` failed, or the session did not verify as pinned."""


def error_body(message: str, **extra: Any) -> bytes:
    """A Looker-shaped JSON error body: ``{"message", "documentation_url"}`` (+ extra fields)."""
    return json.dumps({"message": message, **extra, "documentation_url": DOCS_URL}).encode()


def answer(error: ProxyError) -> tuple[int, list[bytes], bytes]:
    """(status, extra header lines, body) of the answer to ``error``: the one map from errors
    to what callers see; exception text never leaks, only ``public_message``."""
    extra = {"errors": error.errors} if isinstance(error, Invalid) else {}
    lines = [f"{name}: {value}\r\n".encode() for name, value in error.headers.items()]
    return error.status, lines, error_body(error.public_message, **extra)


def outcome_of(error: ProxyError) -> str:
    """The bounded outcome label of an error (access log, metrics)."""
    return str(getattr(error, "kind", None) or error.__class__.__name__)
