"""A fake Looker for tests and demos: a real aiohttp app with counters and scripted faults.

Modules, top to bottom: model (public value types), content (what each workspace shows),
state (tokens, git branches), api (the REST routes), admin (`/_emulator/*`), server
(LookerEmulator, which ties them together)."""

from .model import DEFAULT_USERS, ApiUser, AuditEntry, Faults, token_fingerprint
from .server import LookerEmulator

__all__ = [
    "DEFAULT_USERS",
    "ApiUser",
    "AuditEntry",
    "Faults",
    "LookerEmulator",
    "token_fingerprint",
]
