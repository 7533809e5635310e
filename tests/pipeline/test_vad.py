"""Silero VAD on real audio: the batched model, and the asyncio worker that batches."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.errors import ConfigurationError, EngineError
from pipeline.vad import (
    FRAME_SAMPLES,
    BatchedVADWorker,
    SileroVAD,
    VADState,
    default_model_path,
)
from tests.speech import espeak_available, silence, speak

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

FloatArray = npt.NDArray[np.float32]


def frames(audio: FloatArray, count: int) -> FloatArray:
    """The first ``count`` 512-sample chunks of ``audio``, zero-padded at the end."""
    padded = np.zeros(count * FRAME_SAMPLES, dtype=np.float32)
    used = min(len(audio), len(padded))
    padded[:used] = audio[:used]
    return padded.reshape(count, FRAME_SAMPLES)


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def streams() -> list[FloatArray]:
    """Four different streams of 60 chunks (1.92 s): two voices' worth of speech,
    noise and digital silence."""
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 0.05, 60 * FRAME_SAMPLES).astype(np.float32)
    audio = [
        speak("Hello there, could you tell me the weather for tomorrow?"),
        speak("Seven green bottles standing on the wall.", words_per_minute=200),
        noise,
        silence(2.0),
    ]
    return [frames(a, 60) for a in audio]


def run_alone(vad: SileroVAD, chunks: FloatArray) -> FloatArray:
    state = vad.new_state()
    return np.array([vad.run_batch(chunk[None, :], [state])[0] for chunk in chunks])


def test_default_model_path_is_the_packaged_onnx_file() -> None:
    path = default_model_path()
    assert path.name == "silero_vad.onnx"
    assert path.is_file()


def test_loading_the_vad_imports_neither_torch_nor_silero_vad() -> None:
    code = (
        "import sys; from pipeline.vad import SileroVAD; SileroVAD(); "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'silero_vad' not in sys.modules, 'silero_vad'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_missing_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match="silero-vad package is not installed"):
        default_model_path()


def test_missing_model_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="model file not found"):
        SileroVAD(tmp_path / "absent.onnx")


def test_batched_probabilities_equal_single_stream_runs(
    vad: SileroVAD, streams: list[FloatArray]
) -> None:
    """Bit-for-bit equal (assert_array_equal): each row of a batch goes through
    the same single-threaded CPU kernels as a batch of one."""
    alone = np.stack([run_alone(vad, chunks) for chunks in streams])
    states = [vad.new_state() for _ in streams]
    together = np.stack(
        [vad.run_batch(np.stack([s[i] for s in streams]), states) for i in range(60)], axis=1
    )
    assert together.dtype == np.float32
    np.testing.assert_array_equal(together, alone)


def test_speech_is_detected_and_silence_is_not(vad: SileroVAD, streams: list[FloatArray]) -> None:
    first_speech, second_speech, _noise, digital_silence = (run_alone(vad, s) for s in streams)
    assert first_speech.max() > 0.5
    assert second_speech.max() > 0.5
    assert digital_silence.max() < 0.1


def test_run_batch_rejects_bad_shapes(vad: SileroVAD) -> None:
    with pytest.raises(ValueError, match="shape"):
        vad.run_batch(np.zeros((1, 256), dtype=np.float32), [vad.new_state()])
    with pytest.raises(ValueError, match="2 chunks but 1 states"):
        vad.run_batch(np.zeros((2, FRAME_SAMPLES), dtype=np.float32), [vad.new_state()])


def test_state_reset_forgets_the_past(vad: SileroVAD, streams: list[FloatArray]) -> None:
    state = vad.new_state()
    for chunk in streams[0][:20]:
        vad.run_batch(chunk[None, :], [state])
    state.reset()
    fresh = VADState()
    again = vad.run_batch(streams[1][:1], [state])
    expected = vad.run_batch(streams[1][:1], [fresh])
    np.testing.assert_array_equal(again, expected)


async def process_all(worker: BatchedVADWorker, chunks: FloatArray) -> FloatArray:
    stream = worker.open_stream()
    try:
        return np.array([await stream.process(chunk) for chunk in chunks], dtype=np.float32)
    finally:
        stream.close()


async def test_worker_batches_concurrent_streams(vad: SileroVAD, streams: list[FloatArray]) -> None:
    alone = np.stack([run_alone(vad, chunks) for chunks in streams])
    worker = BatchedVADWorker(vad, max_batch=64)
    await worker.start()
    try:
        results = await asyncio.gather(*(process_all(worker, chunks) for chunks in streams))
    finally:
        await worker.stop()
    np.testing.assert_array_equal(np.stack(results), alone)
    assert worker.chunks_run == 4 * 60
    assert worker.batches_run < worker.chunks_run


async def test_worker_never_puts_two_chunks_of_one_stream_in_a_batch(
    vad: SileroVAD, streams: list[FloatArray]
) -> None:
    expected = run_alone(vad, streams[0][:3])
    worker = BatchedVADWorker(vad)
    await worker.start()
    try:
        stream = worker.open_stream()
        # Submitted concurrently, evaluated in submission order, one per batch.
        results = await asyncio.gather(*(stream.process(chunk) for chunk in streams[0][:3]))
    finally:
        await worker.stop()
    np.testing.assert_array_equal(np.array(results, dtype=np.float32), expected)
    assert worker.batches_run == 3


async def test_worker_respects_max_batch(vad: SileroVAD, streams: list[FloatArray]) -> None:
    worker = BatchedVADWorker(vad, max_batch=2)
    await worker.start()
    try:
        await asyncio.gather(*(process_all(worker, chunks[:5]) for chunks in streams))
    finally:
        await worker.stop()
    assert worker.chunks_run == 20
    assert worker.batches_run >= 10


async def test_stream_reset_starts_from_a_fresh_state(
    vad: SileroVAD, streams: list[FloatArray]
) -> None:
    worker = BatchedVADWorker(vad)
    await worker.start()
    try:
        stream = worker.open_stream()
        for chunk in streams[0][:10]:
            await stream.process(chunk)
        stream.reset()
        after_reset = await stream.process(streams[1][0])
    finally:
        await worker.stop()
    assert after_reset == run_alone(vad, streams[1][:1])[0]


async def test_stop_leaves_no_task_and_refuses_new_chunks(
    vad: SileroVAD, streams: list[FloatArray]
) -> None:
    worker = BatchedVADWorker(vad)
    await worker.start()
    stream = worker.open_stream()
    await stream.process(streams[0][0])
    await worker.stop()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(EngineError, match="not running"):
        await stream.process(streams[0][1])


class FailOnceVAD(SileroVAD):
    """The real model, whose first call raises."""

    failed = False

    def run_batch(self, chunks: FloatArray, states: Sequence[VADState]) -> FloatArray:
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return super().run_batch(chunks, states)


async def test_model_error_reaches_the_caller_and_the_worker_keeps_serving(
    streams: list[FloatArray],
) -> None:
    vad = FailOnceVAD()
    worker = BatchedVADWorker(vad)
    await worker.start()
    try:
        stream = worker.open_stream()
        with pytest.raises(EngineError, match="injected failure") as caught:
            await stream.process(streams[0][0])
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert caught.value.transient
        # The failed call left the state untouched: the retry sees a fresh stream.
        probability = await stream.process(streams[0][0])
    finally:
        await worker.stop()
    assert probability == run_alone(vad, streams[0][:1])[0]


class BlockingVAD(SileroVAD):
    """The real model, whose calls wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def run_batch(self, chunks: FloatArray, states: Sequence[VADState]) -> FloatArray:
        self.entered.set()
        self.release.wait(timeout=30)
        return super().run_batch(chunks, states)


async def test_stop_fails_the_chunks_in_flight_and_queued(streams: list[FloatArray]) -> None:
    vad = BlockingVAD()
    worker = BatchedVADWorker(vad)
    await worker.start()
    first, second = worker.open_stream(), worker.open_stream()
    in_flight = asyncio.create_task(first.process(streams[0][0]))
    await asyncio.to_thread(vad.entered.wait, 30)
    queued = asyncio.create_task(second.process(streams[1][0]))
    await asyncio.sleep(0)  # let it reach the queue
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    vad.release.set()
    await stopping
    for task in (in_flight, queued):
        with pytest.raises(EngineError, match="VAD worker stopped"):
            await task
    assert asyncio.all_tasks() == {asyncio.current_task()}
