"""Chatterbox-Turbo streamed, with the real chatterbox-tts code and random weights.

A tiny Turbo checkpoint (2-layer GPT-2 T3, the library's mean-flow S3Gen and
VoiceEncoder, a character tokenizer) is written once and loaded through
``ChatterboxTurboTTS.from_local``; the tests check what they check for the
standard model: the library's own tokens, chunking, length, cancellation.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.chatterbox.tiny_model import CHATTERBOX_MARKS

pytestmark = CHATTERBOX_MARKS

FIRST_CHUNK_TOKENS = 8
CHUNK_TOKENS = 12
TEXT = "Hello there, how are you?"


@dataclasses.dataclass
class TinyTurbo:
    checkpoint: Path
    engine: Any


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyTurbo]:
    from pipeline.engines.chatterbox import ChatterboxTTS
    from tests.chatterbox.tiny_model import write_reference_wav, write_turbo_checkpoint

    root = tmp_path_factory.mktemp("turbo")
    voice = write_reference_wav(root / "builtin.wav", seconds=6.0, pitch_hz=150.0)
    config = write_turbo_checkpoint(root / "checkpoint", voice)
    engine = ChatterboxTTS(
        root / "checkpoint",
        device="cpu",
        turbo=True,
        t3_config=config,
        first_chunk_tokens=FIRST_CHUNK_TOKENS,
        chunk_tokens=CHUNK_TOKENS,
        left_context_tokens=12,
        max_new_tokens=45,
        seed=1234,
    )
    yield TinyTurbo(root / "checkpoint", engine)
    engine.close()


async def test_turbo_token_loop_samples_exactly_like_the_library(turbo: TinyTurbo) -> None:
    """Same seed, same tokens as T3.inference_turbo: top-k, top-p, temperature,
    repetition penalty in the library's order, no CFG."""
    import torch

    from pipeline.engines.chatterbox.t3_stream import SamplingSettings, turbo_speech_tokens

    engine = turbo.engine
    model = engine._model

    def both() -> tuple[list[int], list[int]]:
        text = engine._text_tokens("Hello there.")
        cond = engine._voices["default"].t3_cond
        settings = SamplingSettings(max_new_tokens=20, top_p=0.95)
        torch.manual_seed(7)
        ours = list(turbo_speech_tokens(model.t3, cond, text, settings, top_k=1000))
        torch.manual_seed(7)
        theirs = model.t3.inference_turbo(
            t3_cond=cond, text_tokens=text, temperature=settings.temperature, top_k=1000,
            top_p=0.95, repetition_penalty=settings.repetition_penalty, max_gen_len=19,
        )  # fmt: skip
        return ours, [token for token in theirs[0].tolist() if token < 6561]

    ours, theirs = await asyncio.get_running_loop().run_in_executor(engine._executor, both)
    assert ours and ours == theirs


async def test_turbo_streams_in_chunks_as_long_as_its_tokens(turbo: TinyTurbo) -> None:
    engine = turbo.engine
    assert engine.name.startswith("chatterbox-turbo:") and engine.cfm_steps == 2
    chunks = [chunk async for chunk in engine.synthesize_chunks(TEXT)]
    progress = engine.last_progress
    assert progress.finished and len(chunks) >= 3
    assert chunks[0].tokens == FIRST_CHUNK_TOKENS + 3
    assert chunks[1].tokens == FIRST_CHUNK_TOKENS + CHUNK_TOKENS + 3
    audio = np.concatenate([chunk.audio for chunk in chunks])
    assert np.isfinite(audio).all() and float(np.abs(audio).max()) > 0
    # Every token's 960 samples, plus the 3 silence tokens Turbo ends on.
    assert audio.size == 960 * (len(progress.speech_tokens) + 3)


async def test_turbo_cancel_stops_after_the_step_in_progress(turbo: TinyTurbo) -> None:
    engine = turbo.engine
    engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=400)
    try:
        stream = engine.synthesize_chunks(TEXT)
        await anext(stream)
        await stream.aclose()
        progress = engine.last_progress
        tokens_at_close = progress.tokens
        await engine.wait_idle()
        assert not progress.finished
        assert progress.tokens <= tokens_at_close + 1
        assert not len(engine._worker._batch or [])
    finally:
        engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=45)
