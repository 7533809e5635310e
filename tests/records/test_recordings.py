"""Recordings: both sides of a call on its clock (pipeline.records.audio), written to
an Ogg Opus file, served at /v1/calls/{id}/recording, deleted and expired."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from agent.client import ClientError, VoiceForgeClient
from agent.config import Settings
from agent.records.recording import MAX_QUEUED_BYTES, CallRecording, expire
from pipeline.audio import float_to_pcm16
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.events import ResponseAudioDelta, ResponseDone, ResponseStatus
from pipeline.records.audio import RATE, Channel, Piece, RecordingTimeline
from tests.e2e.conftest import RunningServer
from tests.faults.support import AudioSender, bench_engines, serving
from tests.records.test_calls_api import RECORD_TIMEOUT_S, wait_for_record
from tests.speech import silence, speak

HEARD = "What is the capital of France?"
REPLY = "Paris is the capital of France and its largest city."


def delta(response_id: str, ms: float, seq: int = 0, rate: int = 24000) -> ResponseAudioDelta:
    audio = np.full(int(rate * ms / 1000), 0.5, dtype=np.float32)
    return ResponseAudioDelta(response_id, seq, float_to_pcm16(audio), rate, ms)


def done(response_id: str, played_ms: float) -> ResponseDone:
    return ResponseDone(response_id, ResponseStatus.CANCELLED, "", "", 1000.0, played_ms)


def test_replies_go_where_they_were_played_and_only_as_far_as_they_were_played() -> None:
    timeline = RecordingTimeline()
    first = timeline.caller(np.zeros(RATE, dtype=np.float32))  # 1 s of the caller
    assert (first.channel, first.offset) == (Channel.CALLER, 0)
    timeline.reply_audio(delta("resp_1", 500))
    timeline.reply_audio(delta("resp_1", 500, 1))
    timeline.caller(np.zeros(RATE // 2, dtype=np.float32))
    cut = timeline.reply_done(done("resp_1", 300.0))  # a barge-in after 300 ms
    assert cut is not None
    assert (cut.channel, cut.offset, len(cut.samples)) == (Channel.AGENT, RATE, RATE * 3 // 10)
    # The next reply's audio went out while the caller clock stood at 1.5 s.
    timeline.reply_audio(delta("resp_2", 200))
    played = timeline.reply_done(done("resp_2", 200.0))
    assert played is not None and played.offset == RATE * 3 // 2
    # Nothing played, nothing written.
    timeline.reply_audio(delta("resp_3", 200))
    assert timeline.reply_done(done("resp_3", 0.0)) is None


def test_a_disk_far_behind_drops_batches_instead_of_holding_them(tmp_path: Path) -> None:
    recording = CallRecording(tmp_path, "sess_disk")
    # A tone, not a constant: Opus, like any speech codec, keeps no DC.
    second = (0.25 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    batch = recording.add(Piece(Channel.CALLER, 0, second))
    assert batch is not None and recording.queued_bytes == 2 * RATE
    recording.queued_bytes = MAX_QUEUED_BYTES  # the disk thread has not caught up
    assert recording.add(Piece(Channel.CALLER, RATE, second)) is None
    assert recording.dropped_bytes == 2 * RATE
    # What was handed over is written in place and encoded; the lost second is silence.
    recording.write_batch(batch)
    recording.write_batch([(Channel.AGENT, RATE // 2, float_to_pcm16(second))])
    assert recording.encode() == 2000.0
    caller, agent = decode(recording.path.read_bytes(), tmp_path / "check.opus")
    assert loud(caller, 100, 900) > 0.1 and loud(caller, 1100, 1900) < 0.01
    assert loud(agent, 0, 400) < 0.01 and loud(agent, 600, 1400) > 0.1
    assert not list(tmp_path.glob(".sess_disk.*"))  # the raw channels are gone


def test_old_recordings_expire(tmp_path: Path) -> None:
    old, new = tmp_path / "sess_old.opus", tmp_path / "sess_new.opus"
    for path in (old, new):
        path.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 7200, now - 7200))
    assert expire(tmp_path, retention_s=3600, now=now) == 1
    assert not old.exists() and new.exists()


@contextlib.contextmanager
def recording_server(tmp_path: Path, mode: str = "on_request") -> Iterator[RunningServer]:
    engines = bench_engines(stt=ScriptedSTT([HEARD]),
                            llm=ScriptedLLM(REPLY, tokens_per_second=200, first_token_ms=5))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}",
                        recordings=mode, recordings_dir=str(tmp_path / "recordings"))
    with serving(settings, engines) as server:
        yield server


def decode(data: bytes, path: Path) -> np.ndarray:
    """The recording as float samples at 16 kHz, shape (2, n)."""
    path.write_bytes(data)
    resampler = av.AudioResampler(format="flt", layout="stereo", rate=RATE)
    pieces = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1, 2).T)
    return np.concatenate(pieces, axis=1)


def loud(channel: np.ndarray, start_ms: float, end_ms: float) -> float:
    """RMS of a stretch of one channel."""
    part = channel[int(start_ms * RATE / 1000) : int(end_ms * RATE / 1000)]
    return float(np.sqrt(np.mean(np.square(part)))) if len(part) else 0.0


async def test_a_recorded_call_has_both_sides_in_line_with_its_transcript(
    tmp_path: Path,
) -> None:
    with recording_server(tmp_path) as server:
        async with await VoiceForgeClient.connect(server.url) as client:
            call_id = client.session_id
            updated = await client.update_session(record_audio=True)
            assert updated["record_audio"] is True
            sender = AudioSender(client)
            await sender.send(np.concatenate([silence(0.5), speak(HEARD)]))
            answered: ResponseDone | None = None

            async def listen() -> None:
                nonlocal answered
                while answered is None:
                    event = await client.next_event(RECORD_TIMEOUT_S)
                    if isinstance(event, ResponseDone):
                        answered = event

            listener = asyncio.create_task(listen())
            # A caller's line goes on carrying silence while the reply plays.
            for _ in range(400):  # 20 ms each, at most 8 s
                if listener.done():
                    break
                await sender.send(silence(0.02))
            await listener
            await sender.send(silence(0.3))
        assert answered is not None and answered.status is ResponseStatus.COMPLETED

        def recorded(record: dict[str, Any]) -> bool:
            return record["recording"] is not None

        record = await wait_for_record(server, call_id, recorded)
        assert record["recording"]["channels"] == ["caller", "agent"]
        (turn,) = [entry for entry in record["timeline"] if entry["kind"] == "turn"]
        speech = turn["inputs"][0]
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            audio = await http.get(f"/v1/calls/{call_id}/recording")
            assert audio.status_code == 200, audio.text
            assert audio.headers["content-type"] == "audio/ogg"
            caller, agent = decode(audio.content, tmp_path / "check.opus")
            start, end = speech["audio_start_ms"], speech["audio_end_ms"]
            # The caller's channel: their speech where the transcript says it was.
            assert loud(caller, start, end) > 0.02
            assert loud(caller, 0, start - 200) < 0.005
            # The agent's channel: nothing while the caller spoke; then the reply,
            # as long as was played.
            assert loud(agent, 0, end) < 0.005
            agent_loud_ms = np.count_nonzero(np.abs(agent) > 0.05) / RATE * 1000
            assert abs(agent_loud_ms - turn["played_ms"]) < 100, (agent_loud_ms, turn)
            first_agent_ms = np.argmax(np.abs(agent) > 0.05) / RATE * 1000
            assert end < first_agent_ms
            assert (await http.delete(f"/v1/calls/{call_id}")).status_code == 204
            assert (await http.get(f"/v1/calls/{call_id}/recording")).status_code == 404
        assert not list((tmp_path / "recordings").iterdir())


async def test_a_server_without_recordings_refuses_the_flag(tmp_path: Path) -> None:
    with recording_server(tmp_path, mode="off") as server:
        async with await VoiceForgeClient.connect(server.url) as client:
            with pytest.raises(ClientError, match="invalid_session: this server records no calls"):
                await client.update_session(record_audio=True)
