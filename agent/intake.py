"""The one way into a call, for every transport (``/ws``, ``/webrtc/offer``,
``/telephony/twilio`` and whatever comes next).

A transport calls ``admit_websocket`` or ``admit_request`` before it does any work
for a caller, and gets either a ``Slot`` (the caller passed every guard and holds
one of ``max_sessions`` places) or nothing (the caller has been answered: 403 or
503 + ``Retry-After``, counted and logged without what it presented). In order:

1. the browser ``Origin`` (``agent.gate.origin_ok``);
2. the transport's own proof of origin (Twilio's request signature);
3. the credential (``agent.gate.credential_ok``), unless the transport can only
   present it later (a media stream's ``start`` parameters: ``authorize_later``);
4. whether the server takes a call now (``agent.gate.refusal``: draining, not
   ready, at the session limit, over the latency budget);
5. the slot, reserved in the same step as the check, with no ``await`` between:
   concurrent callers cannot all pass a check that only one of them fits.

The slot is released when the call ends (``Slot.release``, idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from agent.gate import (
    Refusal,
    api_key_presented,
    credential_ok,
    origin_ok,
    refusal,
    secret_ok,
    twilio_signature_ok,
)
from agent.resume_tokens import offered_resume_token
from agent.state import AppState, Slot

logger = logging.getLogger("voiceforge.intake")

CLOSE_UNAUTHORIZED = 1008
CLOSE_TRY_AGAIN_LATER = 1013


class Transport(StrEnum):
    WS = "ws"
    WEBRTC = "webrtc"
    TELEPHONY = "telephony"
    API = "api"
    """The REST audio API (agent.openai_audio, agent.voices): a request is a call."""
    REALTIME = "realtime"


DEFERRED_CREDENTIAL = frozenset({Transport.TELEPHONY})
"""Providers cannot set headers on the media stream: the key (or a token) may come
in the stream's ``start`` message instead, checked by ``authorize_later``."""


@dataclass(frozen=True, slots=True)
class Denial:
    status: int
    """403 (who you are or where you come from) or 503 (not now)."""
    reason: str
    """The ``voiceforge_refusals_total`` label."""
    message: str
    retry_after_s: float | None = None




def refuse_quietly(state: AppState, connection: HTTPConnection, reason: str) -> None:
    """Count every refused caller; log who and why (sampled), never what they presented."""
    state.metrics.refusals.labels(reason).inc()
    client = connection.client
    origin = connection.headers.get("origin", "-")
    state.sampled_log.log(
        logger, logging.WARNING, f"refused:{reason}", "refused %s from %s (origin %s)", reason,
        client.host if client else "?", origin, refusal=reason,
    )


def _denial_of(refused: Refusal) -> Denial:
    return Denial(503, refused.reason, refused.message, refused.retry_after_s)


def check(state: AppState, connection: HTTPConnection, transport: Transport) -> Slot | Denial:
    """Every guard, then the slot. Synchronous on purpose: the check and the
    reservation happen in one step of the event loop."""
    settings = state.settings
    if not origin_ok(connection, settings):
        return Denial(403, "origin", "origin not allowed")
    if transport is Transport.TELEPHONY and not twilio_signature_ok(connection, settings):
        return Denial(403, "bad_signature", "the request is not signed by the provider")
    keyring = settings.keyring()
    deferred = transport in DEFERRED_CREDENTIAL and keyring is not None
    # Key-less, every transport is this machine's only: nothing to present later.
    # A resume token is checked first: it must not spend a session token's call.
    if not deferred and not (
        keyring is not None and transport is Transport.WS and _resume_presented(state, connection)
    ) and not credential_ok(connection, keyring):
        return Denial(403, "unauthorized", "unauthorized")
    refused = refusal(state)
    if refused is not None:
        return _denial_of(refused)
    slot = Slot(state, transport.value)
    state.slots.add(slot)
    return slot


def _resume_presented(state: AppState, connection: HTTPConnection) -> bool:
    """A resume token of this service (subprotocol ``resume.<token>``): the call it
    names was admitted once; it opens that call again and nothing else (agent.resume)."""
    token = offered_resume_token(connection.scope.get("subprotocols", []))
    return token is not None and state.resumer is not None and state.resumer.credential(
        token, time.time())


def check_caller(state: AppState, connection: HTTPConnection) -> Denial | None:
    """The origin and credential guards alone, no slot: for what a caller may read
    without starting a call (the REST API's model and voice lists)."""
    settings = state.settings
    if not origin_ok(connection, settings):
        return Denial(403, "origin", "origin not allowed")
    if not credential_ok(connection, settings.keyring()):
        return Denial(403, "unauthorized", "unauthorized")
    return None


def recheck(slot: Slot) -> Refusal | None:
    """Whether a call admitted a while ago (a media stream that has just sent
    ``start``) may still start: the server may have begun to drain, or replies
    may have gone over the latency budget, since. Its own slot is not counted
    against the session limit twice."""
    state = slot.state
    if slot.released:
        return Refusal("draining", "the call was ended while it was set up",
                       state.settings.retry_after_s)
    return refusal(state, held=1)


