"""A fake Looker for tests and demos: a real aiohttp app with counters and scripted faults.

Every operation of the Looker 4.0 and 3.1 specs (shipped in specs/) is routed. Modules, top
to bottom: model (public value types); spec (the specs, parsed on first use); content and
results (what each workspace shows, query results); state (tokens, git branches); call (one
request, Looker-shaped errors); sessions, lookml, queries (the hand-modelled operations);
generate, checks, media, resources, generic (every other operation: answers built from the
schema, request checks, placeholder documents, the store of created items, the handler); api
(the route table derived from the specs, and HAND_MODELLED, the one override point); admin
(`/_emulator/*`); server (LookerEmulator, which ties them together)."""

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
