"""Streaming Chatterbox with the real chatterbox-tts code and random weights.

One small checkpoint (tiny T3, the library's S3Gen and VoiceEncoder) is written
per module and loaded through ``from_local``; the tests check the streaming
mechanics: continuity at the joins, total length, when the first chunk comes,
cancellation, voices, and loud failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import ConfigurationError, ModelLoadError, TTSError
from tests.chatterbox.tiny_model import (
    CHATTERBOX_MARKS,
    CHUNK_TOKENS,
    FIRST_CHUNK_TOKENS,
    TEXT,
    TinyChatterbox,
)

pytestmark = CHATTERBOX_MARKS

async def _collect(engine: Any, text: str, voice: str | None = None) -> list[Any]:
    return [chunk async for chunk in engine.synthesize_chunks(text, voice=voice)]


def _whole_decode(engine: Any, tokens: list[int], voice: str) -> np.ndarray:
    """The library's own non-streamed S3Gen decode of the same tokens."""
    import torch

    model = engine._model
    ref_dict = engine._voices[voice].ref_dict
    with torch.inference_mode():
        wav, _ = model.s3gen.inference(
            speech_tokens=torch.tensor([tokens]), ref_dict=ref_dict, n_cfm_timesteps=2
        )
    return np.asarray(wav[0].float().cpu().numpy())


async def test_streamed_chunks_join_without_clicks_and_match_the_whole_length(
    tiny: TinyChatterbox,
) -> None:
    import torch

    # HiFT's harmonic source draws from torch's global generator: the same draws
    # whatever ran before (the engine's own seed covers T3 and the flow's noise).
    torch.manual_seed(0)
    engine = tiny.engine
    chunks = await _collect(engine, TEXT, voice="alice")
    progress = engine.last_progress
    assert progress.finished
    assert len(chunks) >= 3, "short first chunk, then larger ones, then the rest"
    sizes = [chunk.audio.size for chunk in chunks]
    assert sizes[1] > sizes[0], "later chunks are larger than the first"
    audio = np.concatenate([chunk.audio for chunk in chunks])
    assert np.isfinite(audio).all()

    # Same length as the library decoding all tokens at once: nothing repeated,
    # nothing missing (the design makes it exact; one chunk's hop is the bound).
    whole = await asyncio.get_running_loop().run_in_executor(
        engine._executor, _whole_decode, engine, progress.speech_tokens, "alice"
    )
    hop_samples = CHUNK_TOKENS * 960
    assert abs(audio.size - whole.size) <= hop_samples
    assert audio.size == whole.size == 960 * len(progress.speech_tokens)

    joins = _joins(sizes, audio)
    assert joins.max_step <= joins.inside_step_p99, joins
    assert joins.min_rms >= 0.5 * joins.inside_rms_median, joins


@dataclasses.dataclass
class JoinReport:
    """How the audio behaves where chunks meet, against how it behaves inside them.

    A click is a sample-to-sample step larger than the signal's own (its 99th
    percentile inside chunks); a dropout or a restarted vocoder's fade-in is a
    20 ms window right after a join with much less energy than usual.
    """

    max_step: float
    inside_step_p99: float
    min_rms: float
    inside_rms_median: float


def _joins(sizes: list[int], audio: np.ndarray, window: int = 480) -> JoinReport:
    joins = np.cumsum(sizes)[:-1]
    steps = np.abs(np.diff(audio))
    inside_steps = np.delete(steps, joins - 1)
    starts = np.arange(2 * window, audio.size - window, window)
    inside_starts = [start for start in starts if np.all(np.abs(joins - start) >= window)]

    def rms(start: int) -> float:
        return float(np.sqrt(np.mean(audio[start : start + window] ** 2)))

    return JoinReport(
        max_step=float(steps[joins - 1].max()),
        inside_step_p99=float(np.percentile(inside_steps, 99)),
        min_rms=min(rms(int(join)) for join in joins),
        inside_rms_median=float(np.median([rms(int(start)) for start in inside_starts])),
    )


