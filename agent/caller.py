"""A scripted caller on the SDK: an open microphone that speaks queued utterances
between stretches of silence, and a timestamped log of everything the server sent.

Used by the end-to-end tests and the latency benchmark; a real caller's
microphone also never stops sending while the line is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from agent.client import VoiceForgeClient, encode_audio
from agent.protocol import ServerMessage
from pipeline.audio import float_to_pcm16
from pipeline.events import ResponseAudioClear, ResponseAudioDelta, ResponseDone

FRAME_S = 0.02

logger = logging.getLogger("voiceforge.caller")


@dataclass
class Caller:
    """Streams queued utterances, then silence, in real time, like an open microphone."""

    client: VoiceForgeClient
    rate: int = 16000
    log: list[tuple[float, ServerMessage]] = field(default_factory=list)
    clock: FrameClock | None = None
    """Send on this shared timer instead of a task of the caller's own."""
    _script: asyncio.Queue[np.ndarray] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _logged: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.client.start_reporting()
        if self.clock is not None:
            self.clock.add(self)
        else:
            self._tasks.append(asyncio.create_task(self._microphone()))
        self._tasks.append(asyncio.create_task(self._listen()))

    def say(self, audio: np.ndarray) -> None:
        self._script.put_nowait(audio)

    def _utterance_starts(self, audio: np.ndarray, sent_samples: int) -> None:
        """Called just before the first frame of a queued utterance is sent, with
        the number of samples sent before it (its start on the audio timeline)."""

    def _frames(self) -> Iterator[tuple[bytes, int]]:
        """The microphone's frames, encoded, with their sample counts: the queued
        utterances in order, silence while none is queued; forever.

        Each is taken when it is due, so an utterance queued meanwhile is next."""
        frame = int(self.rate * FRAME_S)
        # Encoded once per utterance, not per frame: a load generator runs hundreds
        # of these microphones on the machine it measures.
        silence = encode_audio(float_to_pcm16(np.zeros(frame, dtype=np.float32)))
        sent_samples = 0
        while True:
            if self._script.empty():
                yield silence, frame
                sent_samples += frame
                continue
            audio = self._script.get_nowait()
            clock = self.clock
            encoded = encode_frames(audio, frame) if clock is None else clock.encoded(audio, frame)
            self._utterance_starts(audio, sent_samples)
            for data, samples in encoded:
                yield data, samples
                sent_samples += samples

    async def _microphone(self) -> None:
        started = time.monotonic()
        frames = self._frames()
        sent_frames = 0
        while True:
            delay = started + sent_frames * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            data, samples = next(frames)
            await self.client.send_encoded_audio(data, samples, self.rate)
            sent_frames += 1

    async def _listen(self) -> None:
        async for message in self.client.events():
            self.log.append((time.monotonic(), message))
            self._logged.set()

    async def wait_for(
        self, predicate: Callable[[ServerMessage], bool], timeout_s: float, *, after: int = 0
    ) -> ServerMessage:
        """The first logged message from index ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        index = after  # each message is tested once, not again at every wake-up
        while True:
            while index < len(self.log):
                message = self.log[index][1]
                index += 1
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._logged.clear()  # set by the listener at its next message
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._logged.wait()
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
        if self.clock is not None:
            await self.clock.remove(self)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def encode_frames(audio: np.ndarray, frame: int) -> list[tuple[bytes, int]]:
    """``audio`` as the ``input_audio.append`` frames of ``frame`` samples that send it,
    encoded, with their sample counts."""
    pcm = float_to_pcm16(audio)
    pieces = (pcm[i : i + 2 * frame] for i in range(0, len(pcm), 2 * frame))
    return [(encode_audio(piece), len(piece) // 2) for piece in pieces]


ENCODED_KEPT = 64
SLOTS = 10
"""A ``FrameClock`` ticks this many times a frame (every 2 ms), each microphone on
one of the ticks, so frames reach the server spread over the frame as independent
callers' do, not all at once."""


