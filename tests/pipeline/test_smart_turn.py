"""Smart Turn v3.2 against the real ONNX file: features, answers on real speech,
batching, and the asyncio worker."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from loadtest.turn_examples import TurnExample, turn_examples, with_silence
from pipeline.errors import ConfigurationError, EngineError, ModelLoadError
from pipeline.smart_turn import (
    FEATURE_FRAMES,
    MEL_BINS,
    WINDOW_SAMPLES,
    BatchedSmartTurnWorker,
    SmartTurnFeatures,
    SmartTurnModel,
    last_window,
)
from pipeline.thread_worker import single_threaded_blas

FloatArray = npt.NDArray[np.float32]

PAUSE_MS = 200.0
"""Silence after the words when the model is asked: the learned policy's default
first question (TurnConfig.end_of_turn_min_silence_ms)."""


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return SmartTurnModel()


@pytest.fixture(scope="module")
def examples() -> tuple[TurnExample, ...]:
    return turn_examples()


@pytest.fixture(scope="module")
def answers(
    model: SmartTurnModel, examples: tuple[TurnExample, ...]
) -> list[tuple[str, float, float]]:
    """(prefix, P(complete) of the question, P(complete) of its cut) after 200 ms."""
    rows = []
    for example in examples:
        complete, cut = model.predict_batch(
            [with_silence(example.complete, PAUSE_MS), with_silence(example.cut, PAUSE_MS)]
        )
        rows.append((example.prefix, float(complete), float(cut)))
    return rows


# ------------------------------------------------------------------ features


def test_short_audio_is_left_padded_to_eight_seconds() -> None:
    audio = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    window = last_window(audio)
    assert window.shape == (WINDOW_SAMPLES,) and window.dtype == np.float32
    assert not window[: WINDOW_SAMPLES - 16000].any()
    np.testing.assert_array_equal(window[-16000:], audio)


def test_long_audio_keeps_its_last_eight_seconds() -> None:
    audio = np.arange(WINDOW_SAMPLES + 5000, dtype=np.float32)
    np.testing.assert_array_equal(last_window(audio), audio[5000:])
    assert last_window(np.zeros(0, dtype=np.float32)).shape == (WINDOW_SAMPLES,)


def test_padding_goes_on_the_left_not_the_right(examples: tuple[TurnExample, ...]) -> None:
    """The speech ends at the last feature frame: zeros come first."""
    features = SmartTurnFeatures()(examples[0].complete)
    assert features.shape == (MEL_BINS, FEATURE_FRAMES) and features.dtype == np.float32
    speech_frames = round(len(examples[0].complete) / 160)
    padding = features[:, : FEATURE_FRAMES - speech_frames - 2]
    speech = features[:, FEATURE_FRAMES - speech_frames + 2 :]
    # The normalised zeros are one constant: every padding frame is the same.
    assert np.ptp(padding, axis=1).max() < 1e-5
    assert np.ptp(speech, axis=1).min() > 0.1


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)
@pytest.mark.parametrize("which", ["short question", "cut question", "over eight seconds"])
def test_features_match_transformers_whisper_extractor(
    examples: tuple[TurnExample, ...], which: str
) -> None:
    from transformers import WhisperFeatureExtractor

    if which == "short question":
        audio = with_silence(examples[1].complete, PAUSE_MS)
    elif which == "cut question":
        audio = examples[6].cut
    else:
        audio = np.concatenate([example.complete for example in examples[:4]])
        assert len(audio) > WINDOW_SAMPLES
    reference = WhisperFeatureExtractor(chunk_length=8)(
        last_window(audio), sampling_rate=16000, return_tensors="np", do_normalize=True
    ).input_features[0]
    ours = SmartTurnFeatures()(audio)
    assert reference.shape == ours.shape == (MEL_BINS, FEATURE_FRAMES)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)


# -------------------------------------------------------------------- model


def test_model_file_is_the_verified_cache_copy(model: SmartTurnModel) -> None:
    from pipeline import models

    assert model.model_path == models.smart_turn_model_path()
    assert models.is_verified(model.model_path, models.SMART_TURN_SIZE, models.SMART_TURN_SHA256)


def test_not_a_smart_turn_model_is_refused() -> None:
    from pipeline.vad import default_model_path

    with pytest.raises(ModelLoadError, match="not a Smart Turn v3 model"):
        SmartTurnModel(default_model_path())


def test_missing_file_and_bad_threads_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        SmartTurnModel(tmp_path / "missing.onnx")
    with pytest.raises(ConfigurationError, match="threads"):
        SmartTurnModel(tmp_path / "missing.onnx", threads=0)


def test_complete_questions_score_high(answers: list[tuple[str, float, float]]) -> None:
    """Measured: 12 of 14 at or above 0.5 (the two below are 'Can you set an alarm
    for seven thirty tomorrow morning?' and 'I need to buy eggs, milk, and bread.')."""
    complete = [p for _, p, _ in answers]
    assert sum(p >= 0.5 for p in complete) >= 11, answers
    assert statistics.median(complete) >= 0.9, answers


def test_questions_cut_mid_sentence_score_lower(answers: list[tuple[str, float, float]]) -> None:
    """Measured: the cut scores below its complete question in 13 of 14 pairs, and
    0.32 lower on average; but only 5 of 14 cuts fall below 0.5, which is why the
    learned policy is not the default (docs/decisions.md). The same voice 10 %
    faster or slower (Piper's length_scale 0.9-1.1, seven rates) gave 11-13 of 14
    lower, 0.32-0.45 on average, and 2-3 of the 3 trailing "and"s: the bounds
    leave that much room for audio a CPU renders a little differently. (Exact
    int8 kernels on every CPU: tests/pipeline/test_onnx_int8.py.)"""
    lower = [prefix for prefix, complete, cut in answers if cut < complete]
    assert len(lower) >= 10, answers
    gap = statistics.mean(c for _, c, _ in answers) - statistics.mean(k for _, _, k in answers)
    assert gap >= 0.2, answers
    trailing_and = [(complete, cut) for prefix, complete, cut in answers if prefix.endswith("and")]
    assert len(trailing_and) == 3
    assert sum(cut < complete for complete, cut in trailing_and) >= 2, answers


def test_batched_probabilities_equal_single_runs(
    model: SmartTurnModel, examples: tuple[TurnExample, ...]
) -> None:
    clips = [example.cut for example in examples[:4]] + [
        example.complete for example in examples[:4]
    ]
    batched = model.predict_batch(clips)
    single = np.array([model.predict(clip) for clip in clips], dtype=np.float32)
    assert batched.shape == (8,)
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)


