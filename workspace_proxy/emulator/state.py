"""What the emulated Looker remembers: API sessions by token, and git branches.

A session lives exactly as long as its token. Git state belongs to users, not to
sessions, and survives a restart."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import content
from .content import Branch
from .model import ApiUser, token_fingerprint


@dataclass
class Session:
    """The API session bound to one access token."""

    user: ApiUser
    fingerprint: str
    issued_at: float
    workspace: str = content.PRODUCTION
    sudo_user_id: str | None = None


class TokenStore:
    """Issues opaque tokens; forgets them on logout, expiry, revocation or restart."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self.issued: list[str] = []  # every token ever issued, for leak checks

    def issue(self, user: ApiUser, *, sudo_user_id: str | None = None) -> tuple[str, Session]:
        token = secrets.token_hex(20)
        session = Session(user, token_fingerprint(token), self._clock(), sudo_user_id=sudo_user_id)
        self._sessions[token] = session
        self.issued.append(token)
        return token, session

    def lookup(self, token: str, lifetime: float) -> Session | None:
        """The live session of a token, or None if unknown or older than lifetime seconds."""
        session = self._sessions.get(token)
        if session is not None and self._clock() - session.issued_at >= lifetime:
            del self._sessions[token]
            return None
        return session

    def revoke(self, token: str) -> None:
        self._sessions.pop(token, None)

    def clear(self) -> None:
        self._sessions.clear()

    def count(self, lifetime: float) -> int:
        now = self._clock()
        return sum(now - s.issued_at < lifetime for s in self._sessions.values())


class GitError(Exception):
    """A git operation Looker would refuse; status is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GitState:
    """Branches per project; the checked-out dev branch per (user, project)."""

    def __init__(self, users: Iterable[ApiUser], projects: Iterable[content.Project]) -> None:
        self._projects = {p.id: p for p in projects}
        self._branches: dict[str, dict[str, Branch]] = {}
        for project in self._projects.values():
            prod = project.production_branch
            branches = {prod: Branch(prod, content.fake_sha(project.id, prod))}
            for user in users:
                name = content.personal_branch(user)
                branches[name] = Branch(name, content.fake_sha(project.id, prod), user)
            self._branches[project.id] = branches
        self._checked_out: dict[tuple[str, str], str] = {}

    def production(self, project_id: str) -> Branch:
        return self._branches[project_id][self._projects[project_id].production_branch]

    def current(self, user: ApiUser, project_id: str) -> Branch:
        """The branch this user has checked out in their dev workspace."""
        default = content.personal_branch(user)
        name = self._checked_out.get((user.id, project_id), default)
        return self._branches[project_id].get(name) or self._branches[project_id][default]

    def branches(self, project_id: str) -> list[Branch]:
        return list(self._branches[project_id].values())

    def find(self, project_id: str, name: str) -> Branch | None:
        return self._branches[project_id].get(name)

    def checkout(self, user: ApiUser, project_id: str, name: str, ref: str | None) -> Branch:
        """`git checkout name` (+ `reset --hard ref`); the production branch means your own."""
        if name == self._projects[project_id].production_branch:
            name = content.personal_branch(user)
        branch = self.find(project_id, name)
        if branch is None:
            raise GitError(404, f"Branch '{name}' not found")
        if ref is not None:
            self._check_writable(user, branch)
            branch.ref = self._resolve(project_id, ref)
        self._checked_out[(user.id, project_id)] = name
        return branch

    def create(self, user: ApiUser, project_id: str, name: str, ref: str | None) -> Branch:
        """`git checkout -b name [ref]`, starting from the current branch by default."""
        if name in self._branches[project_id]:
            raise GitError(409, "Resource Already Exists")
        start = (
            self.current(user, project_id).ref if ref is None else self._resolve(project_id, ref)
        )
        branch = Branch(name, start)
        self._branches[project_id][name] = branch
        self._checked_out[(user.id, project_id)] = name
        return branch

    def delete(self, user: ApiUser, project_id: str, name: str) -> None:
        branch = self.find(project_id, name)
        if branch is None:
            raise GitError(404, f"Branch '{name}' not found")
        if branch.owner is not None or name == self._projects[project_id].production_branch:
            raise GitError(422, f"Branch '{name}' cannot be deleted")
        if self.current(user, project_id) is branch:
            raise GitError(422, f"Cannot delete the checked out branch '{name}'")
        del self._branches[project_id][name]

    def _check_writable(self, user: ApiUser, branch: Branch) -> None:
        if branch.owner is not None and branch.owner.id != user.id:
            raise GitError(422, f"Branch '{branch.name}' is read-only for {user.display_name}")

    def _resolve(self, project_id: str, ref: str) -> str:
        name = ref.removeprefix("origin/")
        branch = self.find(project_id, name)
        return branch.ref if branch is not None else ref