async def test_restarting_the_vocoder_per_chunk_fails_the_join_check(
    tiny: TinyChatterbox,
) -> None:
    """The join check is not vacuous: chunks decoded one by one with the library's
    non-streamed decode (fresh HiFT, its fade-in at every start) are caught."""
    engine = tiny.engine
    tokens = np.random.default_rng(0).integers(0, 6561, size=36).tolist()

    def decode_separately() -> list[np.ndarray]:
        return [
            _whole_decode(engine, tokens[start : start + CHUNK_TOKENS], "alice")
            for start in range(0, len(tokens), CHUNK_TOKENS)
        ]

    pieces = await asyncio.get_running_loop().run_in_executor(engine._executor, decode_separately)
    joins = _joins([piece.size for piece in pieces], np.concatenate(pieces))
    assert joins.min_rms < 0.5 * joins.inside_rms_median, joins


async def test_first_chunk_comes_after_the_configured_tokens(tiny: TinyChatterbox) -> None:
    chunks = await _collect(tiny.engine, TEXT)
    lookahead = 3
    assert chunks[0].tokens == FIRST_CHUNK_TOKENS + lookahead
    assert chunks[1].tokens == FIRST_CHUNK_TOKENS + CHUNK_TOKENS + lookahead
    # First chunk: its tokens' 2 mel frames each, less HiFT's 8 held-back frames.
    assert chunks[0].audio.size == (2 * FIRST_CHUNK_TOKENS - 8) * 480


async def test_adaptive_schedule_sizes_later_chunks_within_bounds_and_keeps_the_audio(
    tiny: TinyChatterbox,
) -> None:
    """The real model's stream under the adaptive schedule: each later chunk is the
    size the schedule chose (between 5 tokens and ``chunk_tokens``), and the audio is
    still every token's, joined as cleanly as with fixed chunks."""
    engine = tiny.engine
    engine.chunk_schedule = "adaptive"
    try:
        chunks = await _collect(engine, TEXT, voice="alice")
    finally:
        engine.chunk_schedule = "fixed"
    progress = engine.last_progress
    assert progress.finished and len(chunks) >= 3
    lookahead = 3
    assert chunks[0].tokens == FIRST_CHUNK_TOKENS + lookahead
    chosen = progress.chunk_sizes
    assert all(5 <= size <= CHUNK_TOKENS for size in chosen), chosen
    # Every chunk but the last (the flush) follows the schedule.
    steps = [later.tokens - earlier.tokens for earlier, later in pairwise(chunks[:-1])]
    assert steps == chosen[: len(steps)]
    audio = np.concatenate([chunk.audio for chunk in chunks])
    assert audio.size == 960 * len(progress.speech_tokens)
    joins = _joins([chunk.audio.size for chunk in chunks], audio)
    assert joins.max_step <= joins.inside_step_p99, joins
    assert joins.min_rms >= 0.5 * joins.inside_rms_median, joins


async def test_cancel_stops_after_the_step_in_progress(tiny: TinyChatterbox) -> None:
    """A cancelled utterance leaves the T3 batch before the next step: at most the
    step in progress adds a token, and no chunk follows."""
    engine = tiny.engine
    engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=400)
    try:
        first = asyncio.get_running_loop().create_future()
        received = []

        async def consume() -> None:
            async for chunk in engine.synthesize_chunks(TEXT):
                received.append(chunk)
                if not first.done():
                    first.set_result(chunk)

        task = asyncio.create_task(consume())
        await first
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        progress = engine.last_progress
        tokens_at_cancel, chunks_at_cancel = progress.tokens, len(received)
        await engine.wait_idle()
        assert not progress.finished
        assert progress.tokens <= tokens_at_cancel + 1
        assert len(received) == chunks_at_cancel
        assert not len(engine._worker._batch or [])

        # Closing the generator (aclose) stops it the same way.
        stream = engine.synthesize(TEXT)
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


