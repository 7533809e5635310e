"""The WebRTC bridge's outgoing track: a paused response sends silence and keeps
its queue, a resume plays on from there, a clear drops it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.webrtc import FRAME_SAMPLES, ReplyTrack


def _pcm(value: int, frames: int) -> bytes:
    return np.full(frames * FRAME_SAMPLES, value, dtype="<i2").tobytes()


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[str | None, float, int]] = []
        """(response id, ms of it sent, the frame's first sample) per frame."""

    def __call__(self, rid: str | None, sent_ms: float, samples: npt.NDArray[np.int16]) -> None:
        self.frames.append((rid, sent_ms, int(samples[0])))


async def _frames(track: ReplyTrack, count: int) -> None:
    for _ in range(count):
        await track.recv()


async def test_a_paused_response_sends_silence_keeps_its_queue_and_resumes() -> None:
    sent = Recorder()
    track = ReplyTrack(sent)
    track.push("resp_a", _pcm(100, 2) + _pcm(200, 2))
    await _frames(track, 2)
    assert track.pause("resp_a") == 40.0
    await _frames(track, 3)
    assert track.buffered_ms == 40.0
    # Audio that arrives while paused waits too.
    track.push("resp_a", _pcm(300, 1))
    await _frames(track, 1)
    track.resume("resp_a")
    await _frames(track, 4)
    track.stop()
    assert [first for _, _, first in sent.frames] == [100, 100, 0, 0, 0, 0, 200, 200, 300, 0]
    # Paused frames are silence and say so: nothing of the reply played, none echoes.
    assert [rid for rid, _, _ in sent.frames[2:6]] == [None] * 4
    assert [ms for rid, ms, _ in sent.frames if rid] == [20.0, 40.0, 60.0, 80.0, 100.0]


async def test_a_pause_holds_only_its_own_response_and_a_clear_drops_it() -> None:
    sent = Recorder()
    track = ReplyTrack(sent)
    track.push("resp_a", _pcm(100, 3))
    await _frames(track, 1)
    track.pause("resp_a")
    track.push("resp_b", _pcm(500, 1))
    await _frames(track, 2)
    assert track.clear("resp_a") == 20.0
    track.resume("resp_a")  # too late: nothing of it is left
    await _frames(track, 1)
    track.stop()
    assert [(rid, first) for rid, _, first in sent.frames] == [
        ("resp_a", 100), ("resp_b", 500), (None, 0), (None, 0)
    ]
    assert track.buffered_ms == 0.0
