"""The load generator's microphones on one timer (``agent.caller.FrameClock``) and the
SDK's write-now path for encoded audio frames, over a real WebSocket."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.caller import FRAME_S, SLOTS, Caller, FrameClock, encode_frames
from agent.client import VoiceForgeClient, encode_audio
from agent.protocol import (
    InputAudioAppend,
    SessionCreated,
    decode_client_frame,
    encode_server_message,
)
from pipeline.audio import float_to_pcm16

RATE = 16000
FRAME = int(RATE * FRAME_S)


@dataclass
class Heard:
    """What a fake server received on one connection: each audio frame's PCM and
    arrival time."""

    frames: list[tuple[float, bytes]] = field(default_factory=list)

    def pcm(self) -> bytes:
        return b"".join(pcm for _, pcm in self.frames)


async def _recording_server(heard: list[Heard]) -> tuple[object, str]:
    async def handler(ws: ServerConnection) -> None:
        mine = Heard()
        heard.append(mine)
        await ws.send(encode_server_message(SessionCreated(f"s{len(heard)}", 1, {}, {})))
        async for frame in ws:
            message = decode_client_frame(frame if isinstance(frame, bytes) else frame.encode())
            if isinstance(message, InputAudioAppend):
                mine.frames.append((time.monotonic(), message.audio))

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}"


class _Marked(Caller):
    starts: list[int]

    def _utterance_starts(self, audio: np.ndarray, sent_samples: int) -> None:
        self.starts.append(sent_samples)


async def test_callers_on_one_clock_send_in_real_time_in_order_and_spread_over_the_frame() -> None:
    heard: list[Heard] = []
    server, url = await _recording_server(heard)
    clock = FrameClock()
    tone = (0.3 * np.sin(np.arange(int(RATE * 0.25)) / 7.0)).astype(np.float32)  # 250 ms
    try:
        clients = [await VoiceForgeClient.connect(url) for _ in range(3)]
        callers = []
        for client in clients:
            caller = _Marked(client, clock=clock)
            caller.starts = []
            callers.append(caller)
            caller.start()
            await asyncio.sleep(0.007)  # joins on another tick of the frame
        callers[1].say(tone)
        started = time.monotonic()
        await asyncio.sleep(0.8)
        for caller in callers:
            await caller.stop()
        elapsed = time.monotonic() - started
        assert clock._task is None  # the last microphone off stops the timer
        await asyncio.sleep(0.1)
        counts = [len(h.frames) for h in heard]
        for count in counts:
            # Real time: ~one frame per 20 ms since it joined, never a burst ahead.
            assert 0.8 / FRAME_S - 8 <= count <= (elapsed + 0.05) / FRAME_S + 1
        # Frames go out as due, none skipped: the recorded audio is silence, the
        # utterance whole where the microphone said it started, silence again.
        pcm = heard[1].pcm()
        start = callers[1].starts[0]
        want = float_to_pcm16(tone)
        assert pcm[2 * start : 2 * start + len(want)] == want
        assert set(pcm[: 2 * start]) <= {0} and set(pcm[2 * start + len(want) :]) <= {0}
        assert start % FRAME == 0 and callers[0].starts == callers[2].starts == []
        # Each microphone keeps its own phase: arrival times modulo the frame differ.
        phases = [np.median([t % FRAME_S for t, _ in h.frames[5:]]) for h in heard]
        assert len({round(p / (FRAME_S / SLOTS)) for p in phases}) >= 2
        for client in clients:
            await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_write_now_declines_a_full_buffer_or_a_closed_connection_and_send_waits() -> None:
    heard: list[Heard] = []
    server, url = await _recording_server(heard)
    try:
        client = await VoiceForgeClient.connect(url)
        data = encode_audio(bytes(2 * FRAME))
        assert client.send_encoded_audio_nowait(data, FRAME, RATE)
        transport = client._ws.transport
        real = transport.get_write_buffer_size
        transport.get_write_buffer_size = lambda: 10**6  # type: ignore[method-assign]
        assert not client.send_encoded_audio_nowait(data, FRAME, RATE)
        transport.get_write_buffer_size = real  # type: ignore[method-assign]
        await client.send_encoded_audio(encode_audio(b"\x01\x00" * FRAME), FRAME, RATE)
        for _ in range(100):
            if len(heard[0].frames) == 2:
                break
            await asyncio.sleep(0.01)
        assert [pcm[:2] for _, pcm in heard[0].frames] == [b"\x00\x00", b"\x01\x00"]
        # Both count on the sent-audio timeline the acoustic latency is measured on.
        assert client.sent_at(20.0) is not None and client.sent_at(40.0) is not None
        assert client.sent_at(40.1) is None
        await client.close()
        assert not client.send_encoded_audio_nowait(data, FRAME, RATE)
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class _SlowClient:
    """Takes frames at once except the ones in ``refuse``, which it sends slowly."""

    refuse: set[int]
    sent: list[bytes] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False

    def start_reporting(self) -> None:
        pass

    def send_encoded_audio_nowait(self, data: bytes, samples: int, rate: int) -> bool:
        if len(self.sent) in self.refuse:
            return False
        self.sent.append(data)
        return True

    async def send_encoded_audio(self, data: bytes, samples: int, rate: int) -> None:
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("gone")
        self.refuse.discard(len(self.sent))
        self.sent.append(data)


async def test_a_frame_the_connection_cannot_take_holds_only_its_own_microphone() -> None:
    clock = FrameClock()
    slow, quick = _SlowClient(refuse={3}), _SlowClient(refuse=set())
    utterance = (np.arange(FRAME * 8) % 50 / 100.0).astype(np.float32)
    callers = [Caller(slow, clock=clock), Caller(quick, clock=clock)]  # type: ignore[arg-type]
    for caller in callers:
        caller.say(utterance)
        caller._tasks.clear()  # no listener: these clients have no events
        clock.add(caller)
    await asyncio.sleep(0.2)
    assert len(slow.sent) == 3  # frame 3 waits, and the ones after it
    assert len(quick.sent) >= 8
    slow.gate.set()
    await asyncio.sleep(0.1)
    # The held frames went out back to back, in order: the utterance, then silence.
    assert slow.sent[:8] == [data for data, _ in encode_frames(utterance, FRAME)]
    assert abs(len(slow.sent) - len(quick.sent)) <= 2
    # A send that fails for good takes that microphone off; the other goes on.
    slow.fail, slow.gate = True, asyncio.Event()
    slow.refuse.add(len(slow.sent))
    await asyncio.sleep(0.1)
    slow.gate.set()
    await asyncio.sleep(0.1)
    frozen = len(slow.sent)
    before = len(quick.sent)
    await asyncio.sleep(0.1)
    assert len(slow.sent) == frozen and len(quick.sent) > before
    for caller in callers:
        await clock.remove(caller)
    assert clock._task is None


def test_encoded_utterances_are_kept_by_identity() -> None:
    clock = FrameClock()
    audio = np.ones(FRAME * 2 + 5, dtype=np.float32) * 0.1
    frames = clock.encoded(audio, FRAME)
    assert [samples for _, samples in frames] == [FRAME, FRAME, 5]
    assert clock.encoded(audio, FRAME) is frames
    assert clock.encoded(audio.copy(), FRAME) is not frames  # equal, but another array


@pytest.mark.parametrize("frame", [FRAME, 480])
def test_encode_frames_covers_the_audio(frame: int) -> None:
    audio = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    frames = encode_frames(audio, frame)
    pcm = b"".join(decode_client_frame(data).audio for data, _ in frames)  # type: ignore[union-attr]
    assert pcm == float_to_pcm16(audio)
    assert sum(samples for _, samples in frames) == 1000