async def test_token_loop_samples_exactly_like_the_library(tiny: TinyChatterbox) -> None:
    """Same seed, same tokens as T3.inference: CFG, repetition penalty, min-p, top-p."""
    import torch
    import torch.nn.functional as functional

    from pipeline.engines.chatterbox.t3_stream import SamplingSettings, speech_tokens

    engine = tiny.engine
    model = engine._model
    hp = model.t3.hp

    def both() -> tuple[list[int], list[int]]:
        text = model.tokenizer.text_to_tokens("Hello there.")
        text = functional.pad(text, (1, 0), value=hp.start_text_token)
        text = functional.pad(text, (0, 1), value=hp.stop_text_token)
        cond = engine._voices["default"].t3_cond
        settings = SamplingSettings(max_new_tokens=20, top_p=0.9)
        torch.manual_seed(7)
        ours = list(speech_tokens(model.t3, cond, text, settings))
        torch.manual_seed(7)
        theirs = model.t3.inference(
            t3_cond=cond,
            text_tokens=torch.cat([text, text]),
            max_new_tokens=20,
            temperature=settings.temperature,
            cfg_weight=settings.cfg_weight,
            repetition_penalty=settings.repetition_penalty,
            min_p=settings.min_p,
            top_p=settings.top_p,
        )
        return ours, [token for token in theirs[0].tolist() if token < 6561]

    ours, theirs = await asyncio.get_running_loop().run_in_executor(engine._executor, both)
    assert ours and ours == theirs


async def test_voice_library_and_unknown_voice(tiny: TinyChatterbox) -> None:
    from pipeline.engines.chatterbox.voices import voice_library

    engine = tiny.engine
    assert list(engine.voices()) == ["default", "alice", "bob"]
    assert engine.default_voice == "default"
    assert voice_library(tiny.voices_dir) == {
        "alice": tiny.voices_dir / "alice.wav",
        "bob": tiny.voices_dir / "bob.wav",
    }
    # Different reference voices give different speaker conditioning.
    alice, bob = engine._voices["alice"], engine._voices["bob"]
    assert not np.allclose(alice.t3_cond.speaker_emb.numpy(), bob.t3_cond.speaker_emb.numpy())
    with pytest.raises(TTSError, match="unknown voice 'carol'") as raised:
        await _collect(engine, TEXT, voice="carol")
    assert not raised.value.transient
    assert await _collect(engine, "   ") == []


def test_voice_library_errors(tmp_path: Path) -> None:
    from pipeline.engines.chatterbox.voices import voice_library

    with pytest.raises(ConfigurationError, match="does not exist"):
        voice_library(tmp_path / "missing")
    (tmp_path / "default.wav").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="built-in voice"):
        voice_library(tmp_path)


