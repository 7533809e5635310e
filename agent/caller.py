"""A scripted caller on the SDK: an open microphone that speaks queued utterances
between stretches of silence, and a timestamped log of everything the server sent.

Used by the end-to-end tests and the latency benchmark; a real caller's
microphone also never stops sending while the line is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.client import VoiceForgeClient
from agent.protocol import ServerMessage
from pipeline.audio import float_to_pcm16
from pipeline.events import ResponseAudioClear, ResponseAudioDelta, ResponseDone

FRAME_S = 0.02


@dataclass
class Caller:
    """Streams queued utterances, then silence, in real time, like an open microphone."""

    client: VoiceForgeClient
    rate: int = 16000
    log: list[tuple[float, ServerMessage]] = field(default_factory=list)
    _script: asyncio.Queue[np.ndarray] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.client.start_reporting()
        self._tasks.append(asyncio.create_task(self._microphone()))
        self._tasks.append(asyncio.create_task(self._listen()))

    def say(self, audio: np.ndarray) -> None:
        self._script.put_nowait(audio)

    def _utterance_starts(self, audio: np.ndarray, sent_samples: int) -> None:
        """Called just before the first frame of a queued utterance is sent, with
        the number of samples sent before it (its start on the audio timeline)."""

    async def _microphone(self) -> None:
        frame = int(self.rate * FRAME_S)
        # PCM16 once per utterance, not per frame: a load generator runs hundreds
        # of these microphones on the machine it measures.
        silence = float_to_pcm16(np.zeros(frame, dtype=np.float32))
        started = time.monotonic()
        sent_frames = 0
        sent_samples = 0
        while True:
            audio = self._script.get_nowait() if not self._script.empty() else None
            if audio is not None:
                pcm = float_to_pcm16(audio)
                step = 2 * frame
                frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
            else:
                frames = [silence]
            for index, piece in enumerate(frames):
                delay = started + sent_frames * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if audio is not None and index == 0:
                    self._utterance_starts(audio, sent_samples)
                await self.client.send_audio(piece, self.rate)
                sent_frames += 1
                sent_samples += len(piece) // 2

    async def _listen(self) -> None:
        async for message in self.client.events():
            self.log.append((time.monotonic(), message))

    async def wait_for(
        self, predicate: Callable[[ServerMessage], bool], timeout_s: float, *, after: int = 0
    ) -> ServerMessage:
        """The first logged message from index ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        index = after  # each message is tested once, not again at every poll
        while time.monotonic() < deadline:
            while index < len(self.log):
                message = self.log[index][1]
                index += 1
                if predicate(message):
                    return message
            await asyncio.sleep(0.02)
        kinds = [type(m).__name__ for _, m in self.log[after:]]
        raise TimeoutError(f"no matching event within {timeout_s}s; saw {kinds}")

    async def wait_done(self, timeout_s: float = 60.0, *, after: int = 0) -> ResponseDone:
        done = await self.wait_for(lambda m: isinstance(m, ResponseDone), timeout_s, after=after)
        assert isinstance(done, ResponseDone)
        return done

    def messages(self, kind: type, *, after: int = 0) -> list[ServerMessage]:
        return [m for _, m in self.log[after:] if isinstance(m, kind)]

    def audio_of(self, response_id: str) -> np.ndarray:
        pcm = b"".join(
            m.audio
            for _, m in self.log
            if isinstance(m, ResponseAudioDelta) and m.response_id == response_id
        )
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0

    def index_of_clear(self, response_id: str) -> int:
        for i, (_, m) in enumerate(self.log):
            if isinstance(m, ResponseAudioClear) and m.response_id == response_id:
                return i
        raise LookupError(response_id)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
