"""Silero VAD on onnxruntime, batched across every session of the process.

The model is a small recurrent network: each 32 ms chunk needs the stream's
recurrent state and the last 64 samples of its previous chunk. Nothing else ties
streams together, so chunks from many streams can share one onnxruntime call;
one call for 40 chunks costs far less than 40 calls, which is what lets one CPU
core serve many concurrent sessions.

``SileroVAD`` is the synchronous model (``run_batch``); ``BatchedVADWorker`` is
the asyncio glue that gathers chunks submitted by many ``VADStream``s into
batches. We run the ONNX file shipped in the ``silero-vad`` package directly
rather than the package's own wrapper, which imports torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from pipeline.errors import ConfigurationError, EngineError, ModelLoadError
from pipeline.thread_worker import BatchedThreadWorker

FRAME_SAMPLES = 512
"""Samples per VAD chunk: 32 ms at 16 kHz, the only chunk size the 16 kHz model accepts."""

FRAME_MS = 32.0
"""Duration of one chunk in milliseconds."""

SAMPLE_RATE = 16000
CONTEXT_SAMPLES = 64
"""Samples of the previous chunk the model sees in front of each chunk."""
STATE_SHAPE_PER_STREAM = (2, 128)
"""The recurrent state of one stream; batched, the model wants (2, B, 128)."""

FloatArray = npt.NDArray[np.float32]


def default_model_path() -> Path:
    """The ONNX file shipped inside the installed ``silero-vad`` package.

    ``find_spec`` locates the package without executing it: importing
    ``silero_vad`` imports torch, which costs seconds and hundreds of MB.
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the silero-vad package is not installed; install it (pip install silero-vad) "
            "or pass model_path to SileroVAD"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "silero_vad.onnx"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(loc) / "data") for loc in spec.submodule_search_locations)
    raise ConfigurationError(
        f"silero_vad.onnx not found in the silero-vad package (searched {searched}); "
        "reinstall silero-vad or pass model_path to SileroVAD"
    )


class VADState:
    """One stream's recurrent state and the tail of its previous chunk.

    Both start at zero, which is what the model was trained to see at the start
    of a stream.
    """

    __slots__ = ("context", "recurrent")

    def __init__(self) -> None:
        self.recurrent: FloatArray = np.zeros(STATE_SHAPE_PER_STREAM, dtype=np.float32)
        self.context: FloatArray = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def reset(self) -> None:
        """Forget the stream's past, e.g. after a long gap in its audio."""
        self.recurrent.fill(0.0)
        self.context.fill(0.0)


class SileroVAD:
    """The Silero VAD model at 16 kHz: chunks of many streams in, probabilities out.

    Thread-safe for concurrent ``run_batch`` calls on *different* states
    (onnxruntime sessions are); a state must not be in two calls at once.
    """

    def __init__(self, model_path: Path | None = None, *, threads: int = 1) -> None:
        if threads < 1:
            raise ConfigurationError(f"SileroVAD needs threads >= 1, got {threads}")
        self.model_path: Path = model_path if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise ConfigurationError(f"Silero VAD model file not found: {self.model_path}")
        options = onnxruntime.SessionOptions()
        # The batch is the parallelism we want; inter-op threads only add wake-ups.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the Silero VAD model {self.model_path}: {exc}"
            ) from exc
        self._sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def new_state(self) -> VADState:
        return VADState()

    def run_batch(self, chunks: FloatArray, states: Sequence[VADState]) -> FloatArray:
        """Speech probability of each row of ``chunks`` (B, 512); updates ``states`` in place.

        Row ``i`` belongs to the stream whose state is ``states[i]``; the states
        are only written back once the model call has succeeded, so a failed
        call leaves every stream as it was.
        """
        if chunks.ndim != 2 or chunks.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"chunks must have shape (B, {FRAME_SAMPLES}), got {chunks.shape}")
        if len(states) != chunks.shape[0]:
            raise ValueError(f"{chunks.shape[0]} chunks but {len(states)} states")
        if not states:
            return np.zeros(0, dtype=np.float32)
        samples = np.asarray(chunks, dtype=np.float32)
        contexts = np.stack([state.context for state in states])
        model_input = np.ascontiguousarray(np.concatenate([contexts, samples], axis=1))
        recurrent = np.stack([state.recurrent for state in states], axis=1)
        outputs: list[Any] = self._session.run(
            None, {"input": model_input, "state": recurrent, "sr": self._sample_rate}
        )
        probabilities = np.asarray(outputs[0], dtype=np.float32).reshape(len(states))
        new_recurrent = np.asarray(outputs[1], dtype=np.float32)
        for index, state in enumerate(states):
            state.recurrent = new_recurrent[:, index, :].copy()
            state.context = samples[index, -CONTEXT_SAMPLES:].copy()
        return probabilities


