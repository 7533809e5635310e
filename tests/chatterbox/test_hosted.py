"""The tiny random-weight Chatterbox in a process of its own (the gpu profile's
``VOICEFORGE_TTS_PROCESSES``): the same audio as in the server's process, a
barge-in that empties the child's batch, cloning that reaches the child."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from pipeline.engines.base import CloningTTS
from pipeline.engines.hosted import HostedTTS, hosted_tts
from pipeline.engines.process_host import EngineSpec
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS, TinyChatterbox, speech_tokens

pytestmark = CHATTERBOX_MARKS


@pytest.fixture(scope="module")
def hosted(tiny: TinyChatterbox) -> Iterator[HostedTTS]:
    lines: list[str] = []
    tts = hosted_tts(
        EngineSpec(
            "tests.chatterbox.tiny_model:tiny_token_engine",
            {"checkpoint": str(tiny.checkpoint), "voices_dir": str(tiny.voices_dir)},
            "tts",
        ),
        progress=lines.append,
    )
    yield tts
    tts.close()


async def collect(chunks: AsyncIterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([chunk async for chunk in chunks])


async def test_a_hosted_engine_speaks_as_the_engine_in_process(
    tiny: TinyChatterbox, hosted: HostedTTS
) -> None:
    assert isinstance(hosted, CloningTTS)
    assert (hosted.name, hosted.sample_rate) == (tiny.engine.name, tiny.engine.sample_rate)
    assert set(hosted.voices()) == set(tiny.engine.voices())
    # The child warmed every voice up before it reported ready.
    assert set(hosted.warmed) == set(tiny.engine.voices())
    text = "Hello there, friend."
    here = await collect(tiny.engine.synthesize(text, voice="alice"))
    there = await collect(hosted.synthesize(text, voice="alice"))
    assert there.dtype == np.float32 and len(there) == len(here) > 0
    # The same speech tokens, sampled in the child (HiFT's noise makes the audio
    # itself differ run to run, in one process too).
    tokens_there = await hosted.hosts[0].call("speech_tokens", text, "alice")
    assert tokens_there == await speech_tokens(tiny.engine, text, "alice")
    assert len(tokens_there) > 10


async def test_a_barge_in_empties_the_childs_batch(hosted: HostedTTS) -> None:
    host = hosted.hosts[0]
    chunks = hosted.synthesize("A long reply that the caller interrupts.", voice="bob")
    await anext(chunks)
    await chunks.aclose()
    # The child's worker goes idle: the cancelled utterance left its batch.
    await asyncio.wait_for(host.call("wait_idle"), timeout=30)
    assert host.in_flight == 0
    again = await collect(hosted.synthesize("Still here.", voice="bob"))
    assert len(again) > 0


async def test_a_cloned_voice_reaches_the_child(tiny: TinyChatterbox, hosted: HostedTTS) -> None:
    assert isinstance(hosted, CloningTTS)
    await hosted.add_voice("carol", tiny.voices_dir / "alice.wav")
    assert "carol" in hosted.voices()
    assert len(await collect(hosted.synthesize("Hi.", voice="carol"))) > 0
    await hosted.remove_voice("carol")
    assert "carol" not in hosted.voices()
