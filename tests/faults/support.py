"""What the fault tests share: fast engines, a served app, turns, metrics, probes.

Servers are real (uvicorn on 127.0.0.1:0 in a thread, ``tests.e2e.conftest``);
the engines are the deterministic ``bench`` ones (or a real OpenAI-compatible
client) with the real Silero VAD, so a fault lands exactly where a test puts it
and the folder stays fast on two shared cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import ServerMessage
from loadtest import harness
from loadtest.harness import start_in_thread, stop_in_thread
from pipeline.conversation import Engines
from pipeline.engines.base import ChatMessage, FloatAudio, LLMEngine, Transcript
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.events import (
    ErrorEvent,
    ResponseAudioDelta,
    ResponseDone,
    ResponseTextDelta,
)
from tests.e2e.conftest import RunningServer, start_server
from tests.speech import silence

TURN_TIMEOUT_S = 20.0
"""Any one turn, retries and apology included, ends within this."""


def bench_engines(
    *,
    stt: Any = None,
    llm: LLMEngine | None = None,
    tts: ToneTTS | None = None,
) -> Engines:
    """``loadtest.harness.bench_engines`` with faster defaults (the fault tests
    time faults, not speech)."""
    return harness.bench_engines(
        stt=stt,
        llm=llm if llm is not None else ScriptedLLM(tokens_per_second=200, first_token_ms=5),
        tts=tts if tts is not None else ToneTTS(ms_per_char=5.0, chunk_ms=50.0),
    )


serving = contextlib.contextmanager(start_server)
"""``with serving(settings, engines) as server:`` runs a real server, then stops it."""


@contextlib.contextmanager
def serving_app(app: Starlette) -> Iterator[str]:
    """Serve any app (one built with an engine factory) until the block ends; yields
    its ``http://127.0.0.1:<port>`` base URL."""
    server, thread, loop = start_in_thread(app, Settings())
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_in_thread(server, thread, loop)


# ------------------------------------------------------------------------- HTTP


async def get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as http:
        return await http.get(f"{base}{path}")


