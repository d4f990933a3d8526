"""Per-device token buckets."""

from __future__ import annotations

from tidegate.ratelimit import RateLimiter, retry_after_header


def test_a_new_bucket_allows_its_burst_then_refuses_the_rest() -> None:
    limiter = RateLimiter(default_rps=10.0, default_burst=5)
    assert limiter.take("d", 8, now=100.0) == (5, 0.1)


def test_each_message_costs_one_token_and_tokens_refill_at_rps() -> None:
    limiter = RateLimiter(default_rps=10.0, default_burst=5)
    assert limiter.take("d", 5, now=0.0) == (5, 0.0)
    allowed, wait = limiter.take("d", 1, now=0.05)
    assert (allowed, round(wait, 9)) == (0, 0.05)
    assert limiter.take("d", 3, now=0.35) == (3, 0.0)


def test_refill_never_exceeds_the_burst() -> None:
    limiter = RateLimiter(default_rps=100.0, default_burst=3)
    limiter.take("d", 3, now=0.0)
    allowed, _ = limiter.take("d", 10, now=1000.0)
    assert allowed == 3


def test_devices_have_separate_buckets_and_their_own_limits() -> None:
    limiter = RateLimiter(default_rps=1.0, default_burst=1)
    assert limiter.take("a", 2, now=0.0)[0] == 1
    assert limiter.take("b", 50, now=0.0, rps=1000.0, burst=40)[0] == 40


def test_retry_after_is_the_time_until_the_next_token() -> None:
    limiter = RateLimiter(default_rps=0.5, default_burst=1)
    limiter.take("d", 1, now=0.0)
    assert limiter.take("d", 1, now=0.5) == (0, 1.5)


def test_memory_is_bounded_by_evicting_least_recently_used_buckets() -> None:
    limiter = RateLimiter(default_rps=1.0, default_burst=10, max_buckets=100)
    for i in range(1000):
        limiter.take(i, 1, now=0.0)
    assert len(limiter) == 100


def test_idle_buckets_are_evicted_before_busy_ones() -> None:
    limiter = RateLimiter(default_rps=1.0, default_burst=10, max_buckets=3)
    limiter.take("idle", 1, now=0.0)
    limiter.take("busy1", 10, now=50.0)
    limiter.take("busy2", 10, now=50.0)
    limiter.take("new", 1, now=50.0)
    # "idle" had refilled (a fresh bucket is the same); the busy ones keep their empty buckets.
    assert limiter.take("busy1", 1, now=50.0)[0] == 0
    assert limiter.take("busy2", 1, now=50.0)[0] == 0


def test_retry_after_header_rounds_up_to_whole_seconds_at_least_one() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.01, 1.0, 1.2, 59.9)] == [
        "1",
        "1",
        "1",
        "2",
        "60",
    ]
