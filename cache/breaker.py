"""A small circuit breaker: stop calling a failing backend, probe it again after a cooldown.

closed    -> calls pass; ``failure_threshold`` consecutive failures open the circuit.
open      -> calls are refused instantly (``allow()`` is False) until ``cooldown_s`` has passed.
half_open -> exactly one probe call is let through; success closes, failure re-opens (new cooldown).

The clock is injectable so the state machine is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.times_opened = 0
        self.rejected = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now. In half-open state only one probe at a time is allowed."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        self.rejected += 1
        return False

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN:
                self.times_opened += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_in_flight = False
