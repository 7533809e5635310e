"""Resume tokens: the proof that a reconnecting client owns a dropped call.

``session.created`` carries one; offered on a new ``/ws`` connection as the
subprotocol ``resume.<token>`` (never in the URL: URLs are written to access logs)
within the resume window, it gets the call back. A token is

    vfr1.<key id>.<session id>.<epoch>.<expiry>.<signature>

* key id: which secret signed it — an API key of the server's key ring (shared by
  the replicas, rotated with it), ``resume`` for ``VOICEFORGE_RESUME_SECRET``, or
  ``local`` for the random secret of a key-less server without one (resumes on
  that process only);
* epoch: how many times the call had been resumed when the token was issued; the
  call's suspension names its epoch, so each token works once;
* signature: HMAC-SHA256, keyed by a key derived from the secret (never the
  session-token key: neither kind of token can pass for the other).

Sans-I/O: the clock is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

RESUME_PREFIX = "vfr1"
RESUME_SUBPROTOCOL_PREFIX = "resume."
MAX_RESUME_TOKEN_CHARS = 256
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class ResumeClaims:
    key_id: str
    session_id: str
    epoch: int
    expires_at: float


def offered_resume_token(subprotocols: list[str]) -> str | None:
    """The resume token a handshake offers (``resume.<token>``), if any."""
    for offered in subprotocols:
        if offered.startswith(RESUME_SUBPROTOCOL_PREFIX):
            return offered[len(RESUME_SUBPROTOCOL_PREFIX):]
    return None


def _sign(secret: str, payload: str) -> str:
    key = hmac.new(secret.encode(), b"voiceforge resume tokens v1", hashlib.sha256).digest()
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_resume_token(secret: str, key_id: str, session_id: str, epoch: int,
                       expires_at: float) -> str:
    if not (_KEY_ID.fullmatch(key_id) and _SESSION_ID.fullmatch(session_id) and epoch >= 0):
        raise ValueError("a resume token needs a key id, a session id and an epoch >= 0")
    payload = f"{RESUME_PREFIX}.{key_id}.{session_id}.{epoch}.{int(expires_at)}"
    return f"{payload}.{_sign(secret, payload)}"


def read_resume_token(token: str, key_for: Callable[[str], str | None]) -> ResumeClaims | None:
    """The claims of a well-formed token signed by a secret ``key_for`` knows, else
    None (expiry is the caller's to check: an expired token is told apart)."""
    if len(token) > MAX_RESUME_TOKEN_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 6 or parts[0] != RESUME_PREFIX:
        return None
    _, key_id, session_id, epoch, expiry, signature = parts
    if not (_KEY_ID.fullmatch(key_id) and _SESSION_ID.fullmatch(session_id)
            and epoch.isascii() and epoch.isdigit() and len(epoch) <= 9
            and expiry.isascii() and expiry.isdigit() and len(expiry) <= 12):
        return None
    secret = key_for(key_id)
    if secret is None:
        return None
    payload = token[: -len(signature) - 1]
    if not hmac.compare_digest(_sign(secret, payload).encode(), signature.encode()):
        return None
    return ResumeClaims(key_id, session_id, int(epoch), float(expiry))