def authorize_later(slot: Slot, connection: HTTPConnection, presented: str | None) -> bool:
    """For a transport in ``DEFERRED_CREDENTIAL``: the credential of the connection
    or the one the caller presented later. A refusal is counted and logged."""
    keyring = slot.state.settings.keyring()
    # Never the API key itself as a stream parameter: TwiML is stored and shown by
    # the provider. A telephony token with a call left (docs/telephony.md).
    if credential_ok(connection, keyring) or (
        keyring is not None
        and presented is not None
        and secret_ok(presented, keyring, allow_key=False, audience="telephony")
    ):
        return True
    refuse_quietly(slot.state, connection, "unauthorized")
    return False


def _refusal_body(denial: Denial) -> dict[str, Any]:
    body: dict[str, Any] = {"error": denial.reason, "message": denial.message}
    if denial.retry_after_s is not None:
        body["retry_after_s"] = denial.retry_after_s
    return body


def count_denial(state: AppState, connection: HTTPConnection, denial: Denial) -> float:
    """Count and (sampled) log a refusal; the ``Retry-After`` seconds to answer with."""
    if denial.status == 403:
        refuse_quietly(state, connection, denial.reason)
        return 0.0
    state.metrics.refusals.labels(denial.reason).inc()
    state.sampled_log.log(logger, logging.WARNING, f"refused:{denial.reason}",
                          "call refused: %s (%s)", denial.reason, denial.message,
                          refusal=denial.reason)
    return denial.retry_after_s or state.settings.retry_after_s


def denied_response(state: AppState, connection: HTTPConnection, denial: Denial) -> Response:
    """403, or 503 with ``Retry-After``; counted and (sampled) logged."""
    retry = count_denial(state, connection, denial)
    if denial.status == 403:
        return JSONResponse(_refusal_body(denial), status_code=403)
    return JSONResponse(
        _refusal_body(denial), status_code=503,
        headers={"Retry-After": str(max(1, round(retry)))},
    )


async def deny_websocket(websocket: WebSocket, state: AppState, denial: Denial) -> None:
    """Answer the handshake: 403 is a close before accept; 503 + Retry-After where
    the server can send an HTTP response to a WebSocket request, else close 1013."""
    response = denied_response(state, websocket, denial)
    if denial.status == 403:
        await websocket.close(CLOSE_UNAUTHORIZED)  # before accept: HTTP 403
    elif "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(CLOSE_TRY_AGAIN_LATER, denial.reason)


async def admit_websocket(websocket: WebSocket, transport: Transport) -> Slot | None:
    """The slot of an admitted WebSocket caller, or None: the handshake is answered."""
    state: AppState = websocket.app.state.voiceforge
    admitted = check(state, websocket, transport)
    if isinstance(admitted, Denial):
        await deny_websocket(websocket, state, admitted)
        return None
    return admitted


def admit_request(request: Request, transport: Transport) -> Slot | Response:
    """The slot of an admitted HTTP caller, or the response that refuses it."""
    state: AppState = request.app.state.voiceforge
    admitted = check(state, request, transport)
    if isinstance(admitted, Denial):
        return denied_response(state, request, admitted)
    return admitted


def admit_operator(request: Request, what: str) -> Response | None:
    """For the operator's HTTP API (``/v1/calls``): None to serve the request, else
    the refusal. It takes the API key itself, never a session token (a token opens
    calls, not what other calls left); a key-less server answers this machine's own
    programs only, as it does for calls. No slot: it is not a call."""
    state: AppState = request.app.state.voiceforge
    settings = state.settings
    if not origin_ok(request, settings):
        refuse_quietly(state, request, "origin")
        return JSONResponse({"error": "origin", "message": "origin not allowed"}, 403)
    keyring = settings.keyring()
    allowed = (credential_ok(request, None) if keyring is None
               else api_key_presented(request, keyring))
    if allowed:
        return None
    refuse_quietly(state, request, "unauthorized")
    return JSONResponse(
        {"error": "unauthorized", "message": f"{what} need the API key "
         "(Authorization: Bearer <key>); a session token does not open them"}, 401,
        headers={"WWW-Authenticate": "Bearer"},
    )


class BodyRefused(Exception):
    """The request body is too large or too slow: the answer to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The body, read under a size cap and a deadline (a slot is held meanwhile:
    a caller that trickles its body or sends a huge one cannot keep it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(413, f"the body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyRefused(413, f"the body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(408, f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


__all__ = [
    "BodyRefused",
    "Denial",
    "Transport",
    "admit_request",
    "admit_websocket",
    "authorize_later",
    "check",
    "check_caller",
    "count_denial",
    "deny_websocket",
    "read_body",
    "recheck",
    "refuse_quietly",
]
