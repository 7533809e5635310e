"""Who may start a call, and whether the server takes one now.

Every entry point (``/ws``, ``/webrtc/offer``, ``/telephony/twilio``) asks the
same questions, through ``agent.intake``, before any work is done for a caller:

* ``credential_ok``: an API key (``agent.credentials``: several, for rotation), or
  a short-lived session token signed with one (``agent.tokens``) for this entry
  point with a call left, by ``Authorization: Bearer`` or the ``bearer.<secret>``
  (or OpenAI's ``openai-insecure-api-key.<secret>``) WebSocket subprotocol.
  Compared in constant time; never logged. Without a key, only a direct request
  from this machine (``agent.hosts``).
* ``origin_ok``: a browser's ``Origin`` is the page's own or in the allowlist
  (a request without ``Origin`` is not from a browser page and needs the key);
  without a key, only loopback pages.
* ``refusal``: draining, not ready, at the session limit, or over the latency
  budget → a reason and a retry hint (HTTP 503 + ``Retry-After``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from agent.credentials import KeyRing, calls_by_token
from agent.hosts import direct_local_request, origin_is_loopback
from agent.protocol import BEARER_SUBPROTOCOL_PREFIX
from pipeline.engines.base import SupervisedEngine

OPENAI_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
"""The OpenAI Realtime API's browser form of the key (``/v1/realtime``; any
WebSocket entry point takes it, as it takes ``bearer.<secret>``)."""

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.state import AppState


def presented_secrets(connection: HTTPConnection) -> list[str]:
    """Secrets offered by header or subprotocol, in that order."""
    presented: list[str] = []
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        presented.append(header[7:].strip())
    for offered in connection.scope.get("subprotocols", []):
        for prefix in (BEARER_SUBPROTOCOL_PREFIX, OPENAI_KEY_SUBPROTOCOL_PREFIX):
            if offered.startswith(prefix):
                presented.append(offered[len(prefix) :])
    return presented


def secret_ok(
    secret: str,
    api_key: str | KeyRing,
    *,
    allow_token: bool = True,
    allow_key: bool = True,
    audience: str | None = None,
) -> bool:
    """An API key (``allow_key``), or (``allow_token``) an unexpired token signed with
    one whose audience holds ``audience`` and which has a call left (one is counted).
    Without an ``audience`` no token is accepted: a token opens only what it names."""
    keyring = KeyRing.of(api_key)
    if keyring.matching_key(secret) is not None:
        return allow_key
    if not allow_token or audience is None:
        return False
    now = time.time()
    claims = keyring.read_token(secret, now=now)
    if claims is None:
        return False
    return audience in claims.audience and calls_by_token.use(claims, now)


def credential_ok(connection: HTTPConnection, api_key: str | KeyRing | None) -> bool:
    if api_key is None:
        # No key: this machine's own programs and pages only (agent.hosts).
        return direct_local_request(connection)
    audience = audience_of(connection.url.path)
    return any(
        secret_ok(secret, api_key, audience=audience) for secret in presented_secrets(connection)
    )


def audience_of(path: str) -> str:
    """The token audience an entry point belongs to (``agent.tokens.AUDIENCES``)."""
    if path.startswith("/webrtc"):
        return "webrtc"
    if path.startswith("/telephony"):
        return "telephony"
    return "ws"


def api_key_presented(connection: HTTPConnection, api_key: str | KeyRing | None) -> bool:
    """An API key itself (not a token): what minting tokens requires."""
    if api_key is None:
        return False
    return any(
        secret_ok(secret, api_key, allow_token=False) for secret in presented_secrets(connection)
    )


def origin_ok(connection: HTTPConnection, settings: Settings) -> bool:
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    if settings.api_key is None:
        # A key-less server is this machine's: a page of any other site, or one
        # that rebinds its own name to 127.0.0.1, must not drive it.
        return origin_is_loopback(origin)
    if "*" in settings.allowed_origins:
        return True
    if origin.rstrip("/") in {allowed.rstrip("/") for allowed in settings.allowed_origins}:
        return True
    # The page the server itself serves: Origin names the host the request went to.
    host = connection.headers.get("host")
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def operator_ok(connection: HTTPConnection, settings: Settings) -> bool:
    """May see /metrics and the details of /healthz and /readyz: anyone, unless
    ``metrics_key`` is set; then whoever presents it (a scraper need not hold a
    caller's key, nor a caller the metrics key)."""
    if settings.metrics_key is None:
        return True
    key = KeyRing.of(settings.metrics_key)
    return any(key.matching_key(secret) is not None for secret in presented_secrets(connection))


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    """``draining``, ``not_ready``, ``max_sessions`` or ``overloaded``."""
    message: str
    retry_after_s: float


def refusal(state: AppState, *, held: int = 0) -> Refusal | None:
    """Why a new call cannot start now, or None to take it (``held``: slots the
    asking call holds already, not counted against the limit)."""
    settings = state.settings
    retry = settings.retry_after_s
    if state.draining:
        return Refusal("draining", "the server is shutting down; try another one", retry)
    if not state.loaded:
        return Refusal("not_ready", state.load_error or "models are still loading", retry)
    for engine in (state.engines.stt, state.engines.tts):
        if isinstance(engine, SupervisedEngine) and (why := engine.unavailable()):
            return Refusal("engine_restarting", why, retry)
    if state.open_calls() - held >= settings.max_sessions:
        return Refusal(
            "max_sessions", f"the server is at its limit of {settings.max_sessions} calls", retry
        )
    if state.admission is not None:
        wait = state.admission.admit(time.monotonic(), state.open_calls())
        if wait is not None:
            p95 = state.admission.recent_p95(time.monotonic()) or 0.0
            return Refusal(
                "overloaded",
                f"replies are slow right now (a typical call's p95 {p95:.0f} ms, over the "
                f"{state.admission.budget_ms:.0f} ms budget); try again shortly",
                wait,
            )
    return None


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by the
    POST parameters sorted by name, each name immediately followed by its value."""
    data = url + "".join(f"{name}{value}" for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_signature_ok(connection: HTTPConnection, settings: Settings) -> bool:
    """A request Twilio signed for this server (always true when no token is set).

    Twilio signs the URL it was given; behind a proxy that is ``public_url`` plus
    the path and query, not what this process sees.
    """
    token = settings.twilio_auth_token
    if token is None:
        return True
    signature = connection.headers.get("x-twilio-signature")
    if not signature:
        return False
    url = connection.url
    if settings.public_url:
        base = urlsplit(settings.public_url)
        url = url.replace(netloc=base.netloc)
        secure = base.scheme in ("https", "wss")
    else:
        secure = url.scheme in ("https", "wss")
    # Twilio signs the <Stream url="wss://..."> as configured; accept the https://
    # spelling of the same address too.
    candidates = {
        str(url.replace(scheme="wss" if secure else "ws")),
        str(url.replace(scheme="https" if secure else "http")),
    }
    return any(
        hmac.compare_digest(twilio_signature(token, candidate).encode(), signature.encode())
        for candidate in candidates
    )
