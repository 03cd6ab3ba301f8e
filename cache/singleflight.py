"""Single-flight for asyncio: concurrent callers for one key share one in-flight computation.

Two ways in. ``do(key, fn)`` is the classic form for one key. ``claim(keys)`` is the batch form the
token cache uses: it splits keys into those this caller now owns (it must ``resolve`` or ``fail`` each)
and futures for keys someone else is already computing, so a batch of misses is still tokenized in ONE
call while overlapping batches never tokenize a key twice. Claims are synchronous (no await), so a
check-then-claim sequence is atomic on the event loop. Not thread-safe: one instance per event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def in_flight(self, key: str) -> bool:
        return key in self._inflight

    def claim(self, keys: Iterable[str]) -> tuple[list[str], dict[str, asyncio.Future[T]]]:
        """(keys now owned by the caller, futures of keys already in flight elsewhere)."""
        loop = asyncio.get_running_loop()
        owned: list[str] = []
        waiting: dict[str, asyncio.Future[T]] = {}
        for key in dict.fromkeys(keys):  # dedupe, keep order
            fut = self._inflight.get(key)
            if fut is not None:
                waiting[key] = fut
            else:
                self._inflight[key] = loop.create_future()
                owned.append(key)
        return owned, waiting

    def future(self, key: str) -> asyncio.Future[T] | None:
        return self._inflight.get(key)

    def resolve(self, key: str, value: T) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def fail(self, key: str, exc: BaseException) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)
            # Mark retrieved so an unobserved failure does not log "exception was never retrieved".
            fut.exception()

    async def do(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` once for all concurrent callers of ``key``; every caller gets its result or error."""
        owned, waiting = self.claim([key])
        if not owned:
            return await asyncio.shield(waiting[key])
        fut = self._inflight[key]
        try:
            value = await fn()
        except BaseException as err:  # noqa: BLE001 - waiters must see the same outcome, even cancel
            self.fail(key, err)
            raise
        self.resolve(key, value)
        return await fut
