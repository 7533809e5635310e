"""OpenAI's audio endpoints on this server's engines: ``POST /v1/audio/speech``,
``POST /v1/audio/transcriptions`` and ``GET /v1/models``. What each field does
here (supported, mapped, refused) is in docs/openai-compat.md.

Speech streams: the input is cut by the same chunker a reply's text goes through
(first clause short, then sentences), each chunk is synthesised and every audio
chunk is encoded (``pipeline.audio_codecs``) and sent as soon as the engine makes
it. The response starts with the first encoded bytes, so an error before any audio
(an engine that fails at once) is still an HTTP error; one after it ends the
stream unfinished (``audio``) or as an ``error`` event (``sse``).

Transcription decodes the upload with PyAV under the server's size and duration
limits and transcribes it segment by segment (``SegmentingSTT``; other engines in
one piece), so ``stream=true`` sends each segment's text as it is decoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.openai_api import (
    ApiError,
    HeldResponse,
    answer,
    answer_call,
    engines_ready,
    quoted,
    read_body,
    read_json,
    refuse_unknown,
    replayed,
)
from agent.state import AppState, Slot
from pipeline.audio import PIPELINE_SAMPLE_RATE
from pipeline.audio_codecs import (
    MAX_SPEED,
    MIN_SPEED,
    OUTPUT_FORMATS,
    SPEECH_SAMPLE_RATE,
    SpeechEncoder,
    decode_audio,
)
from pipeline.chunker import TextChunker
from pipeline.engines.base import (
    FloatAudio,
    SegmentingSTT,
    STTEngine,
    TranscriptSegment,
    TTSEngine,
)
from pipeline.errors import AudioFormatError, EngineError
from pipeline.transcript_formats import srt, transcript_text, verbose_segment, verbose_words, vtt

logger = logging.getLogger("voiceforge.api")

OPENAI_VOICES = frozenset({
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
    "verse", "marin", "cedar",
})
"""OpenAI's built-in voice names: code written for OpenAI names one of them, so each
is taken as this server's default voice."""
SPEECH_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""OpenAI's speech models (and their dated snapshots): all mapped to the server's TTS."""
TRANSCRIPTION_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
SPEECH_FIELDS = frozenset({
    "model", "input", "voice", "instructions", "response_format", "speed", "stream_format",
})
TRANSCRIPTION_FIELDS = frozenset({
    "file", "model", "language", "prompt", "response_format", "temperature", "stream",
    "timestamp_granularities[]", "timestamp_granularities", "include[]", "include",
    "chunking_strategy",
})
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FORM_OVERHEAD_BYTES = 64 * 1024
"""What a multipart body may hold besides the file (its other fields, boundaries)."""
MAX_PROMPT_CHARS = 2000


def _alias_of(model: str, aliases: Sequence[str]) -> bool:
    return any(model == alias or model.startswith(alias + "-") for alias in aliases)


def _check_model(value: object, engine_name: str, aliases: Sequence[str]) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "model is required (a string)", param="model", code="missing_model")
    if value not in (engine_name, "voiceforge") and not _alias_of(value, aliases):
        raise ApiError(
            404, f"The model {quoted(value)} does not exist on this server (GET /v1/models)",
            param="model", code="model_not_found",
        )
    return value


# -- /v1/audio/speech ----------------------------------------------------------------


def _speech_voice(value: object, tts: TTSEngine) -> str | None:
    """The engine voice ``value`` names (None: the engine's default)."""
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if not isinstance(value, str) or not value:
        raise ApiError(400, "voice is required: a voice name or {\"id\": ...}", param="voice",
                       code="invalid_voice")
    if value in tts.voices():
        return value
    if value in OPENAI_VOICES:
        return None
    raise ApiError(
        400, f"unknown voice {quoted(value)}; GET /v1/voices lists this server's voices",
        param="voice", code="invalid_voice",
    )


def _speed(value: object) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, "speed must be a number", param="speed", code="invalid_value")
    if not MIN_SPEED <= float(value) <= MAX_SPEED:
        raise ApiError(400, f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {value}",
                       param="speed", code="invalid_value")
    return float(value)


