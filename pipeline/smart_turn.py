"""Smart Turn v3.2 on onnxruntime: does the caller's turn sound complete?

The model (Daily's Smart Turn v3.2, BSD-2-Clause, a Whisper-tiny-sized encoder
with a classifier head; ``python -m pipeline.models`` takes it out of the
``pipecat-ai`` wheel) reads the last 8 s of 16 kHz audio as an 80-bin Whisper
log-mel spectrogram, [batch, 80, 800], and answers one probability per row that
the speaker has finished their turn.

The features are what ``transformers.WhisperFeatureExtractor(chunk_length=8)``
computes on an 8 s window, built here from faster-whisper's numpy extractor (a
dependency already): keep the last 8 s, pad zeros on the *left* when shorter
(the model was trained on right-aligned speech), normalise the whole window to
zero mean and unit variance, then the log-mel. tests/pipeline/test_smart_turn.py
checks them against transformers' extractor.

``SmartTurnModel`` is the synchronous model; ``BatchedSmartTurnWorker`` lets
every call of the process share one worker thread, in the style of
pipeline/vad.py: requests that queue while a batch runs go into the next
onnxruntime call together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from pipeline.errors import ConfigurationError, EngineError, ModelLoadError
from pipeline.onnx_int8 import SHIPPED, exact_int8_session
from pipeline.thread_worker import BatchedThreadWorker

SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MEL_BINS = 80
HOP_SAMPLES = 160
N_FFT = 400
FEATURE_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES
"""800: Whisper drops the last of the 801 centred STFT frames."""
_NORMALISE_EPSILON = 1e-7
"""What transformers adds to the variance before the square root."""

FloatArray = npt.NDArray[np.float32]

InferenceObserver = Callable[[int, float], None]
"""Told after each model call that answered: how many requests it served and the
seconds it took on the worker thread, features included (agent/metrics.py turns
this into ``voiceforge_smart_turn_inference_seconds``)."""

logger = logging.getLogger(__name__)


def last_window(audio: FloatArray) -> FloatArray:
    """The last 8 s of ``audio`` (16 kHz mono), zero-padded on the left to 8 s."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(samples) >= WINDOW_SAMPLES:
        return samples[-WINDOW_SAMPLES:].copy()
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - len(samples) :] = samples
    return window


class SmartTurnFeatures:
    """Whisper log-mel features of the model's 8 s window, float32 [80, 800]."""

    def __init__(self) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        self._extractor = FeatureExtractor(
            feature_size=MEL_BINS,
            sampling_rate=SAMPLE_RATE,
            hop_length=HOP_SAMPLES,
            chunk_length=WINDOW_SECONDS,
            n_fft=N_FFT,
        )

    def __call__(self, audio: FloatArray) -> FloatArray:
        window = last_window(audio).astype(np.float64)
        # Over the padded window, as the model was trained: the zeros count.
        normalised = (window - window.mean()) / math.sqrt(window.var() + _NORMALISE_EPSILON)
        # padding=0: faster-whisper appends 160 zeros for its own 30 s decoding;
        # the 8 s window is already the length the model wants.
        features = self._extractor(normalised.astype(np.float32), padding=0)
        result = np.asarray(features, dtype=np.float32)
        if result.shape != (MEL_BINS, FEATURE_FRAMES):
            raise RuntimeError(f"Smart Turn features have shape {result.shape}")
        return result


def default_model_path() -> Path:
    """The verified ONNX file in the VoiceForge cache, fetched once if missing."""
    from pipeline import models

    return models.ensure_smart_turn_model(progress=None)


def _probe_clips() -> list[FloatArray]:
    """Noise and a chord of tones, 3 s each: loud, varied features on which a
    saturating int8 kernel answers differently (``exact_int8_session``)."""
    rng = np.random.default_rng(0)
    time_s = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tones = (220.0, 330.0, 1250.0, 3100.0)
    chord = np.sum([np.sin(2 * np.pi * hz * time_s) for hz in tones], axis=0)
    return [
        (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32),
        (0.1 * chord).astype(np.float32),
    ]


