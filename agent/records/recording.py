"""A call's recording on disk: two raw channels while the call runs, one stereo Ogg
Opus file (left: caller, right: agent, 16 kHz) once it ends.

While the call runs, each channel is a PCM16 file written in place (the agent's at
the offsets ``pipeline.records.audio`` gives, gaps left as silence). The loop only
converts and collects pieces (``add``); every second of audio it hands a batch to
the recordings' one disk thread (``write_batch``), which also opens the files and,
after the call, encodes them: no file operation runs on the event loop. A disk that
falls behind by ``MAX_QUEUED_BYTES`` makes the call's next batches be dropped (and
counted) rather than held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from pipeline.audio import float_to_pcm16
from pipeline.records.audio import RATE, Channel, Piece

logger = logging.getLogger("voiceforge.records")

SUFFIX = ".opus"
BYTES_PER_SAMPLE = 2
ENCODE_CHUNK = RATE  # one second per channel at a time
MAX_CALL_SAMPLES = RATE * 4 * 3600
"""Pieces beyond four hours of call clock are not written (a bound on the files)."""
BATCH_BYTES = RATE * BYTES_PER_SAMPLE
"""About a second of one channel: how much the loop collects before handing it over."""
MAX_QUEUED_BYTES = 16 * 1024 * 1024
"""Handed to the disk thread and not yet written, per call (minutes of audio)."""

Batch = list[tuple[Channel, int, bytes]]


def recording_path(directory: Path, call_id: str) -> Path:
    return directory / f"{call_id}{SUFFIX}"


class CallRecording:
    def __init__(self, directory: Path, call_id: str) -> None:
        self.directory = directory
        self.path = recording_path(directory, call_id)
        self._raw = [directory / f".{call_id}.{channel.name.lower()}.pcm" for channel in Channel]
        self._files: list[BinaryIO] = []
        self.samples = 0
        self._batch: Batch = []
        self._batch_bytes = 0
        self.queued_bytes = 0
        """Handed to the disk thread, not yet written (read on the loop, lowered there)."""
        self.dropped_bytes = 0

    # ---------------------------------------------------------------- the loop

    def add(self, piece: Piece) -> Batch | None:
        """Collect ``piece``; a batch to hand to the disk thread once there is enough."""
        end = piece.offset + len(piece.samples)
        if end > MAX_CALL_SAMPLES:
            return None
        data = float_to_pcm16(piece.samples)
        self._batch.append((piece.channel, piece.offset, data))
        self._batch_bytes += len(data)
        self.samples = max(self.samples, end)
        return self.take() if self._batch_bytes >= BATCH_BYTES else None

    def take(self) -> Batch | None:
        """What is collected, if anything, counted as queued (or dropped: the disk is
        that far behind)."""
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if not batch:
            return None
        if self.queued_bytes + size > MAX_QUEUED_BYTES:
            self.dropped_bytes += size
            return None
        self.queued_bytes += size
        return batch

    # ---------------------------------------------------------- the disk thread

    def write_batch(self, batch: Batch) -> int:
        """Put the pieces in place; the bytes written (the loop lowers ``queued_bytes``)."""
        if not self._files:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._files = [open(path, "w+b") for path in self._raw]
        size = 0
        for channel, offset, data in batch:
            file = self._files[channel]
            file.seek(offset * BYTES_PER_SAMPLE)
            file.write(data)
            size += len(data)
        return size

    def abandon(self) -> None:
        for file in self._files:
            file.close()
        for path in self._raw:
            path.unlink(missing_ok=True)

    def encode(self) -> float:
        """Write the Ogg Opus file (on the disk thread, after every batch); its length
        in ms."""
        if not self._files:  # nothing was ever written: an empty recording
            self.write_batch([])
        for file in self._files:
            file.flush()
        try:
            with av.open(str(self.path), "w", format="ogg") as container:
                stream = container.add_stream("libopus", rate=RATE, layout="stereo")
                pts = 0
                for start in range(0, self.samples, ENCODE_CHUNK):
                    count = min(ENCODE_CHUNK, self.samples - start)
                    channels = [self._read(file, start, count) for file in self._files]
                    frame = av.AudioFrame.from_ndarray(
                        np.stack(channels).reshape(1, -1, order="F"), format="s16",
                        layout="stereo",
                    )
                    frame.sample_rate = RATE
                    frame.pts = pts
                    pts += count
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode(None):
                    container.mux(packet)
        finally:
            self.abandon()
        return self.samples * 1000 / RATE

    @staticmethod
    def _read(file: BinaryIO, start: int, count: int) -> np.ndarray:
        file.seek(start * BYTES_PER_SAMPLE)
        data = file.read(count * BYTES_PER_SAMPLE)
        samples = np.frombuffer(data, dtype="<i2")
        return np.pad(samples, (0, count - len(samples)))  # a channel that ended early


def expire(directory: Path, retention_s: float, now: float | None = None) -> int:
    """Delete recordings older than ``retention_s``; how many went."""
    if not directory.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - retention_s
    removed = 0
    for path in directory.glob(f"*{SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    if removed:
        logger.info("recordings: %d older than the retention period deleted", removed)
    return removed


def delete(directory: Path, call_id: str) -> bool:
    path = recording_path(directory, call_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