def _choice(body: dict[str, Any], name: str, default: str, allowed: Sequence[str]) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}; got {quoted(value)}",
                       param=name, code="invalid_value")
    return str(value)


async def _synthesised(
    tts: TTSEngine, text: str, voice: str | None, encoder: SpeechEncoder, state: AppState
) -> AsyncGenerator[bytes, None]:
    """Encoded audio, chunk by chunk, as the engine makes it."""
    chunker = TextChunker()
    samples = 0
    try:
        for chunk in [*chunker.push(text), *chunker.flush()]:
            audio: AsyncIterator[FloatAudio] = tts.synthesize(chunk.text, voice=voice)
            try:
                async for piece in audio:
                    samples += piece.size
                    data = encoder.encode(piece)
                    if data:
                        yield data
            finally:
                aclose = getattr(audio, "aclose", None)
                if aclose is not None:
                    await aclose()
        yield encoder.finish()
    finally:
        encoder.close()
        state.metrics.api_audio_seconds.labels("speech").inc(samples / tts.sample_rate)


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _as_events(audio: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        async for data in audio:
            if data:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except EngineError as error:
        yield _sse(ApiError(500, str(error), code="tts_failed").body())
        return
    finally:
        await audio.aclose()  # a client that left: the synthesis stops now, not at GC
    yield _sse({"type": "speech.audio.done"})


async def _then(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for data in rest:
            yield data
    finally:
        await rest.aclose()


async def _speech(request: Request, state: AppState, slot: Slot) -> Response:
    settings = state.settings
    limit = settings.speech_max_input_chars
    body = await read_json(request, 4 * (limit + settings.max_instructions_chars) + 4096)
    refuse_unknown(body, SPEECH_FIELDS)
    tts = state.engines.tts
    _check_model(body.get("model"), tts.name, SPEECH_MODEL_ALIASES)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input is required: the text to speak", param="input",
                       code="missing_input")
    if len(text) > limit:
        raise ApiError(400, f"input is {len(text)} characters; at most {limit} are allowed",
                       param="input", code="string_above_max_length")
    instructions = body.get("instructions")
    if instructions is not None and (
        not isinstance(instructions, str) or len(instructions) > settings.max_instructions_chars
    ):
        raise ApiError(400, f"instructions must be a string of at most "
                       f"{settings.max_instructions_chars} characters", param="instructions",
                       code="invalid_value")
    voice = _speech_voice(body.get("voice"), tts)
    speed = _speed(body.get("speed"))
    fmt = _choice(body, "response_format", "mp3", tuple(OUTPUT_FORMATS))
    stream_format = _choice(body, "stream_format", "audio", ("audio", "sse"))
    encoder = SpeechEncoder(fmt, tts.sample_rate, speed=speed)
    audio = _synthesised(tts, text, voice, encoder, state)
    try:
        first = b""
        while not first:  # the first bytes, before the answer's status is sent
            first = await anext(audio)
    except StopAsyncIteration:
        raise ApiError(400, "input has nothing to speak (only markup or code)", param="input",
                       code="nothing_to_speak") from None
    except EngineError as error:
        await audio.aclose()
        logger.warning("speech failed before its first audio: %s", error)
        raise ApiError(503 if error.transient else 500, f"speech synthesis failed: {error}",
                       code="tts_failed") from None
    except BaseException:
        await audio.aclose()
        raise
    content = _then(first, audio)
    headers = {"X-VoiceForge-Sample-Rate": str(SPEECH_SAMPLE_RATE)}
    if stream_format == "sse":
        return HeldResponse(_as_events(content), slot, media_type="text/event-stream",
                            headers={**headers, "Cache-Control": "no-store"})
    return HeldResponse(content, slot, media_type=encoder.media_type, headers=headers)


async def speech(request: Request) -> Response:
    """``POST /v1/audio/speech``."""
    return await answer_call(request, "speech", _speech)


# -- /v1/audio/transcriptions ----------------------------------------------------------


def _form_text(form: Any, name: str, default: str | None = None) -> str | None:
    value = form.get(name)
    if value is None:
        return default
    if isinstance(value, UploadFile):
        raise ApiError(400, f"{name} must be a text field, not a file", param=name,
                       code="invalid_value")
    return str(value)


async def _transcription_form(request: Request, max_bytes: int) -> tuple[Any, bytes]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "send the file as multipart/form-data", code="invalid_content_type")
    body = await read_body(request, max_bytes + FORM_OVERHEAD_BYTES)
    try:
        form = await replayed(request, body).form(max_files=1, max_fields=32,
                                                  max_part_size=64 * 1024)
    except MultiPartException as error:
        raise ApiError(400, f"the form cannot be read: {error}", code="invalid_form") from None
    try:
        refuse_unknown(set(form.keys()), TRANSCRIPTION_FIELDS)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "file is required: the audio to transcribe", param="file",
                           code="missing_file")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(413, f"the file exceeds {max_bytes} bytes", param="file",
                           code="file_too_large")
    except BaseException:
        await form.close()
        raise
    return form, data


