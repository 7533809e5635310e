"""Signed session tokens and latency-based admission, fed with explicit clocks."""

from __future__ import annotations

import pytest

from agent.admission import LatencyAdmission
from agent.tokens import issue_token, verify_token

KEY = "k-" + "x" * 30


def test_a_token_verifies_until_it_expires() -> None:
    token, expiry = issue_token(KEY, ttl_s=60, now=1000.0)
    assert expiry == 1060.0
    assert verify_token(KEY, token, now=1000.0)
    assert verify_token(KEY, token, now=1059.0)
    assert not verify_token(KEY, token, now=1060.0)


def test_a_token_is_bound_to_its_key_and_cannot_be_altered() -> None:
    token, _ = issue_token(KEY, ttl_s=60, now=1000.0)
    assert not verify_token("another-key", token, now=1000.0)
    version, key_id, audience, calls, expiry, nonce, signature = token.split(".")
    extended = ".".join([version, key_id, audience, calls, str(int(expiry) + 10_000), nonce,
                         signature])
    assert not verify_token(KEY, extended, now=1000.0)
    widened = ".".join([version, key_id, "ws+webrtc+telephony", "1000", expiry, nonce,
                        signature])
    assert not verify_token(KEY, widened, now=1000.0)
    assert KEY not in token
    for garbage in ("", "vf1", "vf1.x.y.z", "vf2.99999999999.n.s", token + "x",
                    token.replace("vf2.", "vf1.")):
        assert not verify_token(KEY, garbage, now=1000.0)


def test_tokens_are_unique_and_ttl_is_bounded() -> None:
    assert issue_token(KEY, ttl_s=5, now=0)[0] != issue_token(KEY, ttl_s=5, now=0)[0]
    with pytest.raises(ValueError):
        issue_token(KEY, ttl_s=0, now=0)
    with pytest.raises(ValueError):
        issue_token(KEY, ttl_s=7200, now=0)


def test_admission_refuses_only_while_recent_p95_is_over_budget() -> None:
    admission = LatencyAdmission(1000, window_s=10, min_samples=3, min_calls=3, retry_after_s=2)
    calls = ("a", "b", "c")
    assert admission.admit(now=0, open_calls=3) is None, "no measurements: admit"
    for t in range(5):
        for call in calls:
            admission.observe(800, call, now=t)
    assert admission.admit(now=5, open_calls=3) is None
    for t in range(5, 10):
        for call in calls:
            admission.observe(2500, call, now=t)
    assert admission.admit(now=10, open_calls=3) == 2
    # The slow samples age out of the window: calls are admitted again.
    assert admission.admit(now=30, open_calls=3) is None


def test_one_slow_call_cannot_trip_admission() -> None:
    """Issue 13: one caller's long story locked the server for a minute."""
    admission = LatencyAdmission(2500, window_s=60, min_samples=5, min_calls=3)
    for t in range(20):
        admission.observe(12_700, "story-teller", now=t)
    assert admission.recent_p95(now=20) is None, "samples from one call are no measure"
    assert admission.admit(now=20, open_calls=5) is None
    # With other calls answered in time, the slow one is the odd one out.
    for t in range(20, 25):
        admission.observe(900, "b", now=t)
        admission.observe(1100, "c", now=t)
    assert admission.recent_p95(now=25) == pytest.approx(1100, abs=1)
    assert admission.admit(now=25, open_calls=5) is None
    # Most calls slow: that is load, and it refuses.
    for t in range(25, 30):
        admission.observe(3000, "b", now=t)
        admission.observe(3200, "c", now=t)
    assert admission.admit(now=30, open_calls=5) is not None


def test_too_few_samples_do_not_refuse() -> None:
    admission = LatencyAdmission(1000, min_samples=10, min_calls=3)
    for call in ("a", "b", "c"):
        admission.observe(5000, call, now=0)
    assert admission.admit(now=1, open_calls=3) is None


def test_a_lightly_loaded_server_always_admits() -> None:
    """Every slow call has left: the slow samples say nothing about a new call."""
    admission = LatencyAdmission(1000, window_s=60, min_samples=3, min_calls=3)
    for t in range(5):
        for call in ("a", "b", "c"):
            admission.observe(4000, call, now=t)
    assert admission.admit(now=5, open_calls=3) is not None
    assert admission.admit(now=5, open_calls=2) is None
    assert admission.admit(now=5, open_calls=0) is None
    with pytest.raises(ValueError):
        LatencyAdmission(1000, min_calls=0)
