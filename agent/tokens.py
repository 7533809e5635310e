"""Short-lived signed session tokens, so a browser never holds the API key.

A backend that knows the API key asks ``POST /v1/session-tokens`` for a token and
hands it to the browser, which presents it like a key (``bearer.<token>``). The
token is ``vf1.<expiry>.<nonce>.<signature>``: an HMAC-SHA256, keyed by a key
derived from the API key, over the version, expiry and nonce. Sans-I/O: the
clock is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "vf1"
MAX_TTL_S = 3600.0


def _signing_key(api_key: str) -> bytes:
    # A derived key: a token's signature reveals nothing usable about the API key.
    return hmac.new(api_key.encode(), b"voiceforge session tokens v1", hashlib.sha256).digest()


def _sign(api_key: str, payload: str) -> str:
    digest = hmac.new(_signing_key(api_key), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_token(api_key: str, *, ttl_s: float, now: float) -> tuple[str, float]:
    """A token valid for ``ttl_s`` seconds from ``now`` (unix time); returns (token, expiry)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds")
    expiry = int(now + ttl_s)
    payload = f"{TOKEN_PREFIX}.{expiry}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_sign(api_key, payload)}", float(expiry)


def verify_token(api_key: str, token: str, *, now: float) -> bool:
    """True for a well-formed, correctly signed, unexpired token."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not parts[1].isdigit():
        return False
    payload, signature = ".".join(parts[:3]), parts[3]
    if not hmac.compare_digest(_sign(api_key, payload).encode(), signature.encode()):
        return False
    return now < int(parts[1])
