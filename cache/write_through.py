"""Write-through: resolved values go back to the tiers below L0 in the background, bounded.

A lookup never waits for a write. Each write is one task (at most ``max_pending`` at once; beyond it the
write is dropped and counted: a dropped write only costs a future miss, while an unbounded queue costs
memory); each tier call in it is bounded by ``timeout_s``. A claim among dropped or failed keys lapses
with its lease, so replicas waiting for it compute the key themselves.
"""

from __future__ import annotations

import asyncio
import logging

from cache.tiers import Owners, StoredTier

__all__ = ["WriteThrough"]

logger = logging.getLogger(__name__)


class WriteThrough:
    """Background writes of packed values to ``StoredTier``s. One per ``TokenCache`` (event loop)."""

    def __init__(self, max_pending: int, timeout_s: float) -> None:
        self._max_pending = max_pending
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self.dropped = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def schedule(self, fills: dict[StoredTier, dict[str, bytes]], owners: Owners, claimed: set[str]) -> None:
        """Start writing ``fills`` (tier -> key -> packed value) now, without waiting for it."""
        if len(self._tasks) >= self._max_pending:
            self.dropped += 1
            return
        task = asyncio.create_task(self.write(fills, owners, claimed))
        self._tasks.add(task)  # strong reference: the loop only keeps weak ones
        task.add_done_callback(self._tasks.discard)

    async def write(self, fills: dict[StoredTier, dict[str, bytes]], owners: Owners, claimed: set[str]) -> None:
        """Write ``fills`` now; ``claimed`` are keys this client holds claims on (always written back)."""
        calls = [call for tier, items in fills.items() if items for call in tier.put_calls(items, owners, claimed)]
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(c, self._timeout_s) for c in calls), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.failed += 1
                logger.debug("write-through failed: %s", outcome)

    async def flush(self) -> None:
        """Wait for pending writes (each bounded by ``timeout_s``)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stats(self) -> dict:
        return {"pending": len(self._tasks), "dropped": self.dropped, "failed": self.failed}