class _Feed:
    """One microphone on a ``FrameClock``: its frames and how many it has sent."""

    def __init__(self, caller: Caller, first_tick: int) -> None:
        self.caller = caller
        self.frames = caller._frames()
        self.first_tick = first_tick
        self.sent = 0
        self.waiting: asyncio.Task[None] | None = None
        """A frame the connection could not take at once, being sent: the feed's next
        frames wait for it (they go out back to back once it is through)."""

    def send_due(self, tick: int) -> None:
        if self.waiting is not None:
            if not self.waiting.done():
                return
            self.waiting.result()  # a send that failed ends this feed (see FrameClock)
            self.waiting = None
        client, rate = self.caller.client, self.caller.rate
        due = (tick - self.first_tick) // SLOTS + 1
        while self.sent < due:
            data, samples = next(self.frames)
            self.sent += 1
            if not client.send_encoded_audio_nowait(data, samples, rate):
                self.waiting = asyncio.create_task(client.send_encoded_audio(data, samples, rate))
                return


class FrameClock:
    """One timer for many microphones: a load generator's hundreds of callers each
    send a 20 ms frame every 20 ms, and a timer and a task switch per frame per
    caller cost the generator more than writing the frame does.

    It ticks ``SLOTS`` times a frame; a microphone joins on the next tick and sends
    on every ``SLOTS``-th tick after it, its due frames written at once
    (``send_encoded_audio_nowait``). A tick the event loop was too busy to keep is
    caught up, in order. A microphone whose connection cannot take a frame at once
    sends it in a task and catches up when that is through, without holding up the
    others; one whose send fails (its connection closed for good) is taken off.
    """

    def __init__(self) -> None:
        self._slots: list[dict[int, _Feed]] = [{} for _ in range(SLOTS)]
        self._next_tick = 0
        self._task: asyncio.Task[None] | None = None
        self._encoded: OrderedDict[tuple[int, int], tuple[np.ndarray, list[tuple[bytes, int]]]]
        self._encoded = OrderedDict()

    def encoded(self, audio: np.ndarray, frame: int) -> list[tuple[bytes, int]]:
        """``encode_frames``, kept for the last ``ENCODED_KEPT`` utterances: a load
        generator's callers say the same few questions over and over."""
        key = (id(audio), frame)
        kept = self._encoded.get(key)
        if kept is not None and kept[0] is audio:
            self._encoded.move_to_end(key)
            return kept[1]
        frames = encode_frames(audio, frame)
        self._encoded[key] = (audio, frames)  # the array is held: its id stays its own
        while len(self._encoded) > ENCODED_KEPT:
            self._encoded.popitem(last=False)
        return frames

    def add(self, caller: Caller) -> None:
        if self._task is None or self._task.done():
            self._next_tick = 0
            self._task = asyncio.create_task(self._run())
        tick = self._next_tick
        self._slots[tick % SLOTS][id(caller)] = _Feed(caller, tick)

    @property
    def _count(self) -> int:
        """Microphones on the clock."""
        return sum(map(len, self._slots))

    async def remove(self, caller: Caller) -> None:
        for slot in self._slots:
            if (feed := slot.pop(id(caller), None)) is not None:
                if feed.waiting is not None:
                    feed.waiting.cancel()
                    await asyncio.gather(feed.waiting, return_exceptions=True)
        if not self._count and self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        started = time.monotonic()
        slot_s = FRAME_S / SLOTS
        while self._count:
            now_tick = int((time.monotonic() - started) / slot_s)
            for tick in range(self._next_tick, now_tick + 1):
                slot = self._slots[tick % SLOTS]
                for key, feed in list(slot.items()):
                    try:
                        feed.send_due(tick)
                    except Exception:  # closed for good: the caller's own code sees it
                        logger.debug("microphone %s stopped", key, exc_info=True)
                        del slot[key]
            self._next_tick = now_tick + 1
            await asyncio.sleep(max(0.0, started + self._next_tick * slot_s - time.monotonic()))
