"""The ingest service's per-client token buckets, on a fake clock."""

from __future__ import annotations

from connectors.ingest import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == 0.5  # one token comes back every 0.5 s
    assert limiter.acquire("b") == 0.0  # each client has its own bucket
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_refused_requests_do_not_spend_tokens_and_idle_buckets_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(per_s=1.0, burst=1, clock=clock)
    assert limiter.acquire("a") == 0.0
    for _ in range(10):
        assert limiter.acquire("a") == 1.0
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0
    for n in range(100):
        limiter.acquire(f"client-{n}")
    clock.now += 5.0
    limiter.acquire("z")
    assert len(limiter._buckets) <= 2


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(per_s=0.0, burst=1)
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
