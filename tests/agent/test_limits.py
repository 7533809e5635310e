"""Per-session guards: input audio rate, frame rate and the purgeable outbound queue."""

from __future__ import annotations

from agent.limits import (
    AudioRateLimiter,
    DecodeBudget,
    ErrorThrottle,
    FrameRateLimiter,
    OutboundQueue,
)


def test_realtime_audio_is_always_accepted() -> None:
    limiter = AudioRateLimiter(factor=2.0, burst_ms=500)
    assert all(limiter.accept(20, now=i * 0.02) for i in range(1000))


def test_audio_faster_than_twice_realtime_is_refused_after_the_burst() -> None:
    limiter = AudioRateLimiter(factor=2.0, burst_ms=500)
    accepted = sum(limiter.accept(20, now=i * 0.005) for i in range(400))  # 4x real time
    elapsed_ms = 399 * 5
    # Accepted audio never exceeds burst + 2x the elapsed time, and most was refused.
    assert accepted * 20 <= 500 + 2 * elapsed_ms
    assert accepted < 400 * 0.7
    # A client that slows back down is accepted again.
    assert limiter.accept(20, now=10.0)


def test_outbound_queue_purges_only_the_cleared_responses_audio() -> None:
    queue = OutboundQueue(max_frames=10)
    assert queue.push(b"a1", response_id="r1", audio=True)
    assert queue.push(b"t1", response_id="r1")
    assert queue.push(b"b1", response_id="r2", audio=True)
    assert queue.purge_audio("r1") == 1
    assert [queue.pop(), queue.pop(), queue.pop()] == [b"t1", b"b1", None]


def test_outbound_queue_is_bounded() -> None:
    queue = OutboundQueue(max_frames=2)
    assert queue.push(b"1") and queue.push(b"2")
    assert not queue.push(b"3")
    assert len(queue) == 2


def test_frames_beyond_the_rate_are_refused_after_the_burst() -> None:
    limiter = FrameRateLimiter(rate=100.0, burst=50.0)
    # 1000 frames within 1 s: the burst plus what the rate refills.
    accepted = sum(limiter.accept(now=i * 0.001) for i in range(1000))
    assert 50 + 100 * 0.999 - 1 <= accepted <= 50 + 100 * 0.999 + 1
    # At the rate itself, every frame is taken.
    later = FrameRateLimiter(rate=100.0, burst=50.0)
    assert all(later.accept(now=10.0 + i * 0.01) for i in range(500))


def test_the_outbound_queue_says_how_long_its_head_has_waited() -> None:
    queue = OutboundQueue(max_frames=10)
    assert queue.oldest_age(now=0.0) is None
    queue.push(b"x")
    (_, _, _, enqueued) = queue._items[0]
    assert queue.oldest_age(now=enqueued + 2.5) == 2.5
    queue.pop()
    assert queue.oldest_age(now=enqueued + 3.0) is None


def test_a_client_refused_ten_times_the_rate_within_a_second_is_flooding() -> None:
    limiter = FrameRateLimiter(rate=100.0, burst=10.0)
    for i in range(900):  # 900 frames in 0.09 s: ~890 refused, under 10 x 100
        limiter.accept(now=i * 0.0001)
    assert not limiter.flooding
    for i in range(200):
        limiter.accept(now=0.09 + i * 0.0001)
    assert limiter.flooding
    # A second later the window starts over.
    limiter.accept(now=5.0)
    assert limiter.accept(now=5.0) and not limiter.flooding


def test_audio_credit_does_not_grow_while_the_client_is_idle() -> None:
    limiter = AudioRateLimiter(factor=2.0, burst_ms=2000)
    assert limiter.accept(20, now=0.0)
    # Ten minutes of silence on the wire, then audio as fast as the socket takes it:
    # 10 s of 20 ms frames within 10 ms of wall clock.
    accepted = sum(limiter.accept(20, now=600.0 + i * 0.00001) for i in range(500))
    assert 2000 / 20 <= accepted <= 2000 / 20 + 2, accepted
    # Then real time is taken again at once.
    assert all(limiter.accept(20, now=601.0 + i * 0.02) for i in range(100))


def test_the_decode_budget_drops_frames_once_spent_and_flags_a_client_that_keeps_at_it() -> None:
    budget = DecodeBudget(ms_per_s=10.0, burst_ms=5.0, strikes=3, strike_window_s=10.0)
    assert budget.admit(now=0.0)
    budget.charge(6.0)  # one costly frame: the debt is at most that frame
    assert not budget.admit(now=0.01) and not budget.abusive
    assert budget.admit(now=0.2)  # 10 ms a second refills the 1 ms owed
    for second in (1.5, 3.0):
        budget.charge(50.0)
        assert not budget.admit(now=second)
    assert budget.abusive  # dry three times, a second or more apart, within ten
    # A client that decodes within its budget never is.
    steady = DecodeBudget(ms_per_s=10.0, burst_ms=5.0)
    for i in range(1000):
        assert steady.admit(now=i * 0.01)
        steady.charge(0.05)
    assert not steady.abusive


def test_repeated_errors_of_one_code_are_held_back_and_counted() -> None:
    throttle = ErrorThrottle(per_second=3)
    sent = [throttle.allow("malformed_frame", now=i * 0.001) for i in range(1000)]
    assert [ok for ok, _ in sent].count(True) == 3
    assert throttle.allow("unknown_type", now=0.5) == (True, 0)  # codes are counted apart
    assert throttle.allow("malformed_frame", now=1.5) == (True, 997)
    assert throttle.allow("malformed_frame", now=1.6) == (True, 0)


def test_outbound_queue_is_bounded_in_bytes_too() -> None:
    queue = OutboundQueue(max_frames=100, max_bytes=10)
    assert queue.push(b"12345", response_id="r", audio=True) and queue.push(b"123")
    assert not queue.push(b"123")  # 11 bytes would be queued
    assert queue.bytes == 8
    assert queue.purge_audio("r") == 1 and queue.bytes == 3
    assert queue.push(b"1234567")
    assert queue.pop() == b"123" and queue.bytes == 7
