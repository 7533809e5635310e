"""A real server whose TTS runs in a process of its own: replies are spoken through
the child; while a dead child is replaced, ``/readyz`` says so and new calls are
refused with a retry hint; once it is back, calls go on."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from pipeline.engines.hosted import hosted_tts
from pipeline.engines.process_host import EngineSpec
from pipeline.events import ResponseStatus
from tests.faults.support import (
    audio_of,
    bench_engines,
    done,
    readyz,
    serving,
    typed_turn,
    wait_ready,
)

pytestmark = pytest.mark.e2e


async def test_a_restarting_speech_process_takes_the_server_out_of_rotation() -> None:
    tts = await asyncio.to_thread(
        hosted_tts, EngineSpec("pipeline.engines.bench:ToneTTS",
                               {"ms_per_char": 5.0, "chunk_ms": 50.0}, "tts"),
        progress=lambda line: None,
    )  # fmt: skip
    try:
        with serving(Settings(), bench_engines(tts=tts)) as server:  # type: ignore[arg-type]
            async with await VoiceForgeClient.connect(server.url) as client:
                events = await typed_turn(client, "Where is Paris?")
                reply = done(events)
                assert reply.status is ResponseStatus.COMPLETED
                assert audio_of(events, reply.response_id)
            host = tts.hosts[0]
            os.kill(host.pid or 0, signal.SIGKILL)
            status, body = 200, {}
            for _ in range(200):  # the reader sees the child go within a moment
                status, body = await readyz(server)
                if status == 503:
                    break
                await asyncio.sleep(0.01)
            assert status == 503, body
            assert "engine_restarting" in body["reasons"], body
            # A new call is refused with a retry hint (the child waits a second
            # before it starts again, so this lands inside the restart).
            async with httpx.AsyncClient(timeout=10.0) as http:
                refused = await http.post(f"{server.http}/v1/audio/speech", json={
                    "model": "tts-1", "input": "Hello.", "voice": "alloy"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "engine_restarting"
            assert "Retry-After" in refused.headers
            await wait_ready(server, timeout_s=60)
            assert host.restarts == 1
            async with await VoiceForgeClient.connect(server.url) as client:
                events = await typed_turn(client, "And now?")
                assert done(events).status is ResponseStatus.COMPLETED
                assert audio_of(events, done(events).response_id)
    finally:
        await asyncio.to_thread(tts.close)
