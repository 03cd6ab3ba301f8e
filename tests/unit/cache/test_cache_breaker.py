from cache.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_state_machine():
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=3, cooldown_s=5, clock=clock)
    assert cb.state is BreakerState.CLOSED and cb.allow()
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # success resets the consecutive count
    cb.record_failure()
    cb.record_failure()
    assert cb.state is BreakerState.CLOSED
    cb.record_failure()
    assert cb.state is BreakerState.OPEN and not cb.allow()
    clock.now += 4.9
    assert not cb.allow()
    clock.now += 0.2
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.allow()  # the single probe
    assert not cb.allow()  # no second probe while the first is out
    cb.record_failure()  # probe failed: open again with a fresh cooldown
    assert cb.state is BreakerState.OPEN
    clock.now += 5.0
    assert cb.allow()
    cb.record_success()
    assert cb.state is BreakerState.CLOSED and cb.allow() and cb.allow()
    assert cb.times_opened == 2 and cb.rejected >= 2
