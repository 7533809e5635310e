"""What every OpenAI-compatible REST endpoint shares: OpenAI's error shape, admission
through ``agent.intake`` (a request is a call: key or token, origin, draining,
session limit, latency budget, one session slot held while it runs), bodies read
under a cap and a deadline, and the per-endpoint request metrics.

OpenAI's error body is ``{"error": {"message", "type", "param", "code"}}``; the
official SDKs raise their typed exceptions from the status (400
``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, 413, 5xx
``InternalServerError``; 408/409/429/5xx are retried, ``Retry-After`` honoured).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agent import intake
from agent.state import AppState, Slot
from pipeline.errors import VoiceForgeError

logger = logging.getLogger("voiceforge.api")

MAX_MESSAGE_CHARS = 300
"""An error message is cut here whatever it quotes: a reply never grows with the input."""
MAX_FIELD_CHARS = 64
"""How much of a caller's value an error message quotes."""


class ApiError(VoiceForgeError):
    """A request the API answers with an error (OpenAI's shape)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, transient=status >= 500)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        message = self.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        return {"error": {"message": message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers: dict[str, str] = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(self.body(), self.status, headers=headers)


def quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def _from_denial(denial: intake.Denial, retry_after_s: float) -> ApiError:
    if denial.reason == "unauthorized":
        return ApiError(401, "a valid API key or session token is required "
                        "(Authorization: Bearer <key>)", code="invalid_api_key")
    if denial.status == 403:
        return ApiError(403, denial.message, code=denial.reason)
    return ApiError(503, denial.message, code=denial.reason, retry_after_s=retry_after_s)


def authorize(connection: HTTPConnection) -> None:
    """Who may read the lists (models, voices): the credential and origin a call
    needs, without a slot (a full server still says what it offers)."""
    state: AppState = connection.app.state.voiceforge
    denial = intake.check_caller(state, connection)
    if denial is not None:
        raise _from_denial(denial, intake.count_denial(state, connection, denial))


def engines_ready(state: AppState) -> None:
    if not state.loaded:
        raise ApiError(503, state.load_error or "models are still loading", code="not_ready",
                       retry_after_s=state.settings.retry_after_s)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body under ``max_bytes`` and the upload deadline (413 / 408 otherwise)."""
    state: AppState = request.app.state.voiceforge
    try:
        return await intake.read_body(
            request, max_bytes=max_bytes, timeout_s=state.settings.upload_timeout_s
        )
    except intake.BodyRefused as refused:
        code = "request_too_large" if refused.status == 413 else "request_timeout"
        raise ApiError(refused.status, refused.message, code=code) from None


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    body = await read_body(request, max_bytes)
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return parsed


def replayed(request: Request, body: bytes) -> Request:
    """The same request with its body already read (the form parser reads it again)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await request.receive())

    return Request(request.scope, receive)


def refuse_unknown(fields: dict[str, Any] | set[str], known: frozenset[str]) -> None:
    """OpenAI's answer to a field it does not know (a typo must not pass unnoticed)."""
    for name in fields:
        if name not in known:
            shown = str(name)[:MAX_FIELD_CHARS]
            raise ApiError(400, f"Unrecognized request argument supplied: {shown}",
                           param=shown, code="unknown_parameter")


class HeldResponse(StreamingResponse):
    """A streamed answer that holds its call's slot until the last byte is sent or
    the client goes away, whichever way the stream ends."""

    def __init__(
        self, content: AsyncIterator[bytes], slot: Slot, *, media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # never started (the client left first): still closed
                await aclose()


Handler = Callable[[Request, AppState, Slot], Awaitable[Response]]


async def answer_call(request: Request, endpoint: str, handler: Handler) -> Response:
    """Admit the request, run ``handler`` with its slot; an ApiError becomes OpenAI's
    error body. A ``HeldResponse`` keeps the slot; any other answer releases it."""
    state: AppState = request.app.state.voiceforge
    slot = intake.check(state, request, intake.Transport.API)
    if isinstance(slot, intake.Denial):
        refused = _from_denial(slot, intake.count_denial(state, request, slot))
        return _count(state, endpoint, refused.response())
    try:
        response = await handler(request, state, slot)
    except ApiError as error:
        slot.release()
        return _count(state, endpoint, error.response())
    except BaseException:
        slot.release()
        raise
    if not isinstance(response, HeldResponse):
        slot.release()
    return _count(state, endpoint, response)


async def answer(
    request: Request, endpoint: str, handler: Callable[[Request, AppState], Awaitable[Response]]
) -> Response:
    """Like ``answer_call`` for requests that hold no slot (lists, deletions)."""
    state: AppState = request.app.state.voiceforge
    try:
        authorize(request)
        response = await handler(request, state)
    except ApiError as error:
        response = error.response()
    return _count(state, endpoint, response)


def _count(state: AppState, endpoint: str, response: Response) -> Response:
    state.metrics.api_requests.labels(endpoint, str(response.status_code)).inc()
    return response
