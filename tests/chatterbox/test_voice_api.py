"""The voice library API with a real (tiny, random-weight, CPU) Chatterbox behind a real
server: a voice cloned through the official ``openai`` SDK is listed, used at once
by ``/v1/audio/speech`` and by a ``/ws`` call, survives a restart, and is deleted;
bad uploads get OpenAI's error shape and leave nothing on disk; Piper says it
cannot clone."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import ResponseDone
from agent.voice_library import VoiceLibrary
from pipeline.audio_codecs import SpeechEncoder, decode_audio
from pipeline.conversation import Engines
from pipeline.engines.base import FloatAudio
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.errors import TTSError
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS
from tests.e2e.conftest import RunningServer, start_server

pytestmark = [*CHATTERBOX_MARKS, pytest.mark.timeout(600)]

KEY = "test-key-for-the-voice-library-api-0123456789abcdef"


class RecordingTTS:
    """The real engine; remembers which voice each synthesis asked for, and can be
    told to fail the next voice it is given (a reference the model chokes on)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.used: list[str | None] = []
        self.fail_next_add = False

    @property
    def default_voice(self) -> str:
        return str(self.inner.default_voice)

    def voices(self) -> Sequence[str]:
        return self.inner.voices()

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        self.used.append(voice)
        chunks = self.inner.synthesize(text, voice=voice)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def add_voice(self, name: str, reference: Path) -> None:
        if self.fail_next_add:
            self.fail_next_add = False
            raise TTSError("the model could not read this reference", transient=False)
        await self.inner.add_voice(name, reference)

    async def remove_voice(self, name: str) -> None:
        await self.inner.remove_voice(name)


def _engine(checkpoint: Path, config: Any, voices_dir: Path) -> Any:
    from pipeline.engines.chatterbox import ChatterboxTTS

    return ChatterboxTTS(
        checkpoint, device="cpu", voices_dir=voices_dir, t3_config=config,
        first_chunk_tokens=8, chunk_tokens=12, left_context_tokens=12, cfm_steps=2,
        max_new_tokens=30, seed=1,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, Path]]:
    from tests.chatterbox.tiny_model import write_checkpoint, write_reference_wav

    root = tmp_path_factory.mktemp("voice-api")
    voices_dir = root / "voices"
    voices_dir.mkdir()
    write_reference_wav(voices_dir / "operator.wav", pitch_hz=180.0)
    config = write_checkpoint(root / "checkpoint", write_reference_wav(root / "b.wav"))
    yield root / "checkpoint", config, voices_dir


@pytest.fixture(scope="module")
def recording(tiny: tuple[Path, Any, Path]) -> Iterator[RecordingTTS]:
    engine = _engine(*tiny)
    yield RecordingTTS(engine)
    engine.close()


@pytest.fixture(scope="module")
def server(tiny: tuple[Path, Any, Path], recording: RecordingTTS) -> Iterator[RunningServer]:
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLLM("Hello, this is the new voice.", first_token_ms=0),
        tts=recording, vad=BatchedVADWorker(SileroVAD()),
    )
    settings = Settings(api_key=KEY, voices_dir=str(tiny[2]), voice_max_bytes=600_000,
                        voice_min_s=3.0, voice_max_s=20.0)
    yield from start_server(settings, engines)


@pytest.fixture
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=server.http + "/v1", max_retries=0,
                       timeout=300.0) as sdk:
        yield sdk