def test_run_features_rejects_bad_shapes(model: SmartTurnModel) -> None:
    with pytest.raises(ValueError, match="shape"):
        model.run_features(np.zeros((1, MEL_BINS, 100), dtype=np.float32))
    assert model.run_features(np.zeros((0, MEL_BINS, FEATURE_FRAMES), np.float32)).shape == (0,)
    assert model.predict_batch([]).shape == (0,)


# ------------------------------------------------------------------- worker


async def test_worker_batches_concurrent_requests(
    model: SmartTurnModel, examples: tuple[TurnExample, ...]
) -> None:
    clips = [example.cut for example in examples[:6]]
    worker = BatchedSmartTurnWorker(model, max_batch=4)
    await worker.start()
    try:
        results = await asyncio.gather(*(worker.predict(clip) for clip in clips))
    finally:
        await worker.stop()
    single = [model.predict(clip) for clip in clips]
    np.testing.assert_allclose(results, single, rtol=0, atol=1e-5)
    assert worker.requests_run == 6
    # All six queued before the worker ran: at most max_batch per call.
    assert worker.batches_run == 2


class BlockingModel(SmartTurnModel):
    """The real model, whose calls wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict_batch(self, audios: Sequence[FloatArray]) -> FloatArray:
        self.entered.set()
        self.release.wait(timeout=30)
        return super().predict_batch(audios)


async def test_a_full_queue_refuses_at_once_and_stop_fails_what_is_left(
    examples: tuple[TurnExample, ...],
) -> None:
    model = BlockingModel()
    worker = BatchedSmartTurnWorker(model, max_batch=1, max_pending=1)
    await worker.start()
    clip = examples[0].complete
    in_flight = asyncio.create_task(worker.predict(clip))
    await asyncio.to_thread(model.entered.wait, 30)
    queued = asyncio.create_task(worker.predict(clip))
    await asyncio.sleep(0)  # let it reach the queue
    with pytest.raises(EngineError, match="requests queued") as refused:
        await worker.predict(clip)
    assert refused.value.transient and worker.requests_refused == 1
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    model.release.set()
    await stopping
    for task in (in_flight, queued):
        with pytest.raises(EngineError, match="Smart Turn worker stopped"):
            await task
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(EngineError, match="not running"):
        await worker.predict(clip)


async def test_a_cancelled_caller_is_skipped_and_the_worker_keeps_serving(
    examples: tuple[TurnExample, ...],
) -> None:
    model = BlockingModel()
    worker = BatchedSmartTurnWorker(model, max_batch=1)
    await worker.start()
    try:
        first = asyncio.create_task(worker.predict(examples[0].complete))
        await asyncio.to_thread(model.entered.wait, 30)
        abandoned = asyncio.create_task(worker.predict(examples[1].complete))
        await asyncio.sleep(0)
        abandoned.cancel()
        model.release.set()
        await first
        answer = await worker.predict(examples[2].complete)
    finally:
        await worker.stop()
    assert abandoned.cancelled()
    assert worker.requests_run == 2  # the abandoned request never reached the model
    assert answer == pytest.approx(model.predict(examples[2].complete), abs=1e-5)


class FailOnceModel(SmartTurnModel):
    failed = False

    def predict_batch(self, audios: Sequence[FloatArray]) -> FloatArray:
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return super().predict_batch(audios)


async def test_model_error_reaches_the_caller_and_the_worker_keeps_serving(
    examples: tuple[TurnExample, ...],
) -> None:
    worker = BatchedSmartTurnWorker(FailOnceModel())
    await worker.start()
    try:
        with pytest.raises(EngineError, match="injected failure") as caught:
            await worker.predict(examples[0].complete)
        assert caught.value.transient and isinstance(caught.value.__cause__, RuntimeError)
        assert 0.0 <= await worker.predict(examples[0].complete) <= 1.0
    finally:
        await worker.stop()


async def test_observers_see_each_model_call_and_a_broken_one_is_contained(
    model: SmartTurnModel, examples: tuple[TurnExample, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """What feeds ``voiceforge_smart_turn_inference_seconds``: one call per batch that
    answered, with its size and time; failed batches are not observed."""
    seen: list[tuple[int, float]] = []
    removed: list[tuple[int, float]] = []

    def broken(requests: int, seconds: float) -> None:
        raise RuntimeError("metric bug")

    def forgotten(requests: int, seconds: float) -> None:
        removed.append((requests, seconds))

    worker = BatchedSmartTurnWorker(FailOnceModel(), max_batch=4)
    worker.add_observer(lambda requests, seconds: seen.append((requests, seconds)))
    worker.add_observer(broken)
    worker.add_observer(forgotten)
    worker.remove_observer(forgotten)
    worker.remove_observer(broken)
    worker.remove_observer(broken)  # twice: ignored
    worker.add_observer(broken)
    await worker.start()
    try:
        with pytest.raises(EngineError):
            await worker.predict(examples[0].complete)
        assert seen == []
        clips = [example.cut for example in examples[:3]]
        answers = await asyncio.gather(*(worker.predict(clip) for clip in clips))
        assert all(0.0 <= answer <= 1.0 for answer in answers)
    finally:
        await worker.stop()
    assert [requests for requests, _ in seen] == [3]  # queued together: one call
    assert all(seconds > 0.0 for _, seconds in seen)
    assert removed == []
    assert "observer failed" in caplog.text


@pytest.fixture
def restored_blas() -> Iterator[None]:
    """Whatever a test does to numpy's BLAS threads is undone after it."""
    from threadpoolctl import threadpool_limits

    before = threadpool_limits(limits=None, user_api="blas")
    try:
        yield
    finally:
        before.restore_original_limits()


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"]


