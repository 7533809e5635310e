"""A call's recording on disk: two raw channels while the call runs, one stereo Ogg
Opus file (left: caller, right: agent, 16 kHz) once it ends.

While the call runs, each channel is a PCM16 file written in place (the agent's at
the offsets ``pipeline.records.audio`` gives, gaps left as silence) through a
buffered writer: a few hundred bytes per frame into memory, a page-cache write every
64 KiB, nothing that waits on a disk. The encoding runs in a thread after the call.
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


def recording_path(directory: Path, call_id: str) -> Path:
    return directory / f"{call_id}{SUFFIX}"


class CallRecording:
    def __init__(self, directory: Path, call_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = recording_path(directory, call_id)
        self._raw = [directory / f".{call_id}.{channel.name.lower()}.pcm" for channel in Channel]
        self._files: list[BinaryIO] = [open(path, "w+b", buffering=64 * 1024)
                                       for path in self._raw]
        self.samples = 0

    def write(self, piece: Piece) -> None:
        end = piece.offset + len(piece.samples)
        if end > MAX_CALL_SAMPLES or self._files[0].closed:
            return
        file = self._files[piece.channel]
        file.seek(piece.offset * BYTES_PER_SAMPLE)
        file.write(float_to_pcm16(piece.samples))
        self.samples = max(self.samples, end)

    def abandon(self) -> None:
        for file in self._files:
            file.close()
        for path in self._raw:
            path.unlink(missing_ok=True)

    def encode(self) -> float:
        """Write the Ogg Opus file (blocking: run it in a thread); its length in ms."""
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
