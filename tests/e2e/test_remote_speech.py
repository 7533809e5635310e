"""The remote speech engines: a spoken call whose STT and TTS are another VoiceForge's
``/v1/audio/transcriptions`` and ``/v1/audio/speech``, and the engines against a
scripted server for the faults (slow first byte, a stall, a stream cut mid-way,
4xx, 5xx) and for the barge-in's closed stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import TranscriptFinal
from pipeline.conversation import Engines
from pipeline.engines.bench import ScriptedLLM
from pipeline.engines.remote_speech import RemoteSpeechTTS, RemoteTranscriptionSTT
from pipeline.errors import STTError, TTSError
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.e2e.caller import Caller
from tests.e2e.conftest import start_server
from tests.e2e.test_cli import served_url
from tests.speech import speak

pytestmark = pytest.mark.timeout(300)

PCM_50MS = (np.sin(np.arange(1200) / 5.0) * 8000).astype("<i2").tobytes()


class Script:
    """What the scripted server did: whether a stream it was sending was closed."""

    def __init__(self) -> None:
        self.stream_closed = threading.Event()
        self.sent = 0


def _scripted_app(script: Script) -> Starlette:
    async def speech(request: Request) -> Response:
        model = (await request.json())["model"]
        if model.startswith("error-"):
            status = int(model[6:])
            return JSONResponse({"error": {"message": "scripted", "type": "x", "param": None,
                                           "code": None}}, status)
        if model == "slow":
            await asyncio.sleep(5.0)

        async def body() -> AsyncIterator[bytes]:
            try:
                for index in range(10_000 if model == "endless" else 4):
                    if model == "stall" and index == 1:
                        await asyncio.sleep(5.0)
                    if model == "cut" and index == 2:
                        raise RuntimeError("scripted cut")  # the connection drops mid-body
                    script.sent += 1
                    yield PCM_50MS
                    await asyncio.sleep(0.01)
            finally:
                script.stream_closed.set()

        return StreamingResponse(body(), media_type="audio/pcm")

    async def transcriptions(request: Request) -> Response:
        form = await request.form()
        model = str(form["model"])
        await form.close()
        if model.startswith("error-"):
            return JSONResponse({"error": {"message": "scripted", "type": "x", "param": None,
                                           "code": None}}, int(model[6:]))
        if model == "slow":
            await asyncio.sleep(5.0)
        return JSONResponse({"text": " Scripted words."})

    return Starlette(routes=[Route("/v1/audio/speech", speech, methods=["POST"]),
                             Route("/v1/audio/transcriptions", transcriptions,
                                   methods=["POST"])])


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    config = uvicorn.Config(_scripted_app(script), host="127.0.0.1", port=0,
                            log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "scripted server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", script
    server.should_exit = True
    thread.join(timeout=10)


async def _collect(tts: RemoteSpeechTTS, text: str = "Hello.") -> list[np.ndarray]:
    return [chunk async for chunk in tts.synthesize(text)]


async def _tts_fault(url: str, model: str) -> tuple[list[np.ndarray], BaseException | None]:
    tts = RemoteSpeechTTS(url, model, first_byte_timeout_s=0.5, stall_timeout_s=0.5)
    got: list[np.ndarray] = []
    try:
        async for chunk in tts.synthesize("Hello."):
            got.append(chunk)
    except TTSError as error:
        return got, error
    finally:
        await tts.aclose()
    return got, None


@pytest.mark.parametrize(
    ("model", "transient", "says", "some_audio_first"),
    [
        ("slow", True, "no first byte", False),
        ("stall", True, "no next byte", True),
        ("cut", True, "broke off", True),
        ("error-400", False, "HTTP 400", False),
        ("error-401", False, "HTTP 401", False),
        ("error-503", True, "HTTP 503", False),
        ("error-429", True, "HTTP 429", False),
    ],
)
def test_remote_tts_faults(
    scripted: tuple[str, Script], model: str, transient: bool, says: str,
    some_audio_first: bool,
) -> None:
    url, _ = scripted
    got, error = asyncio.run(_tts_fault(url, model))
    assert isinstance(error, TTSError), got
    assert error.transient is transient and says in str(error)
    assert url in str(error)
    assert bool(got) is some_audio_first


def test_remote_tts_streams_and_a_barge_in_closes_the_stream(
    scripted: tuple[str, Script],
) -> None:
    url, script = scripted

    async def run() -> tuple[int, int]:
        tts = RemoteSpeechTTS(url, "tts-1")
        try:
            whole = await _collect(tts)
            script.stream_closed.clear()
            script.sent = 0
            stream = tts.synthesize("Talk for ever.").__aiter__()
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]  # the barge-in
            closed = await asyncio.to_thread(script.stream_closed.wait, 10.0)
            assert closed, "the remote server kept streaming after the caller stopped"
            return len(whole), script.sent
        finally:
            await tts.aclose()

    chunks, sent = asyncio.run(run())
    assert chunks >= 2  # four 50 ms pieces: streamed, not one blob
    assert sent < 1000  # the endless stream stopped


@pytest.mark.parametrize(
    ("model", "transient", "says"),
    [("error-500", True, "HTTP 500"), ("error-400", False, "HTTP 400"),
     ("slow", True, "within 0.5 s")],
)
def test_remote_stt_faults(
    scripted: tuple[str, Script], model: str, transient: bool, says: str
) -> None:
    url, _ = scripted

    async def run() -> STTError:
        stt = RemoteTranscriptionSTT(url, model, timeout_s=0.5)
        try:
            with pytest.raises(STTError) as raised:
                await stt.transcribe(np.zeros(16000, dtype=np.float32))
            return raised.value
        finally:
            await stt.aclose()

    error = asyncio.run(run())
    assert error.transient is transient and says in str(error)


def test_remote_stt_reads_the_transcript(scripted: tuple[str, Script]) -> None:
    url, _ = scripted

    async def run() -> str:
        stt = RemoteTranscriptionSTT(url, "whisper-1")
        try:
            return (await stt.transcribe(np.zeros(16000, dtype=np.float32))).text
        finally:
            await stt.aclose()

    assert asyncio.run(run()) == "Scripted words."


async def test_a_spoken_call_over_another_voiceforges_speech_api(served_url: str) -> None:
    """The speech server is a second VoiceForge process (``voiceforge serve``, the
    embedded default); this process's call reaches its STT and TTS over HTTP only."""
    base = served_url.replace("ws://", "http://").removesuffix("/ws") + "/v1"

    def remote_engines() -> Engines:
        # Built by the app (a factory): its lifespan closes their HTTP clients on its loop.
        return Engines(stt=RemoteTranscriptionSTT(base, "whisper-1"),
                       llm=ScriptedLLM("Paris is the capital of France."),
                       tts=RemoteSpeechTTS(base, "tts-1", voices=("alloy",)),
                       vad=BatchedVADWorker(SileroVAD()))

    servers = start_server(Settings(), remote_engines)  # type: ignore[arg-type]
    caller_server = next(servers)
    try:
        for _ in range(600):  # bounded: the factory runs in a thread
            if caller_server.app_state.loaded:
                break
            await asyncio.sleep(0.05)
        assert caller_server.app_state.engines.tts.name == "openai-speech:tts-1"
        async with await VoiceForgeClient.connect(caller_server.url) as client:
            caller = Caller(client)
            caller.start()
            try:
                caller.say(speak("What is the capital of France?"))
                done = await caller.wait_done(120)
                assert done.status.value == "completed", done
                heard = caller.messages(TranscriptFinal)
                assert heard and "capital" in heard[0].text.lower()  # type: ignore[attr-defined]
                audio = caller.audio_of(done.response_id)
                assert audio.size > 16000 * 0.5  # the reply was spoken, over the remote TTS
            finally:
                await caller.stop()
    finally:
        servers.close()
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(base.removesuffix("/v1") + "/metrics")).text
    for endpoint in ("transcriptions", "speech"):
        line = f'voiceforge_api_requests_total{{endpoint="{endpoint}",status="200"}}'
        assert line in scraped, f"the speech process served no {endpoint}"


__all__ = ["served_url"]
"""The second VoiceForge process (``voiceforge serve``), as tests/e2e/test_cli.py starts it."""
