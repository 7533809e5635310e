"""Speech engines behind any OpenAI-compatible audio API: a TTS streaming from
``/v1/audio/speech`` and an STT posting to ``/v1/audio/transcriptions`` (another
VoiceForge's GPU speech, a vLLM-served Higgs Audio, OpenAI itself).

The TTS asks for raw ``pcm`` (16-bit, 24 kHz, OpenAI's documented format) and
yields the audio as it arrives, so the first chunk plays while the server is still
synthesising. Time limits are ours, as for the LLM engine: ``first_byte_timeout_s``
from the request to the first audio, ``stall_timeout_s`` every gap after it.
Closing the generator (a barge-in) closes the HTTP stream, which stops the remote
synthesis. Errors follow the LLM engine's rules: a connection failure, a timeout,
429 and 5xx are transient (the conversation retries them while nothing of the
reply was heard); other statuses are permanent and name the URL, never the key.
The engines retry nothing themselves: a retried stream would repeat audio the
caller may already have heard.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import numpy as np
import openai
import soundfile

from pipeline.audio import PIPELINE_SAMPLE_RATE, duration_ms, pcm16_to_float
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.errors import EngineError, STTError, TTSError

REMOTE_PCM_RATE = 24_000
DEFAULT_API_KEY_ENV = "VOICEFORGE_SPEECH_API_KEY"
DEFAULT_VOICES = ("alloy",)
MIN_CHUNK_BYTES = 2 * REMOTE_PCM_RATE // 20
"""50 ms: the network's small reads are joined into chunks worth resampling."""


def _client(base_url: str, api_key: str | None, api_key_env: str,
            connect_timeout_s: float) -> openai.AsyncOpenAI:
    key = api_key if api_key is not None else os.environ.get(api_key_env) or "EMPTY"
    return openai.AsyncOpenAI(
        base_url=base_url.rstrip("/"), api_key=key, max_retries=0,
        # Reads are bounded by our own per-step limits, not by the client.
        timeout=openai.Timeout(None, connect=connect_timeout_s, write=connect_timeout_s,
                               pool=connect_timeout_s),
    )


def _translate(error: openai.OpenAIError, where: str, kind: type[EngineError]) -> EngineError:
    if isinstance(error, openai.APITimeoutError):
        return kind(f"timed out talking to {where}", transient=True)
    if isinstance(error, openai.APIConnectionError):
        return kind(f"cannot reach {where}: {error.__cause__ or error}", transient=True)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        return kind(f"{where} answered HTTP {status}: {error.message}",
                    transient=status >= 500 or status == 429)
    return kind(f"{where} failed: {error}", transient=True)


class RemoteSpeechTTS:
    """Streams speech from an OpenAI-compatible ``/v1/audio/speech``."""

    sample_rate = REMOTE_PCM_RATE

    def __init__(
        self,
        base_url: str,
        model: str = "tts-1",
        *,
        voices: Sequence[str] = DEFAULT_VOICES,
        api_key: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        connect_timeout_s: float = 5.0,
        first_byte_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
    ) -> None:
        if not voices:
            raise ValueError("a remote TTS needs at least one voice name")
        self.model = model
        self.name = f"openai-speech:{model}"
        self.default_voice = voices[0]
        self._voices = list(voices)
        self.first_byte_timeout_s = first_byte_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._client = _client(base_url, api_key, api_key_env, connect_timeout_s)
        self.endpoint = f"{base_url.rstrip('/')}/audio/speech"

    def voices(self) -> Sequence[str]:
        return list(self._voices)

    async def synthesize(
        self, text: str, *, voice: str | None = None
    ) -> AsyncGenerator[FloatAudio, None]:
        """Yield float32 chunks at 24 kHz as the remote server sends them."""
        chosen = voice or self.default_voice
        if chosen not in self._voices:
            raise TTSError(f"unknown voice {chosen!r} (known: {', '.join(self._voices)})",
                           transient=False)
        if not text.strip():
            return
        deadline = time.monotonic() + self.first_byte_timeout_s
        request = self._client.audio.speech.with_streaming_response.create(
            model=self.model, voice=chosen, input=text, response_format="pcm"
        )
        try:
            response = await self._within(request.__aenter__(), deadline - time.monotonic(),
                                          "first byte")
        except openai.OpenAIError as error:
            raise _translate(error, self.endpoint, TTSError) from error
        try:
            pieces = response.iter_bytes()
            pending = b""
            first = True
            while True:
                limit = deadline - time.monotonic() if first else self.stall_timeout_s
                try:
                    data = await self._within(anext(pieces), limit,
                                              "first byte" if first else "next byte")
                except StopAsyncIteration:
                    break
                except openai.OpenAIError as error:
                    raise _translate(error, self.endpoint, TTSError) from error
                except Exception as error:  # the stream broke off (httpx's errors)
                    raise TTSError(f"{self.endpoint} broke off its stream: {error}",
                                   transient=True) from error
                first = False
                pending += data
                if len(pending) >= MIN_CHUNK_BYTES:
                    usable = len(pending) - len(pending) % 2
                    yield pcm16_to_float(pending[:usable])
                    pending = pending[usable:]
            if len(pending) >= 2:
                yield pcm16_to_float(pending[: len(pending) - len(pending) % 2])
        finally:
            # Closing the response closes the HTTP stream: the remote stops synthesising.
            await request.__aexit__(None, None, None)

    async def _within(self, step: Any, seconds: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(step, timeout=max(seconds, 0.0))
        except TimeoutError as error:
            limit = self.first_byte_timeout_s if what == "first byte" else self.stall_timeout_s
            raise TTSError(f"no {what} from {self.endpoint} within {limit:g} s",
                           transient=True) from error

    async def aclose(self) -> None:
        await self._client.close()


class RemoteTranscriptionSTT:
    """Transcribes whole utterances with an OpenAI-compatible ``/v1/audio/transcriptions``."""

    def __init__(
        self,
        base_url: str,
        model: str = "whisper-1",
        *,
        language: str | None = "en",
        api_key: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 15.0,
    ) -> None:
        self.model = model
        self.name = f"openai-transcriptions:{model}"
        self.language = language
        self.timeout_s = timeout_s
        self._client = _client(base_url, api_key, api_key_env, connect_timeout_s)
        self.endpoint = f"{base_url.rstrip('/')}/audio/transcriptions"

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        """Send the utterance as a 16 kHz WAV; cancelling closes the request."""
        started = time.perf_counter()
        wav = io.BytesIO()
        soundfile.write(wav, np.asarray(audio, dtype=np.float32), PIPELINE_SAMPLE_RATE,
                        format="WAV", subtype="PCM_16")
        extra: dict[str, Any] = {"language": self.language} if self.language else {}
        try:
            result = await asyncio.wait_for(
                self._client.audio.transcriptions.create(
                    model=self.model, file=("utterance.wav", wav.getvalue()),
                    response_format="json", **extra,
                ),
                self.timeout_s,
            )
        except TimeoutError as error:
            raise STTError(f"no transcript from {self.endpoint} within {self.timeout_s:g} s",
                           transient=True) from error
        except openai.OpenAIError as error:
            raise _translate(error, self.endpoint, STTError) from error
        text = str(getattr(result, "text", "")).strip()
        return Transcript(
            text=text if any(char.isalnum() for char in text) else "",
            audio_ms=duration_ms(len(audio), PIPELINE_SAMPLE_RATE),
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def aclose(self) -> None:
        await self._client.close()
