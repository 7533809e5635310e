"""Many calls' Chatterbox utterances on one worker: T3 batched across them.

With the real chatterbox-tts code and random weights (the shared tiny engine,
seeded: every utterance samples from its own generator with the engine's seed).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.engines.chatterbox.t3_batch import T3Batch
from pipeline.errors import TTSError
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS, TinyChatterbox

pytestmark = CHATTERBOX_MARKS

TEXTS = ("Hello there, how are you?", "Fine, thanks.", "The train leaves at nine tonight.")


@pytest.fixture
def engine(tiny: TinyChatterbox) -> Iterator[Any]:
    engine = tiny.engine
    saved = engine.sampling, engine._worker.max_streams
    yield engine
    engine.sampling, engine._worker.max_streams = saved


async def _audio(engine: Any, text: str) -> np.ndarray:
    chunks = [chunk async for chunk in engine.synthesize(text)]
    return np.concatenate(chunks)


async def test_utterances_decoded_together_take_the_tokens_each_takes_alone(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batching changes nothing a call hears: the same tokens, so the same chunks
    and as many samples. (Not the same samples: HiFT's harmonic source draws its
    phases from torch's global generator, whose draws interleave across calls.)"""
    from pipeline.engines.chatterbox import engine as engine_module

    finished: dict[str, list[int]] = {}
    finish = engine_module._Utterance.finish

    def recording(self: Any) -> Any:
        finished[self._text] = list(self._progress.speech_tokens)
        return finish(self)

    monkeypatch.setattr(engine_module._Utterance, "finish", recording)
    alone = [await _audio(engine, text) for text in TEXTS]
    tokens_alone = dict(finished)
    finished.clear()
    steps_before = _steps(engine)
    together = await asyncio.gather(*(_audio(engine, text) for text in TEXTS))
    assert finished == tokens_alone and all(tokens_alone.values())
    for mine, theirs in zip(together, alone, strict=True):
        assert mine.size == theirs.size
    # They shared steps: no more than the longest needs, not the sum.
    caps = [engine.token_cap(text) for text in TEXTS]
    assert _steps(engine) - steps_before <= max(caps)


def _steps(engine: Any) -> int:
    steps: int = engine._worker.steps
    return steps


async def test_a_new_utterance_joins_within_one_step_of_seven_speaking(engine: Any) -> None:
    engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=400)
    speaking = [engine.synthesize(f"Sentence number {index}, spoken at length.")
                for index in range(7)]  # fmt: skip
    try:
        for stream in speaking:
            await anext(stream)  # each one has produced audio: all seven are in the batch
        assert len(engine._worker._batch) == 7
        newcomer = engine.synthesize_chunks("And one more.")
        first = await anext(newcomer)
        key = max(engine._worker.joined_at_step)
        submitted, joined = engine._worker.joined_at_step[key]
        assert joined - submitted <= 1
        assert first.tokens == engine.first_chunk_tokens + 3
        await newcomer.aclose()
    finally:
        for stream in speaking:
            await stream.aclose()
        await engine.wait_idle()
    assert not len(engine._worker._batch or [])


