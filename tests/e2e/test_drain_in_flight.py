"""A turn still being transcribed when the server starts draining gets no reply.

The check for new turns happens when a turn ends; a transcription already running
then finishes during the drain and used to start a full reply anyway (later, a reply
that was created and at once cancelled). Now the hand-over, which alone starts
replies, starts none while the call drains: the turn is ignored, and said so.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from agent.config import Settings
from loadtest.harness import bench_engines
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.engines.bench import ScriptedSTT
from tests.e2e.raw import RawSession, subprotocols
from tests.faults.support import serving, wait_until
from tests.speech import silence, speak

FRAME = 320  # 20 ms at 16 kHz


class GatedSTT(ScriptedSTT):
    """Transcribes only once the test opens the gate (it runs on the server's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        self.entered.set()
        for _ in range(3000):  # 30 s at most
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return await super().transcribe(audio)


async def test_a_turn_in_transcription_when_the_drain_begins_gets_no_reply() -> None:
    stt = GatedSTT()
    running = serving(Settings(drain_timeout_s=20.0), bench_engines(stt=stt))
    server = running.__enter__()
    stopping: asyncio.Task[object] | None = None
    try:
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            await session.send({"type": "session.update", "session": {
                "partial_transcript_interval_ms": 10_000.0,
                "speculative_transcript": False, "speculative_response": False,
            }})
            await session.wait_type("session.updated")
            audio = np.concatenate([speak("What is the capital of France?", 16000),
                                    silence(1.5, 16000)])
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
            for offset in range(0, len(pcm), 2 * FRAME):  # at the rate limit's 2x real time
                await session.send({"type": "input_audio.append",
                                    "audio": pcm[offset : offset + 2 * FRAME]})
                await asyncio.sleep(0.01)
            await wait_until(stt.entered.is_set, 30, "the turn is being transcribed")
            stopping = asyncio.create_task(asyncio.to_thread(running.__exit__, None, None, None))
            await wait_until(lambda: server.app_state.draining, 10, "the drain began")
            stt.gate.set()
            final = await session.wait_type("transcript.final", 30)
            ignored = await session.wait_type("input_audio.turn_ignored", 30)
            assert ignored["reason"] == "server_shutting_down", ignored
            assert (ignored["audio_start_ms"], ignored["audio_end_ms"]) == (
                final["audio_start_ms"], final["audio_end_ms"]
            )
            # The drain ends the call (1001) once nothing is in flight; no reply
            # was started before that.
            with pytest.raises(websockets.ConnectionClosed):
                await session.wait_for(lambda m: False, 30)
            assert not [m for m in session.log if m["type"].startswith("response.")]
    finally:
        stt.gate.set()
        if stopping is None:
            running.__exit__(None, None, None)
        else:
            await asyncio.wait_for(stopping, 60)