def _voice_recording(seconds: float, rate: int = 24_000, *, level: float = 0.2) -> np.ndarray:
    """A voiced-sounding harmonic tone with vibrato (tiny_model's reference, any length)."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150.0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / rate
    audio = sum(np.sin(k * phase) / k for k in range(1, 8)) * level
    return np.asarray(audio, dtype=np.float32)


def _wav(audio: np.ndarray, rate: int = 24_000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _listed(server: RunningServer) -> dict[str, dict[str, Any]]:
    response = httpx.get(server.http + "/v1/voices", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    return {voice["id"]: voice for voice in response.json()["data"]}


async def _call_with_voice(server: RunningServer, voice: str) -> None:
    async with await VoiceForgeClient.connect(server.url, api_key=KEY) as call:
        await call.update_session(voice=voice)
        await call.send_text("Hello?")
        while True:
            event = await call.next_event(120.0)
            assert event is not None, "the call closed before its reply was done"
            if isinstance(event, ResponseDone):
                assert event.status.value == "completed", event
                return


async def _realtime_call_with_voice(server: RunningServer, voice: str) -> None:
    """The same, through /v1/realtime with the official SDK."""
    client = openai.AsyncOpenAI(base_url=f"{server.http}/v1", api_key=KEY)
    async with asyncio.timeout(120), client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime", "audio": {"output": {"voice": {"id": voice}}}})
        while (event := await conn.recv()).type != "session.updated":
            assert event.type != "error", event
        assert event.session.audio.output.voice == voice
        await conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi?"}]})
        await conn.response.create()
        while (event := await conn.recv()).type != "response.done":
            assert event.type != "error", event
        assert event.response.status == "completed"


def test_a_cloned_voice_round_trips_and_is_used_at_once(
    client: openai.OpenAI, server: RunningServer, recording: RecordingTTS,
    tiny: tuple[Path, Any, Path],
) -> None:
    checkpoint, config, voices_dir = tiny
    mp3 = SpeechEncoder("mp3", 24_000)
    upload = mp3.encode(_voice_recording(4.0)) + mp3.finish()  # any format PyAV reads
    created = client.audio.voices.create(name="Alice", audio_sample=("alice.mp3", upload),
                                         consent="cons_local")
    assert created.name == "Alice" and created.id.startswith("voice_")
    assert sorted(os.listdir(voices_dir)) == sorted(
        ["operator.wav", f"{created.id}.wav", f"{created.id}.json"]
    )
    listed = _listed(server)
    assert listed[created.id]["name"] == "Alice"
    assert listed[created.id]["type"] == "audio_sample"
    assert listed["operator"]["type"] == "builtin"

    recording.used.clear()
    speech = client.audio.speech.create(model="tts-1", voice={"id": created.id}, input="Hi there.",
                                        response_format="wav")
    assert recording.used == [created.id]
    assert decode_audio(speech.content, max_seconds=60, sample_rate=None).duration_s > 0.1

    for call_with_voice in (_call_with_voice, _realtime_call_with_voice):
        recording.used.clear()
        asyncio.run(call_with_voice(server, created.id))
        assert recording.used and set(recording.used) == {created.id}

    # A restart: the engine loads the voice folder again, the library names it.
    restarted = _engine(checkpoint, config, voices_dir)
    try:
        assert created.id in restarted.voices()
    finally:
        restarted.close()
    assert [voice.name for voice in VoiceLibrary(voices_dir).voices()] == ["Alice"]

    deleted = client.audio.voices.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    assert sorted(os.listdir(voices_dir)) == ["operator.wav"]
    assert created.id not in recording.voices()
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice={"id": created.id}, input="Hi.")
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete(created.id)
    with pytest.raises(openai.ConflictError):  # the operator's own voice file
        client.audio.voices.delete("operator")


@pytest.mark.parametrize(
    ("upload", "status", "code", "says"),
    [
        (b"RIFF but not really a wave file" * 10, 400, "invalid_audio", "not an audio file"),
        (_wav(_voice_recording(1.0)), 400, "invalid_reference", "at least 3 s"),
        (None, 400, "audio_too_long", "longer than"),  # 30 s as Opus: small, too long
        (_wav(np.zeros(24_000 * 5, dtype=np.float32)), 400, "invalid_reference", "silent"),
        (_wav(_voice_recording(5.0, 8000), 8000), 400, "invalid_reference", "8000 Hz"),
        (_wav(_voice_recording(5.0, level=0.0005)), 400, "invalid_reference", "too quiet"),
        (b"\x00" * 700_000, 413, "request_too_large", "exceeds"),  # huge
    ],
)
def test_bad_uploads_get_the_api_error_and_leave_nothing_behind(
    client: openai.OpenAI, tiny: tuple[Path, Any, Path], upload: bytes | None, status: int,
    code: str, says: str,
) -> None:
    if upload is None:
        opus = SpeechEncoder("opus", 24_000)
        upload = opus.encode(_voice_recording(30.0)) + opus.finish()
    before = sorted(os.listdir(tiny[2]))
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.voices.create(name="Bad", audio_sample=("bad.wav", upload), consent="c")
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == code, body
    assert says in body["message"] and set(body) == {"message", "type", "param", "code"}
    assert sorted(os.listdir(tiny[2])) == before


def test_an_engine_that_fails_on_the_reference_leaves_nothing_behind(
    client: openai.OpenAI, recording: RecordingTTS, tiny: tuple[Path, Any, Path]
) -> None:
    before = sorted(os.listdir(tiny[2]))
    recording.fail_next_add = True
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.voices.create(name="Bob", audio_sample=("b.wav", _wav(_voice_recording(4.0))),
                                   consent="c")
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "invalid_audio"
    assert sorted(os.listdir(tiny[2])) == before  # not even the hidden partial file


def test_wrong_fields_are_refused(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.voices.create(name="x", prompt="a deep voice", type="prompt")
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] in {"type", "prompt"}
    response = httpx.post(server.http + "/v1/voices", headers={"Authorization": f"Bearer {KEY}"},
                          files={"audio_sample": ("a.wav", _wav(_voice_recording(4.0)))},
                          data={"name": ""})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_name"


def test_piper_cannot_clone(tmp_path: Path) -> None:
    from pipeline.engines.piper import PiperTTS

    piper = PiperTTS()
    engines = Engines(stt=ScriptedSTT(), llm=ScriptedLLM(), tts=piper,
                      vad=BatchedVADWorker(SileroVAD()))
    try:
        for running in start_server(Settings(api_key=KEY, voices_dir=str(tmp_path)), engines):
            with openai.OpenAI(api_key=KEY, base_url=running.http + "/v1", max_retries=0) as sdk:
                with pytest.raises(openai.BadRequestError) as raised:
                    sdk.audio.voices.create(name="A", audio_sample=("a.wav", b"x"), consent="c")
            assert isinstance(raised.value.body, dict)
            assert raised.value.body["code"] == "voice_cloning_unsupported"
            assert "cannot clone" in raised.value.body["message"]
    finally:
        piper.close()
    assert os.listdir(tmp_path) == []
