"""Revoked token ids (logouts), kept exactly until each token's own expiry.

A dict maps token id -> expiry for the membership test; a heap of (expiry, id) orders the same
entries by expiry, so expired ones are dropped from its top as revocations come in. Each entry is
pushed once and popped once: a logout costs O(log n) (amortised O(1) of clean-up), never a scan
of the whole list, and the size is the number of unexpired revocations. Nothing unexpired is ever
forgotten: the memory bound is the number of logouts within one token lifetime (about 200 bytes
each, see ``benchmarks/revocations.py``).

``revoke`` also hands the revocation to ``publish`` when one is set (``--workers``: the
supervisor fans it out to every worker and answers once they all hold it). Knows nothing of
aiohttp.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Awaitable, Callable, Iterable

Clock = Callable[[], float]
Publish = Callable[[str, float], Awaitable[None]]


class Revocations:
    """Token ids that were logged out, each until its own expiry (wall clock, like tokens)."""

    def __init__(self, *, clock: Clock = time.time, publish: Publish | None = None) -> None:
        self._clock = clock
        self.publish = publish
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, token_id: str, expires_at: float) -> None:
        """Remember a revocation (this process only); expired ones are dropped as we go."""
        now = self._clock()
        self._prune(now)
        if expires_at <= now:
            return  # an expired token is refused anyway
        known = self._expiry.get(token_id)
        if known is not None and known >= expires_at:
            return
        self._expiry[token_id] = expires_at
        heapq.heappush(self._heap, (expires_at, token_id))

    def add_all(self, entries: Iterable[tuple[str, float]]) -> None:
        for token_id, expires_at in entries:
            self.add(token_id, expires_at)

    async def revoke(self, token_id: str, expires_at: float) -> None:
        """Logout: remember it here, then (``--workers``) wait until every worker holds it."""
        self.add(token_id, expires_at)
        if self.publish is not None:
            await self.publish(token_id, expires_at)

    def __contains__(self, token_id: object) -> bool:
        expires_at = self._expiry.get(token_id) if isinstance(token_id, str) else None
        return expires_at is not None and expires_at > self._clock()

    def __len__(self) -> int:
        """The number of unexpired revocations."""
        self._prune(self._clock())
        return len(self._expiry)

    def entries(self) -> list[tuple[str, float]]:
        """Every unexpired revocation, for a worker that (re)starts."""
        self._prune(self._clock())
        return list(self._expiry.items())

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, token_id = heapq.heappop(heap)
            if self._expiry.get(token_id) == expires_at:
                del self._expiry[token_id]