def test_watermark_enabled_but_unavailable_is_a_loud_error(
    tiny: TinyChatterbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.engines.chatterbox import ChatterboxTTS

    monkeypatch.setitem(sys.modules, "perth", None)  # import perth → ImportError
    with pytest.raises(ModelLoadError, match="watermarking is enabled but the Perth"):
        ChatterboxTTS(tiny.checkpoint, device="cpu", t3_config=tiny.t3_config, watermark=True)


def test_watermark_implicit_model_missing_is_a_loud_error(
    tiny: TinyChatterbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perth

    from pipeline.engines.chatterbox import ChatterboxTTS

    # What perth does when its neural watermarker fails to import: it sets None.
    monkeypatch.setattr(perth, "PerthImplicitWatermarker", None)
    with pytest.raises(ModelLoadError, match="PerthImplicitWatermarker did not load"):
        ChatterboxTTS(tiny.checkpoint, device="cpu", t3_config=tiny.t3_config, watermark=True)


def test_bad_checkpoint_and_settings(tmp_path: Path) -> None:
    from pipeline.engines.chatterbox import ChatterboxTTS

    with pytest.raises(ModelLoadError, match=r"lacks ve\.safetensors"):
        ChatterboxTTS(tmp_path, device="cpu")
    with pytest.raises(ConfigurationError, match="first_chunk_tokens"):
        ChatterboxTTS(tmp_path, device="cpu", first_chunk_tokens=2)
    with pytest.raises(ConfigurationError, match="bf16"):
        ChatterboxTTS(tmp_path, device="cpu", bf16=True)
    with pytest.raises(ConfigurationError, match="tf32"):
        ChatterboxTTS(tmp_path, device="cpu", tf32=True)
    with pytest.raises(ConfigurationError, match="tokens_per_char"):
        ChatterboxTTS(tmp_path, device="cpu", tokens_per_char=0)
    with pytest.raises(ConfigurationError, match="chunk_schedule"):
        ChatterboxTTS(tmp_path, device="cpu", chunk_schedule="ramp")


def test_seeded_noise_is_drawn_on_the_generators_device(
    tiny: TinyChatterbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA draws with a CUDA generator only on the GPU: ``torch.randn(...,
    generator=cuda_generator)`` without ``device`` raises there. On CPU the rule is
    imitated: the draw must name the generator's device."""
    import torch

    from pipeline.engines.chatterbox import s3gen_stream

    real_randn = torch.randn
    draws: list[str] = []

    class ElsewhereGenerator:
        """A seeded generator that says it lives on another device than S3Gen."""

        device = torch.device("meta")

        def __init__(self) -> None:
            self.cpu = torch.Generator().manual_seed(5)

    def strict_randn(*size: int, generator: Any = None, device: Any = None, **kw: Any) -> Any:
        if generator is not None:
            if torch.device(device or "cpu") != generator.device:
                raise RuntimeError(
                    f"Expected a '{torch.device(device or 'cpu').type}' device type for"
                    f" generator but found '{generator.device.type}'"
                )
            draws.append(str(device))
            return real_randn(*size, generator=generator.cpu, **kw)
        return real_randn(*size, device=device, **kw)

    monkeypatch.setattr(s3gen_stream.torch, "randn", strict_randn)
    model = tiny.engine._model
    stream = s3gen_stream.S3GenStream(
        model.s3gen,
        tiny.engine._voices["default"].ref_dict,
        max_tokens=10,
        generator=ElsewhereGenerator(),  # type: ignore[arg-type]
    )
    assert draws == ["meta"]
    assert stream._noise.device == model.s3gen.device
    assert torch.isfinite(stream._noise).all()


async def test_a_missed_stop_token_stops_at_the_text_length_cap(tiny: TinyChatterbox) -> None:
    """The tiny model never samples its stop token: a short text must still end
    after a few seconds of tokens, not at max_new_tokens."""
    engine = tiny.engine
    engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=400)
    try:
        cap = engine.token_cap("Hi.")
        assert cap == 50 + 4 * len("Hi.")
        chunks = await _collect(engine, "Hi.")
        progress = engine.last_progress
        assert progress.finished
        # T3 took `cap` steps; the special tokens among them (random weights sample
        # some) are dropped, as the library drops them.
        assert cap // 2 < progress.tokens <= cap
        assert sum(chunk.audio.size for chunk in chunks) == 960 * progress.tokens
        # A long text is held to max_new_tokens.
        assert engine.token_cap("word " * 200) == 400
    finally:
        engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=45)


async def test_warm_up_runs_every_voice_through_both_chunk_paths(tiny: TinyChatterbox) -> None:
    engine = tiny.engine
    warmed = await engine.warm_up()
    assert list(warmed) == ["default", "alice", "bob"]
    # First chunk, at least one later chunk, the final flush.
    assert min(warmed.values()) >= 3, warmed
