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
    admission = LatencyAdmission(1000, window_s=10, min_samples=3, retry_after_s=2)
    assert admission.admit(now=0) is None, "no measurements: admit"
    for t in range(5):
        admission.observe(800, now=t)
    assert admission.admit(now=5) is None
    for t in range(5, 10):
        admission.observe(2500, now=t)
    assert admission.admit(now=10) == 2
    # The slow samples age out of the window: calls are admitted again.
    assert admission.admit(now=30) is None
