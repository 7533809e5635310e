"""Callers that vanish: the TCP connection dropped with no close frame, in the
middle of every stage of a turn and of the handshake.

Each test measures the server's asyncio task count (``voiceforge_asyncio_tasks``,
read on the server's loop by ``/metrics``) before the call, drops the call at a
precise point (the bench engines are instrumented and slowed down to hold it
there), then requires, within a bounded wait: no session left in the app, the
active-sessions gauge at 0, the task count back to its level before the call, the
engine call of that stage cancelled or closed, the disconnect counted, and a new
call answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import websockets

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import SUBPROTOCOL, ServerMessage, SessionCreated, decode_server_frame
from pipeline.events import ResponseAudioDelta, ResponseStatus, ResponseTextDelta, SpeechStarted
from tests.e2e.conftest import RunningServer
from tests.faults.support import (
    AudioSender,
    ProbeLLM,
    ProbeSTT,
    ProbeTTS,
    Samples,
    bench_engines,
    describe,
    done,
    scrape,
    serving,
    tracebacks,
    typed_turn,
    value,
    wait_until,
)
from tests.speech import silence, speak

REPLY = "The capital of France is Paris. It is known for the Eiffel Tower."
SETTLE_TIMEOUT_S = 5.0
"""Cleanup takes milliseconds; every slowed-down stage would run longer than this
by itself, so a call left running cannot pass for one cleaned up."""


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("What is the capital of France?")


@dataclass
class Probes:
    """The server's engines, instrumented; a test slows down the stage it drops in."""

    stt: ProbeSTT
    llm: ProbeLLM
    tts: ProbeTTS

    def fast(self) -> None:
        self.stt.delay_ms = 0.0
        self.llm.first_token_ms, self.llm.tokens_per_second = 5.0, 200.0
        self.tts.ms_per_char, self.tts.realtime_factor = 5.0, 0.0


@pytest.fixture(scope="module")
def probes() -> Probes:
    return Probes(
        ProbeSTT(),
        ProbeLLM(REPLY, tokens_per_second=200, first_token_ms=5),
        ProbeTTS(ms_per_char=5.0, chunk_ms=50.0),
    )


@pytest.fixture(scope="module")
def server(probes: Probes) -> Iterator[RunningServer]:
    engines = bench_engines(stt=probes.stt, llm=probes.llm, tts=probes.tts)
    with serving(Settings(), engines) as running:
        yield running


@pytest.fixture
async def baseline(server: RunningServer, probes: Probes) -> AsyncIterator[Samples]:
    """Fast engines and an idle server; the metrics before the call (the lowest
    task count of a few scrapes). Afterwards the engines are fast again."""
    probes.fast()
    await wait_until(lambda: not server.app_state.sessions, SETTLE_TIMEOUT_S, "no session open")
    scrapes = [await scrape(server.http) for _ in range(3)]
    with tracebacks() as logged:
        yield min(scrapes, key=lambda s: value(s, "voiceforge_asyncio_tasks"))
    probes.fast()
    # A caller vanishing is routine: nothing about it is logged as a crash.
    assert not logged, describe(logged)


async def _settled(server: RunningServer, before: Samples) -> Samples:
    """Wait (bounded) until the call has left no trace; the metrics then."""
    tasks_before = value(before, "voiceforge_asyncio_tasks")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        samples = await scrape(server.http)
        open_sessions = len(server.app_state.sessions)
        active = value(samples, "voiceforge_sessions_active")
        tasks = value(samples, "voiceforge_asyncio_tasks")
        if open_sessions == 0 and active == 0 and tasks <= tasks_before:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {SETTLE_TIMEOUT_S} s: {open_sessions} sessions in the app, gauge "
                f"{active}, {tasks} asyncio tasks (before the call: {tasks_before})"
            )
        await asyncio.sleep(0.05)


async def _abort(client: VoiceForgeClient) -> None:
    """Drop the TCP connection: no close frame, no goodbye."""
    client.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 5)


async def _next(client: VoiceForgeClient, kind: type, timeout_s: float = 10.0) -> ServerMessage:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        event = await client.next_event(left)
        assert event is not None, "the server closed the call"
        if isinstance(event, kind):
            return event
    raise TimeoutError(f"no {kind.__name__} within {timeout_s} s")