async def readyz(server: RunningServer) -> tuple[int, dict[str, Any]]:
    response = await get(server.http, "/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def wait_ready(server: RunningServer, timeout_s: float = 30.0) -> dict[str, Any]:
    """/readyz answers 200 (the last turn cleared every engine failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await readyz(server)
        if status == 200:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {status}: {body}")
        await asyncio.sleep(0.05)


Samples = harness.Samples
value = harness.value


async def scrape(base: str) -> Samples:
    """Every sample of ``/metrics`` (read on the server's loop), by name and labels."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        return await harness.scrape(http, base)


async def error_count(server: RunningServer, code: str, category: str) -> float:
    samples = await scrape(server.http)
    return value(samples, "voiceforge_errors_total", code=code, category=category)


def errors_by_label(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["code"], dict(labels)["category"]): count
        for (name, labels), count in samples.items()
        if name == "voiceforge_errors_total"
    }


def error_deltas(before: Samples, after: Samples) -> dict[tuple[str, str], float]:
    """``voiceforge_errors_total`` increments between two scrapes, zeros left out."""
    old, new = errors_by_label(before), errors_by_label(after)
    return {key: count - old.get(key, 0.0) for key, count in new.items()
            if count - old.get(key, 0.0)}


# ------------------------------------------------------------------------ turns


async def collect_until_done(
    client: VoiceForgeClient, timeout_s: float = TURN_TIMEOUT_S, *, dones: int = 1
) -> list[ServerMessage]:
    """Every event up to the ``dones``-th response.done (bounded in time)."""
    events: list[ServerMessage] = []
    deadline = time.monotonic() + timeout_s
    seen = 0
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = await client.next_event(left)
        except TimeoutError:
            break
        assert event is not None, f"the server closed the connection; saw {events}"
        events.append(event)
        if isinstance(event, ResponseDone):
            seen += 1
            if seen == dones:
                return events
    raise TimeoutError(f"no response.done within {timeout_s} s; saw {kinds(events)}")


async def typed_turn(client: VoiceForgeClient, text: str) -> list[ServerMessage]:
    await client.send_text(text)
    return await collect_until_done(client)


def kinds(events: Sequence[object]) -> list[str]:
    return [type(e).__name__ for e in events]


def errors(events: Sequence[object]) -> list[ErrorEvent]:
    return [e for e in events if isinstance(e, ErrorEvent)]


def done(events: Sequence[object]) -> ResponseDone:
    finals = [e for e in events if isinstance(e, ResponseDone)]
    assert finals, f"no response.done in {kinds(events)}"
    return finals[-1]


def audio_of(events: Sequence[object], response_id: str) -> list[ResponseAudioDelta]:
    return [e for e in events if isinstance(e, ResponseAudioDelta) and e.response_id == response_id]


def text_of(events: Sequence[object], response_id: str) -> str:
    return "".join(
        e.delta for e in events if isinstance(e, ResponseTextDelta) and e.response_id == response_id
    )


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(interval_s)


class AudioSender:
    """Streams 16 kHz audio on one call as fast as the server's rate limit allows.

    The limit (Settings defaults: a 2 s burst, then 2x real time since the call's
    first frame) is kept with a margin, so no frame is ever dropped.
    """

    FRAME = 320  # 20 ms

    def __init__(self, client: VoiceForgeClient, *, burst_ms: float = 1000.0,
                 factor: float = 1.5) -> None:
        self.client = client
        self.burst_ms = burst_ms
        self.factor = factor
        self.started: float | None = None
        self.sent_ms = 0.0

    async def send(self, audio: FloatAudio, *, stop_after_ms: float | None = None) -> None:
        """Send ``audio``; with ``stop_after_ms``, only its first part."""
        sent_here = 0.0
        for start in range(0, len(audio), self.FRAME):
            if stop_after_ms is not None and sent_here >= stop_after_ms:
                return
            frame = audio[start : start + self.FRAME]
            frame_ms = len(frame) / 16.0
            if self.started is None:
                self.started = time.monotonic()
            allowed_at = self.started + max(
                0.0, (self.sent_ms + frame_ms - self.burst_ms) / self.factor / 1000.0
            )
            if (delay := allowed_at - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await self.client.send_audio(frame, 16000)
            self.sent_ms += frame_ms
            sent_here += frame_ms

    async def turn(self, speech: FloatAudio) -> None:
        """One spoken turn: a little silence, the speech, enough silence to end it."""
        await self.send(np.concatenate([silence(0.2), speech, silence(0.9)]))


# ----------------------------------------------------------------------- probes


class ProbeSTT(ScriptedSTT):
    """ScriptedSTT that says when a transcription is running."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.started = 0

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        self.active += 1
        self.started += 1
        try:
            return await super().transcribe(audio)
        finally:
            self.active -= 1


class ProbeLLM(ScriptedLLM):
    """ScriptedLLM that says when a stream is open; ``fail_after_words`` makes the
    next streams raise that error after so many words (and ``pause_s``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.started = 0
        self.fail_after_words: list[tuple[int, float, BaseException]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.active += 1
        self.started += 1
        planned = self.fail_after_words.pop(0) if self.fail_after_words else None
        inner = super().stream(messages, max_tokens=max_tokens, temperature=temperature)
        try:
            words = 0
            async for delta in inner:
                yield delta
                words += 1
                if planned is not None and words >= planned[0]:
                    await asyncio.sleep(planned[1])
                    raise planned[2]
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            self.active -= 1


class ProbeTTS(ToneTTS):
    """ToneTTS that says when a synthesis is running; ``fail_midway(n, error)``
    makes its n-th call from now on raise ``error`` after the first audio."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.calls = 0
        self.midway_on_call: dict[int, BaseException] = {}

    def fail_midway(self, nth: int, error: BaseException) -> None:
        self.midway_on_call[self.calls + nth] = error

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        self.active += 1
        self.calls += 1
        failure = self.midway_on_call.pop(self.calls, None)
        inner = super().synthesize(text, voice=voice)
        try:
            pieces = 0
            async for audio in inner:
                if failure is not None and pieces == 1:
                    raise failure
                pieces += 1
                yield audio
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            self.active -= 1


# ------------------------------------------------------------------------- logs


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


@contextlib.contextmanager
def tracebacks() -> Iterator[list[logging.LogRecord]]:
    """Log records that carry a traceback, from any thread, while the block runs:
    the root logger (the app, asyncio's "exception was never retrieved") and
    uvicorn's, which does not propagate ("Exception in ASGI application")."""
    handler = _Tracebacks()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def describe(records: Sequence[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records]
