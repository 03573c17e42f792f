"""SingleFlight: at most one run of an async job at a time; everyone who asks awaits that run.

Waiters are shielded, so a caller that gives up (client gone) never cancels the job the others
are waiting for. The task is owned here: ``close`` cancels it or waits for it, and its outcome is
always retrieved (no "exception was never retrieved" warnings for a lone background run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, on_done: Callable[[BaseException | None], None] | None = None) -> None:
        """``on_done(error)`` is called when a run ends (not when it is cancelled)."""
        self._task: asyncio.Task[T] | None = None
        self._on_done = on_done

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, job: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """Start ``job`` unless a run is under way; return the run."""
        if self._task is None:
            task = asyncio.get_running_loop().create_task(job())
            task.add_done_callback(self._finished)
            self._task = task
        return self._task

    async def join(self, job: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the run under way, or of a new run of ``job``."""
        return await asyncio.shield(self.start(job))

    async def close(self, *, wait: bool = False) -> None:
        """Cancel the run under way, or let it finish (``wait``)."""
        task = self._task
        if task is not None:
            if not wait:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _finished(self, task: asyncio.Task[T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            error = task.exception()  # retrieved here, whoever else awaited it
            if self._on_done is not None:
                self._on_done(error)
