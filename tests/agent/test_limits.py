"""Per-session guards: input audio rate, frame rate and the purgeable outbound queue."""

from __future__ import annotations

from agent.limits import AudioRateLimiter, FrameRateLimiter, OutboundQueue


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