class SmartTurnModel:
    """Smart Turn v3.2: audio windows in, end-of-turn probabilities out.

    ``threads`` is onnxruntime's intra-op thread count. One is the default: on a
    small machine the VAD, STT, LLM and TTS need the other cores, and batching,
    not threads, is what serves many calls (loadtest/smart_turn_cost.py
    measures both).
    """

    def __init__(self, model_path: Path | None = None, *, threads: int = 1) -> None:
        if threads < 1:
            raise ConfigurationError(f"SmartTurnModel needs threads >= 1, got {threads}")
        self.model_path: Path = model_path if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise ConfigurationError(f"Smart Turn model file not found: {self.model_path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Pool threads would busy-wait after each call, taking a core the other
        # engines need; a call every few hundred ms gains nothing from spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the Smart Turn model {self.model_path}: {exc}"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != "input_features":
            raise ModelLoadError(
                f"{self.model_path} is not a Smart Turn v3 model (inputs: "
                f"{[model_input.name for model_input in inputs]})"
            )
        self._features = SmartTurnFeatures()
        probe = {"input_features": np.stack([self._features(clip) for clip in _probe_clips()])}
        try:
            self._session, self.int8_kernels = exact_int8_session(
                self._session, self.model_path, options, probe
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not check the Smart Turn model's int8 kernels: {exc}"
            ) from exc
        if self.int8_kernels != SHIPPED:
            logger.info(
                "Smart Turn runs with unsigned int8 weights: this CPU's signed int8 "
                "kernels saturate (no VNNI) and would change its answers"
            )

    int8_kernels: str
    """``"u8s8"``: the model as shipped; ``"u8u8"``: its weights made unsigned,
    because this CPU's u8s8 kernels saturate (pipeline/onnx_int8.py)."""

    def features(self, audio: FloatArray) -> FloatArray:
        return self._features(audio)

    def run_features(self, features: FloatArray) -> FloatArray:
        """Probabilities for a [batch, 80, 800] float32 feature array."""
        if features.ndim != 3 or features.shape[1:] != (MEL_BINS, FEATURE_FRAMES):
            raise ValueError(
                f"features must have shape (B, {MEL_BINS}, {FEATURE_FRAMES}), got {features.shape}"
            )
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        outputs: list[Any] = self._session.run(
            None, {"input_features": np.ascontiguousarray(features, dtype=np.float32)}
        )
        return np.asarray(outputs[0], dtype=np.float32).reshape(features.shape[0])

    def predict_batch(self, audios: Sequence[FloatArray]) -> FloatArray:
        """The probability that each 16 kHz clip ends a complete turn, in one model call."""
        if not audios:
            return np.zeros(0, dtype=np.float32)
        return self.run_features(np.stack([self._features(audio) for audio in audios]))

    def predict(self, audio: FloatArray) -> float:
        return float(self.predict_batch([audio])[0])


@dataclass(slots=True)
class _Request:
    audio: FloatArray
    future: asyncio.Future[float]


class BatchedSmartTurnWorker(BatchedThreadWorker):
    """One worker serves every call: requests queued while a batch ran are
    answered by ONE onnxruntime call (features included, on the worker thread, so
    the event loop never computes a spectrogram).

    The queue is bounded and never waited on: a full queue fails the request at
    once (transient ``EngineError``), and the end-of-turn policy falls back to
    the silence rule for that pause. An answer that comes too late is worth
    nothing, so queueing behind an overload would only add cost.
    """

    thread_name = "smart-turn"

    def __init__(self, model: SmartTurnModel, *, max_batch: int = 8, max_pending: int = 64) -> None:
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be >= 1, got {max_pending}")
        super().__init__()
        self.model = model
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(max_pending)
        self.batches_run = 0
        self.requests_run = 0
        self.requests_refused = 0
        self._observers: list[InferenceObserver] = []

    def add_observer(self, observer: InferenceObserver) -> None:
        """Call ``observer`` after every model call (the server's metrics do)."""
        self._observers.append(observer)

    def remove_observer(self, observer: InferenceObserver) -> None:
        """Stop calling ``observer``; one the worker does not have is ignored."""
        if observer in self._observers:
            self._observers.remove(observer)

    async def predict(self, audio: FloatArray) -> float:
        """Probability that the turn ending ``audio`` (16 kHz; the last 8 s count)
        is complete. Raises EngineError when the worker is stopped or full."""
        if not self._running:
            raise EngineError("the Smart Turn worker is not running", transient=False)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(last_window(audio), future))
        except asyncio.QueueFull:
            self.requests_refused += 1
            raise EngineError(
                f"the Smart Turn worker has {self._queue.maxsize} requests queued", transient=True
            ) from None
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [request for request in batch if not request.future.done()]
            if live:
                await self._evaluate(live)

    async def _evaluate(self, batch: list[_Request]) -> None:
        assert self._executor is not None
        audios = [request.audio for request in batch]
        loop = asyncio.get_running_loop()
        try:
            probabilities, seconds = await loop.run_in_executor(
                self._executor, self._timed_predict, audios
            )
        except asyncio.CancelledError:
            _fail(batch, "the Smart Turn worker stopped during this request", transient=False)
            raise
        except Exception as exc:
            message = f"Smart Turn failed on a batch of {len(batch)}: {exc!r}"
            _fail(batch, message, transient=True, cause=exc)
            return
        self.batches_run += 1
        self.requests_run += len(batch)
        for request, probability in zip(batch, probabilities, strict=True):
            if not request.future.done():
                request.future.set_result(float(probability))
        for observer in list(self._observers):
            try:
                observer(len(batch), seconds)
            except Exception:
                # A broken metric must not stop end-of-turn decisions.
                logger.exception("a Smart Turn inference observer failed")

    def _timed_predict(self, audios: list[FloatArray]) -> tuple[FloatArray, float]:
        """On the worker thread: the model's answer and its wall time there."""
        started = time.perf_counter()
        probabilities = self.model.predict_batch(audios)
        return probabilities, time.perf_counter() - started

    def _fail_waiting(self) -> None:
        queued: list[_Request] = []
        while not self._queue.empty():
            queued.append(self._queue.get_nowait())
        _fail(queued, "the Smart Turn worker stopped before this request ran", transient=False)


def _fail(
    requests: Sequence[_Request],
    message: str,
    *,
    transient: bool,
    cause: BaseException | None = None,
) -> None:
    for request in requests:
        if not request.future.done():
            error = EngineError(message, transient=transient)
            error.__cause__ = cause
            request.future.set_exception(error)
