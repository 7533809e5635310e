"""Short-lived signed session tokens, so a browser never holds the API key.

A backend that knows the API key asks ``POST /v1/session-tokens`` for a token and
hands it to the browser (or puts it in the TwiML of one phone call), which
presents it like a key (``bearer.<token>``). A token is

    vf2.<key id>.<audience>.<max calls>.<expiry>.<nonce>.<signature>

* key id: which of the server's API keys signed it, so keys can be rotated
  (``agent.credentials``) without invalidating the tokens of the other keys;
* audience: the entry points it opens, ``+``-joined (``ws+webrtc``): a token
  minted for a browser page cannot open a telephony stream and vice versa;
* max calls: how many calls it may start on one server (counted by
  ``agent.credentials.CallLedger``);
* signature: an HMAC-SHA256, keyed by a key derived from that API key, over
  everything before it.

Sans-I/O: the clock is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass

TOKEN_PREFIX = "vf2"
MAX_TTL_S = 3600.0
MAX_CALLS_LIMIT = 1000
"""The most calls one token can be minted for (the server's own cap is lower)."""
AUDIENCES = ("ws", "webrtc", "telephony")
"""The entry points a token can open: ``/ws``, ``/webrtc/offer``, ``/telephony/*``."""
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")
MAX_TOKEN_CHARS = 256
"""Longer strings are not tokens; refused before any HMAC is computed."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    key_id: str
    audience: frozenset[str]
    max_calls: int
    expires_at: float
    nonce: str
    """Unique per token: what its calls are counted under."""


def _signing_key(api_key: str) -> bytes:
    # A derived key: a token's signature reveals nothing usable about the API key.
    return hmac.new(api_key.encode(), b"voiceforge session tokens v2", hashlib.sha256).digest()


def _sign(api_key: str, payload: str) -> str:
    digest = hmac.new(_signing_key(api_key), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_token(
    api_key: str,
    *,
    ttl_s: float,
    now: float,
    key_id: str = "default",
    audience: Collection[str] = AUDIENCES,
    max_calls: int = 1,
) -> tuple[str, float]:
    """A token valid for ``ttl_s`` seconds from ``now`` (unix time), for at most
    ``max_calls`` calls on the entry points in ``audience``; returns (token, expiry)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError("a key id is 1 to 32 letters, digits, '-' or '_'")
    unknown = set(audience) - set(AUDIENCES)
    if not audience or unknown:
        raise ValueError(f"audience must be a non-empty subset of {AUDIENCES}")
    if not 1 <= max_calls <= MAX_CALLS_LIMIT:
        raise ValueError(f"max_calls must be in [1, {MAX_CALLS_LIMIT}]")
    expiry = int(now + ttl_s)
    scope = "+".join(name for name in AUDIENCES if name in audience)
    nonce = secrets.token_urlsafe(12)
    payload = f"{TOKEN_PREFIX}.{key_id}.{scope}.{max_calls}.{expiry}.{nonce}"
    return f"{payload}.{_sign(api_key, payload)}", float(expiry)


def read_token(
    token: str, key_for: Callable[[str], str | None], *, now: float
) -> TokenClaims | None:
    """The claims of a well-formed, correctly signed, unexpired token, else None.

    ``key_for`` maps a key id to that API key (None: no such key, e.g. retired).
    """
    if len(token) > MAX_TOKEN_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 7 or parts[0] != TOKEN_PREFIX:
        return None
    _, key_id, scope, max_calls, expiry, nonce, signature = parts
    if not (
        KEY_ID_PATTERN.fullmatch(key_id)
        and max_calls.isascii() and max_calls.isdigit()
        and expiry.isascii() and expiry.isdigit()
        and _NONCE_PATTERN.fullmatch(nonce)
    ):
        return None
    api_key = key_for(key_id)
    if api_key is None:
        return None
    payload = token[: -len(signature) - 1]
    if not hmac.compare_digest(_sign(api_key, payload).encode(), signature.encode()):
        return None
    if now >= int(expiry):
        return None
    audience = frozenset(scope.split("+"))
    if not audience <= set(AUDIENCES) or not 1 <= int(max_calls) <= MAX_CALLS_LIMIT:
        return None
    return TokenClaims(key_id, audience, int(max_calls), float(expiry), nonce)


def verify_token(api_key: str, token: str, *, now: float, key_id: str = "default") -> bool:
    """True for a well-formed, correctly signed, unexpired token of ``api_key``
    (any audience; calls not counted)."""
    return read_token(token, {key_id: api_key}.get, now=now) is not None