async def test_max_streams_bounds_the_batch_and_the_rest_wait_their_turn(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine._worker.max_streams = 2
    sizes: list[int] = []
    step = T3Batch.step

    def counting(self: T3Batch) -> Any:
        sizes.append(len(self))
        return step(self)

    monkeypatch.setattr(T3Batch, "step", counting)
    together = await asyncio.gather(*(_audio(engine, text) for text in TEXTS))
    assert all(audio.size for audio in together)
    assert max(sizes) == 2 and sizes.count(2) > 1


async def test_a_failing_step_fails_its_utterances_and_the_next_one_works(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = T3Batch.step
    failures = iter([True])

    def failing(self: T3Batch) -> Any:
        if next(failures, False):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return step(self)

    monkeypatch.setattr(T3Batch, "step", failing)
    results = await asyncio.gather(
        *(_audio(engine, text) for text in TEXTS[:2]), return_exceptions=True
    )
    failed = [result for result in results if isinstance(result, TTSError)]
    assert failed and "illegal memory access" in str(failed[0])
    assert (await _audio(engine, TEXTS[2])).size


async def test_a_bug_in_the_workers_round_fails_its_utterances_and_the_next_one_works(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.engines.chatterbox import engine as engine_module

    take = engine_module._Utterance.take
    failures = iter([True])

    def broken(self: Any, token: int | None) -> bool:
        if next(failures, False):
            raise KeyError("a bug in the chunking")
        return take(self, token)

    monkeypatch.setattr(engine_module._Utterance, "take", broken)
    with pytest.raises(TTSError, match="a bug in the chunking"):
        await _audio(engine, TEXTS[0])
    assert not engine._worker._running
    assert (await _audio(engine, TEXTS[1])).size


async def test_a_consumer_that_goes_away_frees_its_place(engine: Any) -> None:
    engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=400)
    engine._worker.max_streams = 1
    stream = engine.synthesize(TEXTS[0])
    await anext(stream)
    await stream.aclose()
    # The only place is free again: the next utterance runs to its end.
    async with asyncio.timeout(120):
        assert (await _audio(engine, "Hi.")).size


async def test_the_gpu_benchmarks_concurrency_measures_first_audio_and_underruns(
    engine: Any,
) -> None:
    """loadtest.gpu_bench's capacity inputs, run on the tiny engine (on CPU the
    random model is far slower than real time: underruns are expected here)."""
    from loadtest.gpu_bench import bench_concurrency

    rows = await bench_concurrency(engine, [1, 3], arrival_s=0.2)
    assert [row["calls"] for row in rows] == [1, 3]
    for row in rows:
        assert row["first_audio_ms"]["n"] == row["calls"]
        assert 0 < row["first_audio_ms"]["p50"] <= row["first_audio_ms"]["p95"]
        assert row["audio_s"] > 0 and row["wall_s"] > 0
        assert row["underruns"] >= row["utterances_with_underruns"]
        assert (row["underrun_ms"] is None) == (row["underruns"] == 0)


def test_one_flow_pass_for_several_voices_is_each_voices_pass(engine: Any) -> None:
    """S3Gen's flow over three utterances (three voices) at once gives each the mel
    it gets alone, to float precision (a batched matmul sums in another order)."""
    import torch

    from pipeline.engines.chatterbox.prompt import prompt_mel, prompt_mels

    s3gen = engine._model.s3gen
    prompts = [engine._voices[name].ref_dict for name in ("default", "alice", "bob")]
    assert len({prompt.frames for prompt in prompts}) == 1  # 1.5 s references, all three
    frames = prompts[0].frames + 34
    tokens = torch.randint(0, 6561, (3, 17), generator=torch.Generator().manual_seed(3))
    noise = torch.randn(3, 80, frames, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        together = prompt_mels(s3gen, prompts, tokens, n_timesteps=2, noised_mels=noise)
        alone = [
            prompt_mel(s3gen, prompt, tokens[row : row + 1], n_timesteps=2,
                       noised_mels=noise[row : row + 1])
            for row, prompt in enumerate(prompts)
        ]  # fmt: skip
    assert together.shape == (3, 80, 34)
    for row, mel in enumerate(alone):
        assert torch.allclose(together[row : row + 1], mel, atol=1e-4, rtol=1e-4), row
    # Different voices, different mels: the rows are not one voice repeated.
    assert not torch.allclose(together[0], together[1], atol=1e-2)
    with pytest.raises(ValueError, match="same length"):
        prompt_mels(s3gen, prompts[:2], tokens, n_timesteps=2, noised_mels=noise)


async def test_chunks_due_together_share_one_flow_pass(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three calls saying the same sentence (the engine's seed: the same tokens) have
    their chunks due in the same rounds: each round's chunks take one flow pass, and
    each call hears as many samples as alone."""
    from pipeline.engines.chatterbox import s3gen_stream

    rows: list[int] = []
    batched = s3gen_stream.prompt_mels

    def counting(s3gen: Any, prompts: list[Any], tokens: Any, **kwargs: Any) -> Any:
        rows.append(len(prompts))
        return batched(s3gen, prompts, tokens, **kwargs)

    monkeypatch.setattr(s3gen_stream, "prompt_mels", counting)
    alone = await _audio(engine, TEXTS[0])
    assert set(rows) == {1}
    rows.clear()
    together = await asyncio.gather(*(_audio(engine, TEXTS[0]) for _ in range(3)))
    assert [audio.size for audio in together] == [alone.size] * 3
    assert max(rows) == 3 and rows.count(3) >= 2  # the first chunk and a later one


def test_on_cuda_the_worker_thread_runs_on_a_stream_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mechanics only (no GPU here): on a CUDA device the engine's thread takes a
    non-default stream, so Whisper's CTranslate2 streams and Chatterbox's kernels do
    not wait for each other through the legacy default stream; on CPU nothing."""
    import threading

    import torch

    from pipeline.engines.chatterbox.engine import own_cuda_stream

    made: list[Any] = []
    current: dict[int, Any] = {}

    class FakeStream:
        def __init__(self, device: Any) -> None:
            self.device = device
            made.append(self)

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(
        torch.cuda, "set_stream", lambda stream: current.__setitem__(threading.get_ident(), stream)
    )
    assert own_cuda_stream("cpu") is None and not made
    stream = own_cuda_stream("cuda:1")
    assert made == [stream] and stream.device == torch.device("cuda:1")
    assert current == {threading.get_ident(): stream}