async def _segments(
    stt: STTEngine, audio: FloatAudio, *, language: str | None, prompt: str | None,
    temperature: float | None, words: bool,
) -> AsyncGenerator[TranscriptSegment, None]:
    if isinstance(stt, SegmentingSTT):
        segments = stt.transcribe_segments(audio, language=language, prompt=prompt,
                                           temperature=temperature, word_timestamps=words)
        try:
            async for segment in segments:
                # Silence decodes to a lone "." (as WhisperSTT.transcribe drops it).
                if any(char.isalnum() for char in segment.text):
                    yield segment
        finally:
            aclose = getattr(segments, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    transcript = await stt.transcribe(audio)
    if transcript.text:
        yield TranscriptSegment(0, 0.0, transcript.audio_ms / 1000.0, transcript.text,
                                language or "en")


def _float_field(value: str | None, name: str, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a number", param=name, code="invalid_value") from None
    if not low <= number <= high:
        raise ApiError(400, f"{name} must be in [{low:g}, {high:g}]", param=name,
                       code="invalid_value")
    return number


async def _transcription(request: Request, state: AppState, slot: Slot) -> Response:
    settings = state.settings
    form, data = await _transcription_form(request, settings.upload_max_bytes)
    try:
        return await _transcribe_form(state, slot, form, data)
    finally:
        await form.close()


async def _transcribe_form(state: AppState, slot: Slot, form: Any, data: bytes) -> Response:
    settings = state.settings
    stt = state.engines.stt
    _check_model(_form_text(form, "model"), stt.name, TRANSCRIPTION_MODEL_ALIASES)
    fmt = _form_text(form, "response_format", "json") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                       param="response_format", code="invalid_value")
    stream = (_form_text(form, "stream", "false") or "false").lower() == "true"
    if stream and fmt not in ("json", "text"):
        raise ApiError(400, "stream=true answers in events: use response_format json or text",
                       param="stream", code="invalid_value")
    granularities = {str(value) for value in [*form.getlist("timestamp_granularities[]"),
                                              *form.getlist("timestamp_granularities")]}
    if granularities - {"word", "segment"}:
        raise ApiError(400, "timestamp_granularities are word and/or segment",
                       param="timestamp_granularities", code="invalid_value")
    if granularities and fmt != "verbose_json":
        raise ApiError(400, "timestamp_granularities need response_format verbose_json",
                       param="timestamp_granularities", code="invalid_value")
    language = _form_text(form, "language")
    if language is not None and (not language.isalpha() or not 2 <= len(language) <= 3):
        raise ApiError(400, "language is an ISO-639-1 code such as en", param="language",
                       code="invalid_language")
    if language and language != "en" and not getattr(stt, "multilingual", False):
        raise ApiError(400, f"the model {stt.name} transcribes English only", param="language",
                       code="unsupported_language")
    prompt = _form_text(form, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt is longer than {MAX_PROMPT_CHARS} characters",
                       param="prompt", code="string_above_max_length")
    temperature = _float_field(_form_text(form, "temperature"), "temperature", 0.0, 1.0)
    try:
        decoded = await asyncio.to_thread(
            decode_audio, data, max_seconds=settings.transcription_max_audio_s,
            sample_rate=PIPELINE_SAMPLE_RATE,
        )
    except AudioFormatError as error:
        code = "audio_too_long" if "longer than" in str(error) else "invalid_audio"
        raise ApiError(400, str(error), param="file", code=code) from None
    state.metrics.api_audio_seconds.labels("transcriptions").inc(decoded.duration_s)
    segments = _segments(stt, decoded.samples, language=language, prompt=prompt,
                         temperature=temperature, words="word" in granularities)
    if stream:
        return HeldResponse(_transcript_events(segments), slot, media_type="text/event-stream",
                            headers={"Cache-Control": "no-store"})
    try:
        found = [segment async for segment in segments]
    except EngineError as error:
        raise ApiError(503 if error.transient else 500, f"transcription failed: {error}",
                       code="stt_failed") from None
    finally:
        await segments.aclose()
    return _transcription_response(fmt, found, decoded.duration_s, language, granularities)


def _transcription_response(
    fmt: str, segments: list[TranscriptSegment], duration_s: float, language: str | None,
    granularities: set[str],
) -> Response:
    text = transcript_text(segments)
    usage = {"type": "duration", "seconds": round(duration_s, 3)}
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt == "srt":
        return PlainTextResponse(srt(segments))
    if fmt == "vtt":
        return PlainTextResponse(vtt(segments), media_type="text/vtt")
    if fmt == "json":
        return JSONResponse({"text": text, "usage": usage})
    verbose: dict[str, Any] = {
        "task": "transcribe",
        "language": segments[0].language if segments else (language or "en"),
        "duration": round(duration_s, 3),
        "text": text,
        "usage": usage,
    }
    if not granularities or "segment" in granularities:
        verbose["segments"] = [verbose_segment(segment) for segment in segments]
    if "word" in granularities:
        verbose["words"] = verbose_words(segments)
    return JSONResponse(verbose)


async def _transcript_events(
    segments: AsyncGenerator[TranscriptSegment, None],
) -> AsyncGenerator[bytes, None]:
    texts: list[str] = []
    try:
        async for segment in segments:
            piece = segment.text.strip()
            if not piece:
                continue
            yield _sse({"type": "transcript.text.delta",
                        "delta": piece if not texts else " " + piece})
            texts.append(piece)
    except EngineError as error:
        yield _sse(ApiError(500, f"transcription failed: {error}", code="stt_failed").body())
        return
    finally:
        await segments.aclose()
    yield _sse({"type": "transcript.text.done", "text": " ".join(texts)})


async def transcriptions(request: Request) -> Response:
    """``POST /v1/audio/transcriptions``."""
    return await answer_call(request, "transcriptions", _transcription)


# -- /v1/models ------------------------------------------------------------------------


def _model(model_id: str, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


def _models(state: AppState) -> list[dict[str, Any]]:
    engines = state.engines
    listed = [_model("voiceforge", "voiceforge")]
    listed += [_model(engine.name, "voiceforge") for engine in (engines.stt, engines.llm,
                                                                  engines.tts)]
    listed += [_model(alias, f"voiceforge:{engines.tts.name}") for alias in SPEECH_MODEL_ALIASES]
    listed += [_model(alias, f"voiceforge:{engines.stt.name}")
               for alias in TRANSCRIPTION_MODEL_ALIASES]
    return listed


async def _list_models(request: Request, state: AppState) -> Response:
    engines_ready(state)
    return JSONResponse({"object": "list", "data": _models(state)})


async def _one_model(request: Request, state: AppState) -> Response:
    engines_ready(state)
    wanted = request.path_params["model"]
    for model in _models(state):
        if model["id"] == wanted:
            return JSONResponse(model)
    raise ApiError(404, f"The model {quoted(wanted)} does not exist on this server",
                   param="model", code="model_not_found")


async def models(request: Request) -> Response:
    """``GET /v1/models``."""
    return await answer(request, "models", _list_models)


async def model(request: Request) -> Response:
    """``GET /v1/models/{model}``."""
    return await answer(request, "models", _one_model)


routes = [
    Route("/v1/audio/speech", speech, methods=["POST"]),
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]
"""Mounted by agent.server."""