@dataclass(slots=True)
class _Pending:
    stream: VADStream
    state: VADState
    chunk: FloatArray
    future: asyncio.Future[float]


class BatchedVADWorker(BatchedThreadWorker):
    """One worker serves every session: chunks submitted by many streams while
    the previous batch ran are evaluated in ONE onnxruntime call.

    Latency stays one model call at low load and the batch grows with load: the
    worker never waits to fill a batch, it takes whatever queued up while the
    previous call ran. The model runs on a dedicated thread so the event loop
    never blocks and batches never overlap (a stream's chunks must run in order).
    """

    thread_name = "vad"

    def __init__(self, vad: SileroVAD, *, max_batch: int = 64, max_pending: int = 0) -> None:
        """``max_pending`` bounds the queue (default ``8 * max_batch``); a full
        queue makes ``VADStream.process`` wait, which is the backpressure."""
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        super().__init__()
        self.vad = vad
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_pending or 8 * max_batch)
        # Chunks that arrived while an earlier chunk of the same stream was
        # already in the batch; never more than max_batch, as each came from a
        # batch's worth of candidates.
        self._deferred: list[_Pending] = []
        self.batches_run = 0
        self.chunks_run = 0

    def open_stream(self) -> VADStream:
        return VADStream(self)

    async def _submit(self, stream: VADStream, chunk: FloatArray) -> float:
        if not self._running:
            raise EngineError("the VAD worker is not running", transient=False)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(stream, stream.state, chunk, future))
        if not self._running:
            # stop() ran while we waited for room in the queue.
            self._fail_waiting()
        return await future

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._evaluate(batch)

    async def _next_batch(self) -> list[_Pending]:
        if not self._deferred:
            self._deferred.append(await self._queue.get())
        candidates = self._deferred
        self._deferred = []
        while len(candidates) < self.max_batch and not self._queue.empty():
            candidates.append(self._queue.get_nowait())
        batch: list[_Pending] = []
        streams_in_batch: set[int] = set()
        for item in candidates:
            if item.future.done():  # the caller was cancelled; don't advance its state
                continue
            key = id(item.stream)
            if key in streams_in_batch or len(batch) >= self.max_batch:
                # Same stream twice: the second chunk needs the state the first
                # one produces, so it waits for the next batch (order kept).
                self._deferred.append(item)
            else:
                streams_in_batch.add(key)
                batch.append(item)
        return batch

    async def _evaluate(self, batch: list[_Pending]) -> None:
        assert self._executor is not None
        chunks = np.stack([item.chunk for item in batch])
        states = [item.state for item in batch]
        loop = asyncio.get_running_loop()
        try:
            probabilities = await loop.run_in_executor(
                self._executor, self.vad.run_batch, chunks, states
            )
        except asyncio.CancelledError:
            _fail(batch, "the VAD worker stopped while evaluating this chunk", transient=False)
            raise
        except Exception as exc:
            message = f"Silero VAD failed on a batch of {len(batch)} chunks: {exc!r}"
            _fail(batch, message, transient=True, cause=exc)
            return
        self.batches_run += 1
        self.chunks_run += len(batch)
        for item, probability in zip(batch, probabilities, strict=True):
            if not item.future.done():
                item.future.set_result(float(probability))

    def _fail_waiting(self) -> None:
        pending, self._deferred = self._deferred, []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        _fail(pending, "the VAD worker stopped before evaluating this chunk", transient=False)


def _fail(
    items: Sequence[_Pending],
    message: str,
    *,
    transient: bool,
    cause: BaseException | None = None,
) -> None:
    # One exception per future: an instance shared by several awaiting tasks
    # would collect all their tracebacks.
    for item in items:
        if not item.future.done():
            error = EngineError(message, transient=transient)
            error.__cause__ = cause
            item.future.set_exception(error)


class VADStream:
    """One audio stream's handle on a ``BatchedVADWorker``."""

    def __init__(self, worker: BatchedVADWorker) -> None:
        self._worker = worker
        self.state = worker.vad.new_state()
        self.closed = False

    async def process(self, chunk: FloatArray) -> float:
        """Speech probability of one 512-sample float32 chunk (32 ms at 16 kHz).

        Await each call before the next: chunks submitted concurrently on one
        stream are still evaluated in submission order, but one per batch. A
        caller cancelled before its chunk reaches the model leaves the stream's
        state as it was; once the batch is running, the state advances anyway.
        """
        if self.closed:
            raise RuntimeError("process() on a closed VADStream")
        if chunk.shape != (FRAME_SAMPLES,):
            raise ValueError(f"a VAD chunk is {FRAME_SAMPLES} samples, got shape {chunk.shape}")
        return await self._worker._submit(self, np.asarray(chunk, dtype=np.float32))

    def reset(self) -> None:
        """Start from a fresh state; chunks already submitted keep the old one."""
        self.state = self._worker.vad.new_state()

    def close(self) -> None:
        self.closed = True
