"""``/v1/calls``: the call records (docs/calls.md), for the operator.

* ``GET /v1/calls``: newest first; ``since``/``until`` (ISO 8601 or Unix seconds),
  ``transport``, ``end_reason``, ``q`` (words said or replied), ``limit``, and
  ``cursor`` (the ``next_cursor`` of the page before).
* ``GET /v1/calls/{id}``: the call and its whole timeline.
* ``GET /v1/calls/{id}/recording``: its audio, when it was recorded.
* ``DELETE /v1/calls/{id}``: the record and the recording.

The API key itself is required (a session token opens calls, not their records);
a server without a key answers this machine's own programs only, as for calls.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from agent import intake
from agent.records import CallFilter, CallRecords
from agent.records.recording import delete as delete_recording
from agent.records.recording import recording_path
from agent.records.store import MAX_PAGE, MAX_SEARCH_CHARS
from agent.state import AppState

logger = logging.getLogger("voiceforge.calls")

TRANSPORTS = ("ws", "webrtc", "telephony")
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _BadQuery(ValueError):
    pass


def _records(request: Request) -> tuple[AppState, CallRecords | Response]:
    state: AppState = request.app.state.voiceforge
    refused = intake.admit_operator(request, "call records")
    if refused is not None:
        return state, refused
    if state.records is None:
        return state, JSONResponse(
            {"error": "records_off", "message": "this server keeps no call records "
             "(VOICEFORGE_DATABASE_URL=off)"}, 404,
        )
    return state, state.records


def _unavailable(exc: Exception) -> Response:
    logger.warning("call records: the database did not answer: %s: %s", type(exc).__name__, exc)
    return JSONResponse(
        {"error": "records_unavailable", "message": "the call record database does not "
         "answer right now; calls go on and their records wait to be written"}, 503,
        headers={"Retry-After": "5"},
    )


def _time(name: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _BadQuery(f"{name} must be ISO 8601 or Unix seconds") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _cursor(value: str | None) -> tuple[dt.datetime, str] | None:
    if value is None:
        return None
    try:
        at, call_id = base64.urlsafe_b64decode(value.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(at), call_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _BadQuery("cursor is not one this server gave") from None


def _next_cursor(call: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{call['started_at']}|{call['id']}".encode()).decode()


def _filter(request: Request) -> CallFilter:
    params = request.query_params
    known = {"since", "until", "transport", "end_reason", "q", "limit", "cursor"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise _BadQuery(f"unknown parameters {unknown}; known: {sorted(known)}")
    transport = params.get("transport")
    if transport is not None and transport not in TRANSPORTS:
        raise _BadQuery(f"transport must be one of {list(TRANSPORTS)}")
    end_reason = params.get("end_reason")
    if end_reason is not None and len(end_reason) > 64:
        raise _BadQuery("end_reason is at most 64 characters")
    text = params.get("q")
    if text is not None and len(text) > MAX_SEARCH_CHARS:
        raise _BadQuery(f"q is at most {MAX_SEARCH_CHARS} characters")
    try:
        limit = int(params.get("limit", "50"))
    except ValueError:
        raise _BadQuery("limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise _BadQuery(f"limit must be in [1, {MAX_PAGE}]")
    return CallFilter(
        since=_time("since", params.get("since")), until=_time("until", params.get("until")),
        transport=transport, end_reason=end_reason, text=text or None,
        before=_cursor(params.get("cursor")), limit=limit,
    )


async def _list_calls(request: Request) -> Response:
    _, records = _records(request)
    if isinstance(records, Response):
        return records
    try:
        where = _filter(request)
    except _BadQuery as exc:
        return JSONResponse({"error": "bad_request", "message": str(exc)}, 400)
    try:
        found = await records.store.list_calls(where)
    except Exception as exc:  # any driver's failure: the database is away
        return _unavailable(exc)
    body: dict[str, Any] = {"calls": found, "next_cursor": None}
    if len(found) == where.limit:
        body["next_cursor"] = _next_cursor(found[-1])
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _call_id(request: Request) -> str | None:
    """The id in the path, if it can be one (it also names the recording's file)."""
    call_id = request.path_params["call_id"]
    return call_id if isinstance(call_id, str) and CALL_ID.fullmatch(call_id) else None


NOT_FOUND = {"error": "not_found", "message": "no such call"}


async def _found_call(request: Request) -> tuple[CallRecords, dict[str, Any]] | Response:
    """The records and the call the path names, or the answer saying why not."""
    _, records = _records(request)
    if isinstance(records, Response):
        return records
    call_id = _call_id(request)
    if call_id is None:
        return JSONResponse(NOT_FOUND, 404)
    try:
        call = await records.store.get_call(call_id)
    except Exception as exc:
        return _unavailable(exc)
    if call is None:
        return JSONResponse(NOT_FOUND, 404)
    return records, call


async def _get_call(request: Request) -> Response:
    found = await _found_call(request)
    if isinstance(found, Response):
        return found
    return JSONResponse(found[1], headers={"Cache-Control": "no-store"})


async def _delete_call(request: Request) -> Response:
    _, records = _records(request)
    if isinstance(records, Response):
        return records
    call_id = _call_id(request)
    if call_id is None:
        return JSONResponse(NOT_FOUND, 404)
    if records.is_open(call_id):
        return JSONResponse(
            {"error": "call_in_progress", "message": "the call is still going on (or its "
             "record is still being written); delete it once it has ended"}, 409,
        )
    try:
        deleted = await records.store.delete_call(call_id)
    except Exception as exc:
        return _unavailable(exc)
    if records.recordings is not None:
        await asyncio.to_thread(delete_recording, records.recordings.directory, call_id)
    if not deleted:
        return JSONResponse(NOT_FOUND, 404)
    logger.info("call records: call %s deleted", call_id)
    return Response(status_code=204)


async def _get_recording(request: Request) -> Response:
    """The call's audio: Ogg Opus, left channel the caller, right the agent."""
    found = await _found_call(request)
    if isinstance(found, Response):
        return found
    records, call = found
    call_id = str(call["id"])
    if call["recording"] is None:
        return JSONResponse({"error": "no_recording", "message": "this call was not "
                             "recorded, or its recording is still being encoded"}, 404)
    path = None if records.recordings is None else recording_path(
        records.recordings.directory, call_id)
    if path is None or not path.is_file():
        return JSONResponse({"error": "recording_gone", "message": "the recording is not on "
                             "this server: past its retention period, or kept by another "
                             "replica"}, 404)
    return FileResponse(path, media_type="audio/ogg", filename=f"{call_id}.opus",
                        headers={"Cache-Control": "no-store"})


routes = [
    Route("/v1/calls", _list_calls, methods=["GET"]),
    Route("/v1/calls/{call_id}", _get_call, methods=["GET"]),
    Route("/v1/calls/{call_id}", _delete_call, methods=["DELETE"]),
    Route("/v1/calls/{call_id}/recording", _get_recording, methods=["GET"]),
]
