"""The voice library API: ``GET /v1/voices`` (every voice of the server's TTS engine),
``POST /v1/voices`` (a name and a reference recording → a cloned voice, for engines
that clone) and ``DELETE /v1/voices/{id}``; the same under ``/v1/audio/voices``,
where OpenAI's SDK (``client.audio.voices``) sends them.

A new voice is validated (format, length, rate, loudness: ``pipeline.voice_check``),
prepared by the engine and stored (``agent.voice_library``); from then on every
call (``/ws`` ``session.update`` voice, the bridges, ``/v1/audio/speech``) can use
its id, with no restart. Storage and fields: docs/openai-compat.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.openai_api import (
    ApiError,
    answer,
    answer_call,
    engines_ready,
    quoted,
    read_body,
    refuse_unknown,
    replayed,
)
from agent.state import AppState, Slot
from agent.voice_library import REFERENCE_RATE, LibraryFull, StoredVoice, valid_name
from pipeline.audio import resample
from pipeline.audio_codecs import decode_audio
from pipeline.engines.base import CloningTTS
from pipeline.errors import AudioFormatError, EngineError
from pipeline.voice_check import ReferenceRules, reference_problem

VOICE_FIELDS = frozenset({"name", "audio_sample", "file", "consent", "type"})
FORM_OVERHEAD_BYTES = 16 * 1024


def _voice_json(voice: StoredVoice, engine: str) -> dict[str, Any]:
    return {"id": voice.id, "object": "audio.voice", "name": voice.name,
            "created_at": voice.created_at, "type": "audio_sample", "engine": engine}


async def _list(request: Request, state: AppState) -> Response:
    engines_ready(state)
    tts = state.engines.tts
    stored = {voice.id: voice for voice in state.voice_library.voices()}
    default = getattr(tts, "default_voice", None)
    data = []
    for name in tts.voices():
        if name in stored:
            data.append(_voice_json(stored[name], tts.name))
        else:
            data.append({"id": name, "object": "audio.voice", "name": name, "created_at": 0,
                         "type": "builtin", "engine": tts.name})
        data[-1]["default"] = name == default
    return JSONResponse({"object": "list", "data": data,
                         "cloning": isinstance(tts, CloningTTS)
                         and state.voice_library.enabled})


async def list_voices(request: Request) -> Response:
    """``GET /v1/voices``."""
    return await answer(request, "voices", _list)


def _cloning_engine(state: AppState) -> CloningTTS:
    tts = state.engines.tts
    if not isinstance(tts, CloningTTS):
        raise ApiError(400, f"the TTS engine {tts.name} cannot clone voices (Chatterbox can; "
                       "Piper voices are trained models, added with VOICEFORGE_PIPER_VOICE)",
                       code="voice_cloning_unsupported")
    if not state.voice_library.enabled:
        raise ApiError(400, "this server keeps no voice library: set VOICEFORGE_VOICES_DIR",
                       code="voice_library_disabled")
    return tts


async def _create(request: Request, state: AppState, slot: Slot) -> Response:
    settings = state.settings
    engine = _cloning_engine(state)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "send the voice as multipart/form-data (name, audio_sample)",
                       code="invalid_content_type")
    body = await read_body(request, settings.voice_max_bytes + FORM_OVERHEAD_BYTES)
    try:
        form = await replayed(request, body).form(max_files=1, max_fields=8,
                                                  max_part_size=8 * 1024)
    except MultiPartException as error:
        raise ApiError(400, f"the form cannot be read: {error}", code="invalid_form") from None
    try:
        refuse_unknown(set(form.keys()), VOICE_FIELDS)
        kind = form.get("type", "audio_sample")
        if kind != "audio_sample":
            raise ApiError(400, f"type {quoted(kind)} is not offered: voices are cloned from "
                           "an audio_sample", param="type", code="invalid_value")
        name = form.get("name")
        if not isinstance(name, str) or not valid_name(name):
            raise ApiError(400, "name is required: 1 to 64 printable characters",
                           param="name", code="invalid_name")
        upload = form.get("audio_sample") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "audio_sample is required: the reference recording",
                           param="audio_sample", code="missing_file")
        data = await upload.read(settings.voice_max_bytes + 1)
    finally:
        await form.close()
    if len(data) > settings.voice_max_bytes:
        raise ApiError(413, f"the recording exceeds {settings.voice_max_bytes} bytes",
                       param="audio_sample", code="file_too_large")
    reference = await _checked_reference(data, state)
    try:
        voice = await state.voice_library.add(name, reference, engine, _off_loop)
    except LibraryFull as error:
        raise ApiError(409, str(error), code="voice_library_full") from None
    except EngineError as error:
        raise ApiError(400, f"the engine could not use the recording: {error}",
                       param="audio_sample", code="invalid_audio") from None
    except OSError as error:
        raise ApiError(500, f"the voice could not be stored: {error.strerror}",
                       code="storage_failed") from None
    return JSONResponse(_voice_json(voice, state.engines.tts.name), 201)


async def _checked_reference(data: bytes, state: AppState) -> Any:
    settings = state.settings
    try:
        # Decoding stops a little past the limit: enough to say it is too long.
        decoded = await asyncio.to_thread(
            decode_audio, data, max_seconds=settings.voice_max_s + 1.0, sample_rate=None
        )
    except AudioFormatError as error:
        code = "audio_too_long" if "longer than" in str(error) else "invalid_audio"
        raise ApiError(400, str(error), param="audio_sample", code=code) from None
    rules = ReferenceRules(min_s=settings.voice_min_s, max_s=settings.voice_max_s)
    problem = reference_problem(decoded.samples, decoded.sample_rate, decoded.source_rate, rules)
    if problem is not None:
        raise ApiError(400, problem, param="audio_sample", code="invalid_reference")
    return resample(decoded.samples, decoded.sample_rate, REFERENCE_RATE)


async def _off_loop(work: Callable[[], None]) -> None:
    await asyncio.to_thread(work)


async def create_voice(request: Request) -> Response:
    """``POST /v1/voices``."""
    return await answer_call(request, "voices", _create)


async def _delete(request: Request, state: AppState) -> Response:
    engines_ready(state)
    voice_id = request.path_params["voice_id"]
    library = state.voice_library
    voice = library.get(voice_id)
    if voice is None:
        if voice_id in state.engines.tts.voices():
            raise ApiError(409, f"{quoted(voice_id)} is one of the operator's voices; only "
                           "voices added through the API can be deleted", code="voice_protected")
        raise ApiError(404, f"no voice {quoted(voice_id)}", param="voice_id",
                       code="voice_not_found")
    tts = state.engines.tts
    if isinstance(tts, CloningTTS):
        if voice_id == tts.default_voice:
            raise ApiError(409, "the default voice cannot be deleted", code="voice_protected")
        await tts.remove_voice(voice_id)
    await asyncio.to_thread(library.remove, voice_id)
    return JSONResponse({"id": voice_id, "object": "audio.voice.deleted", "deleted": True})


async def delete_voice(request: Request) -> Response:
    """``DELETE /v1/voices/{voice_id}``."""
    return await answer(request, "voices", _delete)


routes = [
    Route(prefix + "/voices", list_voices, methods=["GET"])
    for prefix in ("/v1", "/v1/audio")
] + [
    Route(prefix + "/voices", create_voice, methods=["POST"])
    for prefix in ("/v1", "/v1/audio")
] + [
    Route(prefix + "/voices/{voice_id}", delete_voice, methods=["DELETE"])
    for prefix in ("/v1", "/v1/audio")
]
"""Mounted by agent.server."""
