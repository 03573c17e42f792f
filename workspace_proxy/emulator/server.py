"""LookerEmulator: a fake Looker served by a real aiohttp app.

Holds the state (tokens, git, queries, query tasks), the counters, the audit and the fault knobs;
api.py answers the requests, admin.py the out-of-process `/_emulator/*` namespace."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from . import admin, api, content, results
from .call import CallInfo
from .model import DEFAULT_USERS, ApiUser, AuditEntry, Faults, load_users
from .resources import Store
from .state import GitState, Session, TokenStore

if TYPE_CHECKING:
    from aiohttp.test_utils import TestServer

MAX_HANG_S = 300.0


class LookerEmulator:
    """A fake Looker with per-token sessions, per-user dev branches, counters and faults."""

    def __init__(
        self,
        users: Sequence[ApiUser] = DEFAULT_USERS,
        *,
        token_ttl: int = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users: tuple[ApiUser, ...] = tuple(users)
        if not self.users:
            raise ValueError("LookerEmulator needs at least one user")
        self._by_client_id = {u.client_id: u for u in self.users}
        self._by_id = {u.id: u for u in self.users}
        if len(self._by_client_id) != len(self.users) or len(self._by_id) != len(self.users):
            raise ValueError("LookerEmulator users need unique ids and client_ids")
        self.token_ttl = token_ttl
        self.clock = clock
        self.faults = Faults()
        self.audit: list[AuditEntry] = []
        self.login_started = asyncio.Event()
        self.session_patch_started = asyncio.Event()
        self.login_attempts = 0
        self.logins = 0
        self.session_patches = 0
        self.base_url = ""
        self.server: TestServer | None = None
        self.tokens = TokenStore(clock)
        self.git = GitState(self.users, content.PROJECTS)
        self.queries: dict[str, results.Query] = {}
        self.query_tasks: dict[str, results.QueryTask] = {}
        self.store = Store()  # generic resources callers created, updated or deleted
        self.query_task_polls = 1  # status reads that say "running" before a task finishes
        self._release = asyncio.Event()
        self._arrival = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_routes(admin.routes(self))
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.app.on_shutdown.append(self._on_shutdown)

    @classmethod
    def from_users_file(cls, path: str, *, token_ttl: int = 3600) -> LookerEmulator:
        """An emulator whose users come from a YAML list (see model.load_users)."""
        return cls(load_users(path), token_ttl=token_ttl)

    # --- for tests ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL of a path on the served emulator (base_url must be set)."""
        return f"{self.base_url}{path}"

    def revoke_all_tokens(self) -> None:
        """Every issued token now answers 401."""
        self.tokens.clear()

    def restart(self) -> None:
        """Looker restarted: sessions and tokens are gone, hung logins end; git state stays."""
        self.tokens.clear()
        self._release_hung()

    def reset(self) -> None:
        """Clear audit, counters and faults (in place); end hung logins."""
        self.audit.clear()
        self.login_attempts = self.logins = self.session_patches = 0
        self.faults.reset()
        self.login_started.clear()
        self.session_patch_started.clear()
        self._release_hung()

    def issued_tokens(self) -> list[str]:
        """Every access token issued so far (logins and sudo), even revoked or expired ones."""
        return list(self.tokens.issued)

    def workspace_of(self, access_token: str) -> str | None:
        session = self.session_for(access_token)
        return None if session is None else session.workspace

    def audit_paths(self, suffix: str) -> list[AuditEntry]:
        return [entry for entry in self.audit if entry.path.endswith(suffix)]

    async def arrived(self, suffix: str) -> AuditEntry:
        """Wait until a request whose path ends with ``suffix`` has arrived (answered or not)."""
        while not (found := self.audit_paths(suffix)):
            await self._arrival.wait()
        return found[0]

    def stats(self) -> dict[str, int]:
        return {
            "login_attempts": self.login_attempts,
            "logins": self.logins,
            "session_patches": self.session_patches,
            "active_tokens": self.tokens.count(self.token_lifetime),
            "audit_entries": len(self.audit),
        }

    # --- for the API handlers ----------------------------------------------------------------

    @property
    def token_lifetime(self) -> float:
        """How long tokens really live (token_ttl unless faults.token_ttl_override)."""
        override = self.faults.token_ttl_override
        return self.token_ttl if override is None else override

    def session_for(self, token: str) -> Session | None:
        return self.tokens.lookup(token, self.token_lifetime)

    def user(self, user_id: str) -> ApiUser | None:
        return self._by_id.get(user_id)

    def authenticate_client(self, client_id: str, client_secret: str) -> ApiUser | None:
        user = self._by_client_id.get(client_id)
        if user is None or not hmac.compare_digest(user.client_secret, client_secret):
            return None
        return user

    def take_reset_after_bytes(self) -> int | None:
        """The one-shot cut-off for the next streamed result."""
        cut, self.faults.reset_after_bytes = self.faults.reset_after_bytes, None
        return cut

    async def hang(self, event: asyncio.Event | None) -> bool:
        """Wait for `event`, a restart/reset/shutdown, or MAX_HANG_S, whichever comes first.

        True if `event` was set; False if interrupted or timed out."""
        events = [self._release] if event is None else [self._release, event]
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=MAX_HANG_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return event is not None and event.is_set()

    # --- plumbing ----------------------------------------------------------------------------

    def _release_hung(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._release_hung()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Every non-admin request: audited in arrival order, delayed by faults.latency_s."""
        pending = AuditEntry(request.method, request.path, None, None, None, 0, request.raw_path)
        self.audit.append(pending)
        index = len(self.audit) - 1
        self._arrival.set()
        self._arrival = asyncio.Event()
        info = CallInfo()
        status = 500
        try:
            if self.faults.latency_s > 0:
                await asyncio.sleep(self.faults.latency_s)
            response = await api.handle(self, request, info)
            status = response.status
            return response
        finally:
            done = AuditEntry(
                request.method,
                request.path,
                info.user_id,
                info.token_fingerprint,
                info.workspace,
                status,
                request.raw_path,
            )
            if index < len(self.audit) and self.audit[index] is pending:
                self.audit[index] = done
