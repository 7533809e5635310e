"""``/v1/audio/speech``, ``/v1/audio/transcriptions`` and ``/v1/models`` driven by the
official ``openai`` SDK, unmodified, over a real server with the embedded engines."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

import httpx2
import numpy as np
import openai
import pytest
import soundfile

from agent.config import Settings
from pipeline.audio_codecs import SpeechEncoder, decode_audio
from pipeline.conversation import Engines
from pipeline.engines.base import FloatAudio, TTSEngine
from tests.e2e.conftest import RunningServer, sharing, start_server
from tests.speech import silence, speak

pytestmark = pytest.mark.timeout(300)

LONG_TEXT = (
    "The first sentence is short. The second one goes on a little longer than that. "
    "Then a third sentence follows, and a fourth closes the paragraph."
)
SPEED_TEXT = "Hello there, this is a test of how fast the speech goes."
SPOKEN = "what is the capital of France and what is the capital of Germany"
KEY = "test-key-for-the-openai-audio-endpoints-0123456789"


class GatedTTS:
    """The real engine, holding back its later chunks until the client has read the
    first bytes of the answer: a server that buffered the whole input before
    sending would never let the client read, and the order log shows it."""

    def __init__(self, inner: TTSEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.log: list[str] = []
        self.client_has_bytes = threading.Event()
        self.gating = False
        self.gave_up = False

    def voices(self) -> Sequence[str]:
        return self.inner.voices()

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        chunks = self.inner.synthesize(text, voice=voice)
        try:
            async for chunk in chunks:
                if self.gating and "chunk" in self.log and not self.gave_up:
                    if not await asyncio.to_thread(self.client_has_bytes.wait, 20.0):
                        self.gave_up = True  # the client never got bytes: stop holding
                self.log.append("chunk")
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def arm(self) -> None:
        self.log.clear()
        self.client_has_bytes.clear()
        self.gating = True
        self.gave_up = False


@pytest.fixture(scope="module")
def gated(embedded_engines: Engines) -> GatedTTS:
    return GatedTTS(embedded_engines.tts)


@pytest.fixture(scope="module")
def api_server(embedded_engines: Engines, gated: GatedTTS) -> Iterator[RunningServer]:
    engines = replace(sharing(embedded_engines), tts=gated)
    settings = Settings(
        api_key=KEY, upload_max_bytes=400_000, transcription_max_audio_s=20.0,
        speech_max_input_chars=500,
    )
    yield from start_server(settings, engines)


@pytest.fixture
def client(api_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=api_server.http + "/v1", max_retries=0,
                       timeout=120.0) as sdk:
        yield sdk


def _wav_bytes(audio: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _encoded(audio: np.ndarray, fmt: str, rate: int = 16000) -> bytes:
    encoder = SpeechEncoder(fmt, rate)
    return encoder.encode(audio) + encoder.finish()


def _words(text: str) -> set[str]:
    return {word.strip(".,!?").lower() for word in text.split()}


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_speech_streams_before_the_whole_input_is_synthesised(
    client: openai.OpenAI, gated: GatedTTS, fmt: str
) -> None:
    gated.arm()
    try:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG_TEXT, response_format=fmt
        ) as response:
            assert response.headers["content-type"].startswith(
                "audio/wav" if fmt == "wav" else "audio/mpeg"
            )
            chunks = response.iter_bytes()
            first = next(chunks)
            gated.log.append("client_first_bytes")
            gated.client_has_bytes.set()
            data = first + b"".join(chunks)
    finally:
        gated.gating = False
    assert not gated.gave_up, "the server sent nothing until the whole input was synthesised"
    at = gated.log.index("client_first_bytes")
    assert "chunk" in gated.log[at:], gated.log  # synthesis went on after the first bytes
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"  # a streamed WAV
    decoded = decode_audio(data, max_seconds=60, sample_rate=None)
    assert decoded.source_rate == 24_000
    assert decoded.duration_s > 4.0
    # What was said comes back through the transcription endpoint.
    heard = client.audio.transcriptions.create(model="whisper-1", file=(f"s.{fmt}", data))
    assert {"first", "sentence", "paragraph"} <= _words(heard.text)


@pytest.mark.parametrize("fmt", ["opus", "aac", "flac", "pcm"])
def test_speech_in_every_other_format(client: openai.OpenAI, gated: GatedTTS, fmt: str) -> None:
    voice = gated.voices()[0]  # a voice by the engine's own name
    response = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice=voice, input=SPEED_TEXT, response_format=fmt,
        speed=1.5,
    )
    data = response.content
    if fmt == "pcm":
        seconds = len(data) / 2 / 24_000
    else:
        seconds = decode_audio(data, max_seconds=60, sample_rate=None).duration_s
    normal = client.audio.speech.create(
        model="tts-1", voice={"id": voice}, input=SPEED_TEXT, response_format="pcm"
    ).content
    assert 0.2 < seconds < len(normal) / 2 / 24_000 / 1.2  # faster at speed 1.5


def test_speech_as_server_sent_events(client: openai.OpenAI) -> None:
    response = client.audio.speech.create(
        model="tts-1", voice="alloy", input=LONG_TEXT, response_format="pcm",
        stream_format="sse",
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    assert [event["type"] for event in events][-1] == "speech.audio.done"
    deltas = [event for event in events if event["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    import base64

    pcm = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert len(pcm) / 2 / 24_000 > 4.0


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"input": "x" * 501}, 400, "input"),
        ({"input": "   "}, 400, "input"),
        ({"voice": "no-such-voice"}, 400, "voice"),
        ({"speed": 9.0}, 400, "speed"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"extra_body": {"bogus": 1}}, 400, "bogus"),
        ({"response_format": "ogg"}, 400, "response_format"),
    ],
)
def test_speech_refuses_bad_requests_in_the_api_shape(
    client: openai.OpenAI, kwargs: dict[str, object], status: int, param: str
) -> None:
    request: dict[str, object] = {"model": "tts-1", "voice": "alloy", "input": "Hello."}
    request.update(kwargs)
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.speech.create(**request)  # type: ignore[arg-type]
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["param"] == param and body["type"] == "invalid_request_error"


def test_a_wrong_key_gets_401_in_the_api_shape(api_server: RunningServer) -> None:
    with openai.OpenAI(api_key="wrong", base_url=api_server.http + "/v1", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "invalid_api_key"
    refusals = api_server.app_state.metrics.refusals.labels("unauthorized")._value.get()
    assert refusals >= 2


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    return speak(f"{SPOKEN}.")


@pytest.mark.parametrize("container", ["wav", "mp3", "opus", "flac", "aac"])
def test_transcribes_common_containers(
    client: openai.OpenAI, spoken: np.ndarray, container: str
) -> None:
    data = _wav_bytes(spoken) if container == "wav" else _encoded(spoken, container)
    result = client.audio.transcriptions.create(model="whisper-1", file=(f"a.{container}", data))
    assert {"capital", "france", "germany"} <= _words(result.text)
    assert result.usage is not None and result.usage.type == "duration"


def test_transcription_in_every_response_format(client: openai.OpenAI, spoken: np.ndarray) -> None:
    audio = np.concatenate([silence(0.5), spoken, silence(0.5)])
    data = _wav_bytes(audio)
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data),
                                              response_format="text")
    assert {"capital", "france", "germany"} <= _words(text)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data),
                                             response_format="srt")
    assert srt.startswith("1\n00:00:0") and " --> " in srt and "france" in srt.lower()
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data),
                                             response_format="vtt")
    assert vtt.startswith("WEBVTT") and "00:00:0" in vtt and "france" in vtt.lower()
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en", prompt="Capitals of Europe.",
    )
    duration = audio.size / 16000
    assert verbose.duration == pytest.approx(duration, abs=0.01)
    assert verbose.language == "en"
    assert verbose.segments and verbose.segments[0].end <= duration + 0.5
    assert verbose.words is not None
    spoken_words = [word.word.strip(".,?").lower() for word in verbose.words]
    assert "france" in spoken_words and "germany" in spoken_words
    starts = [word.start for word in verbose.words]
    # The first word ends after the half second of silence; the last before the end.
    assert starts == sorted(starts) and verbose.words[0].end > 0.5
    assert verbose.words[-1].end <= duration


def test_transcription_streams_events(client: openai.OpenAI, spoken: np.ndarray) -> None:
    stream = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", _wav_bytes(spoken)), stream=True
    )
    events = list(stream)
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(event.delta for event in events if event.type == "transcript.text.delta")
    assert deltas == events[-1].text and {"capital", "france"} <= _words(deltas)


def test_silence_transcribes_to_nothing(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("quiet.wav", _wav_bytes(silence(2.0)))
    )
    assert result.text == ""


@pytest.mark.parametrize(
    ("upload", "extra", "status", "code"),
    [
        (b"this is not audio at all" * 50, {}, 400, "invalid_audio"),
        (b"\x00" * 500_000, {}, 413, "request_too_large"),
        (None, {}, 400, "audio_too_long"),  # 25 s of silence as FLAC: small, too long
        (b"", {}, 400, "invalid_audio"),
        (None, {"extra_body": {"colour": "blue"}}, 400, "unknown_parameter"),
        (None, {"language": "fr"}, 400, "unsupported_language"),
        (None, {"response_format": "srt", "timestamp_granularities": ["word"]}, 400,
         "invalid_value"),
    ],
)
def test_transcription_refuses_bad_uploads_in_the_api_shape(
    client: openai.OpenAI, upload: bytes | None, extra: dict[str, object], status: int,
    code: str,
) -> None:
    data = upload if upload is not None else _encoded(silence(25.0), "flac")
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(
            model="whisper-1", file=("upload.bin", data), **extra  # type: ignore[arg-type]
        )
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == code, body
    assert set(body) == {"message", "type", "param", "code"}


def test_models_lists_the_engines_and_openai_names(
    client: openai.OpenAI, api_server: RunningServer
) -> None:
    ids = {model.id for model in client.models.list()}
    engines = api_server.app_state.engines
    assert {engines.stt.name, engines.tts.name, "whisper-1", "tts-1"} <= ids
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nothing")


def test_requests_hold_a_session_slot_and_are_counted(api_server: RunningServer) -> None:
    state = api_server.app_state
    assert state.open_calls() == 0  # every earlier request gave its slot back
    counted = state.metrics.api_requests.labels("speech", "200")._value.get()
    assert counted >= 3


class BreakingTTS:
    """The real engine, failing after its first chunk (``fail``) and telling when the
    synthesis generator was closed (the client left or the answer ended)."""

    def __init__(self, inner: TTSEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.fail = False
        self.closed = threading.Event()
        self.chunks = 0

    def voices(self) -> Sequence[str]:
        return self.inner.voices()

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        chunks = self.inner.synthesize(text, voice=voice)
        try:
            async for chunk in chunks:
                if self.fail and self.chunks:
                    from pipeline.errors import TTSError

                    raise TTSError("the voice model fell over", transient=False)
                self.chunks += 1
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            self.closed.set()


@pytest.fixture(scope="module")
def breaking(embedded_engines: Engines) -> BreakingTTS:
    return BreakingTTS(embedded_engines.tts)


@pytest.fixture(scope="module")
def breaking_server(embedded_engines: Engines, breaking: BreakingTTS) -> Iterator[RunningServer]:
    yield from start_server(Settings(), replace(sharing(embedded_engines), tts=breaking))


def test_a_failure_after_the_first_bytes_is_an_error_not_a_short_file(
    breaking_server: RunningServer, breaking: BreakingTTS
) -> None:
    breaking.fail, breaking.chunks = True, 0
    with openai.OpenAI(api_key="none", base_url=breaking_server.http + "/v1",
                       max_retries=0) as sdk:
        with pytest.raises(httpx2.RemoteProtocolError):  # the body was cut, never completed
            with sdk.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=LONG_TEXT, response_format="wav"
            ) as response:
                assert response.status_code == 200
                b"".join(response.iter_bytes())
        breaking.chunks = 0
        sse = sdk.audio.speech.create(model="tts-1", voice="alloy", input=LONG_TEXT,
                                      response_format="pcm", stream_format="sse")
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["error"]["code"] == "tts_failed"  # said, in the stream's own terms


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_a_client_that_leaves_stops_the_synthesis_and_frees_its_slot(
    breaking_server: RunningServer, breaking: BreakingTTS, stream_format: str
) -> None:
    breaking.fail, breaking.chunks = False, 0
    text = " ".join([LONG_TEXT] * 3)
    with openai.OpenAI(api_key="none", base_url=breaking_server.http + "/v1",
                       max_retries=0) as sdk:
        breaking.closed.clear()
        with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm",
            stream_format=stream_format,  # type: ignore[arg-type]
        ) as response:
            next(response.iter_bytes())  # then leave
    assert breaking.closed.wait(30)
    made = breaking.chunks
    state = breaking_server.app_state
    for _ in range(300):  # bounded: the slot goes back as the answer ends
        if state.open_calls() == 0:
            break
        threading.Event().wait(0.05)
    assert state.open_calls() == 0
    assert made < 9, f"{made} chunks: the whole input was synthesised for a client that left"


def test_a_session_token_opens_the_api_like_a_call(api_server: RunningServer) -> None:
    minted = httpx2.post(api_server.http + "/v1/session-tokens",
                         headers={"Authorization": f"Bearer {KEY}"},
                         json={"audience": ["ws"], "max_calls": 1})
    assert minted.status_code == 200
    token = minted.json()["token"]
    with openai.OpenAI(api_key=token, base_url=api_server.http + "/v1", max_retries=0) as sdk:
        audio = sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hi.",
                                        response_format="pcm")
        assert len(audio.content) > 2400
        with pytest.raises(openai.AuthenticationError):  # its one call is used
            sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
