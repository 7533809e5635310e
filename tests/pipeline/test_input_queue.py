"""The per-call input queue is bounded in audio, not in frames (issue 13 item 6).

500 frames of 256 KiB each used to wait for the VAD at once: ~256 MiB per call.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipeline.conversation import SessionConfig
from pipeline.vad import BatchedVADWorker
from tests.pipeline.test_conversation import make

pytestmark = pytest.mark.filterwarnings("error")

RATE = 16000



async def test_queued_input_is_bounded_in_seconds_of_audio(vad: BatchedVADWorker) -> None:
    h = make(vad)
    frame = np.zeros(RATE // 2, dtype=np.float32)  # 0.5 s, as one big client frame
    try:
        # No await between frames: the input task cannot take any of them yet.
        accepted = sum(h.conversation.feed_audio(frame) for _ in range(600))
        limit_s = SessionConfig().max_queued_input_ms / 1000
        assert accepted * 0.5 <= limit_s
        assert accepted * 0.5 > limit_s - 0.5, "the bound is what it says"
        # Once the VAD has taken the audio, the call takes audio again.
        deadline = time.monotonic() + 30
        while not h.conversation.feed_audio(frame):
            assert time.monotonic() < deadline, "the input queue never drained"
            await asyncio.sleep(0.01)
    finally:
        await h.conversation.close()


async def test_one_frame_longer_than_the_bound_still_goes_through(
    vad: BatchedVADWorker,
) -> None:
    h = make(vad, config=SessionConfig(max_queued_input_ms=1000))
    try:
        assert h.conversation.feed_audio(np.zeros(2 * RATE, dtype=np.float32))
        assert not h.conversation.feed_audio(np.zeros(160, dtype=np.float32))
    finally:
        await h.conversation.close()