def test_numpys_blas_gets_one_thread_and_the_features_are_unchanged(
    restored_blas: None, model: SmartTurnModel, examples: tuple[TurnExample, ...],
) -> None:
    """Smart Turn's mel projection is numpy's only heavy BLAS use; one thread keeps
    its pool from spinning beside the models (docs/decisions.md)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=2, user_api="blas")
    before = model.features(examples[0].complete)
    assert single_threaded_blas() == 2
    assert _blas_threads() and set(_blas_threads()) == {1}
    np.testing.assert_allclose(model.features(examples[0].complete), before, rtol=1e-5, atol=1e-5)
    assert single_threaded_blas() == 1  # idempotent


def test_the_servers_engine_build_gives_blas_one_thread(restored_blas: None) -> None:
    """``build_engines`` (every profile; the bench one is cheap to build) sets it
    before any model loads."""
    from threadpoolctl import threadpool_limits

    from agent.config import Settings
    from agent.profiles import build_engines

    threadpool_limits(limits=2, user_api="blas")
    build_engines(Settings(profile="bench", builtin_tools=()), progress=lambda line: None)
    assert set(_blas_threads()) == {1}


def test_the_cost_benchmark_alternates_blas_threads_and_restores_them(
    restored_blas: None, model: SmartTurnModel,
) -> None:
    """``python -m loadtest.smart_turn_cost --blas-threads default,1``: one row per
    setting, the library's own count named, and the process left as it was."""
    from threadpoolctl import threadpool_limits

    from loadtest.smart_turn_cost import measure_cost

    threadpool_limits(limits=2, user_api="blas")
    rows = measure_cost({1: model}, [1], rounds=2, blas_threads=[None, 1])
    assert [(row["blas_threads"], row["threads"], row["batch"]) for row in rows] == [
        (2, 1, 1), (1, 1, 1)]
    for row in rows:
        assert row["rounds"] == 2
        assert row["total_cpu_ms_per_request_p50"] >= row["model_cpu_ms_per_request_p50"] > 0
    assert set(_blas_threads()) == {2}