async def _a_new_call_is_answered(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        answer = done(await typed_turn(client, "Still there?"))
        assert answer.status is ResponseStatus.COMPLETED
        assert answer.text_heard == REPLY


def _closed_by_client(before: Samples, after: Samples) -> float:
    name = "voiceforge_disconnects_total"
    return value(after, name, reason="client_closed") - value(before, name, reason="client_closed")


async def _dropped_and_recovered(
    server: RunningServer, client: VoiceForgeClient, before: Samples, probes: Probes
) -> Samples:
    session_id = client.session_id
    await _abort(client)
    after = await _settled(server, before)
    with pytest.raises(LookupError):
        server.conversation(session_id)
    assert _closed_by_client(before, after) == 1.0
    probes.fast()
    await _a_new_call_is_answered(server)
    return after


# ----------------------------------------------------------------- turn stages


async def test_drop_while_speech_is_streaming(
    server: RunningServer, baseline: Samples, probes: Probes, question: np.ndarray
) -> None:
    client = await VoiceForgeClient.connect(server.url)
    sender = AudioSender(client)
    # Part of the question: the caller is mid-sentence when the line drops.
    await sender.send(np.concatenate([silence(0.2), question]), stop_after_ms=900)
    await _next(client, SpeechStarted)
    await _dropped_and_recovered(server, client, baseline, probes)


async def test_drop_during_transcription(
    server: RunningServer, baseline: Samples, probes: Probes, question: np.ndarray
) -> None:
    stt = probes.stt
    stt.delay_ms = 8000.0
    client = await VoiceForgeClient.connect(server.url)
    await AudioSender(client).turn(question)
    await wait_until(lambda: stt.active > 0, 10, "a transcription running")
    await _dropped_and_recovered(server, client, baseline, probes)
    assert stt.active == 0  # cancelled, not left to run out its 8 s


async def test_drop_while_the_llm_generates(
    server: RunningServer, baseline: Samples, probes: Probes
) -> None:
    llm = probes.llm
    llm.tokens_per_second = 1.0  # 13 s for the reply
    closed_early = llm.closed_early
    client = await VoiceForgeClient.connect(server.url)
    await client.send_text("What is the capital of France?")
    await _next(client, ResponseTextDelta)
    assert llm.active == 1
    await _dropped_and_recovered(server, client, baseline, probes)
    assert llm.active == 0
    assert llm.closed_early == closed_early + 1  # the stream was closed, not drained


async def test_drop_while_speech_is_synthesised(
    server: RunningServer, baseline: Samples, probes: Probes
) -> None:
    tts = probes.tts
    # 60 ms of audio per character, synthesised at half real time: 4 s per chunk.
    tts.ms_per_char, tts.realtime_factor = 60.0, 2.0
    client = await VoiceForgeClient.connect(server.url)
    await client.send_text("What is the capital of France?")
    await _next(client, ResponseAudioDelta)
    assert tts.active == 1
    await _dropped_and_recovered(server, client, baseline, probes)
    assert tts.active == 0


async def test_drop_while_the_reply_plays(
    server: RunningServer, baseline: Samples, probes: Probes
) -> None:
    llm, tts = probes.llm, probes.tts
    # About 8 s of reply audio, generated at once: the response then waits for playback.
    tts.ms_per_char = 120.0
    client = await VoiceForgeClient.connect(server.url)
    conversation = server.conversation(client.session_id)
    await client.send_text("What is the capital of France?")
    await _next(client, ResponseAudioDelta)
    await wait_until(
        lambda: llm.active == 0 and tts.active == 0 and bool(
            getattr(conversation, "agent_speaking", False)
        ),
        10,
        "generation over, the reply playing",
    )
    await _dropped_and_recovered(server, client, baseline, probes)


# ------------------------------------------------------------------ handshake


def _upgrade_request(server: RunningServer, *, complete: bool) -> bytes:
    host = server.http.removeprefix("http://")
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
    ]
    if not complete:
        return "\r\n".join(lines[:3]).encode() + b"\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _raw_drop(server: RunningServer, *, complete: bool) -> None:
    host, port = server.http.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_upgrade_request(server, complete=complete))
    await writer.drain()
    if complete:
        # Let the server take the call (it answers 101 and session.created), then
        # vanish without reading it: a reset, not a close.
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _drop_after_session_created(server: RunningServer) -> None:
    ws = await websockets.connect(
        server.url, subprotocols=[SUBPROTOCOL], open_timeout=10  # type: ignore[list-item]
    )
    first = decode_server_frame(await asyncio.wait_for(ws.recv(decode=False), 10))
    assert isinstance(first, SessionCreated)
    ws.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5)


@pytest.mark.parametrize("moment", ["mid-request", "after-101", "after-session-created"])
async def test_drop_during_the_handshake(
    server: RunningServer, baseline: Samples, moment: str
) -> None:
    if moment == "mid-request":
        await _raw_drop(server, complete=False)
    elif moment == "after-101":
        await _raw_drop(server, complete=True)
    else:
        await _drop_after_session_created(server)
    after = await _settled(server, baseline)
    sessions = "voiceforge_sessions_total"
    opened = value(after, sessions) - value(baseline, sessions)
    assert opened == (0.0 if moment == "mid-request" else 1.0)
    assert _closed_by_client(baseline, after) == opened
    await _a_new_call_is_answered(server)
