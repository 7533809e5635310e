"""Compressed audio in and out, with PyAV (FFmpeg's codecs): the REST audio API's
encoders (``/v1/audio/speech``) and its upload decoder (``/v1/audio/transcriptions``,
voice references).

The encoder is streamed: each chunk of float samples comes back as the container
bytes it completes, so a client plays the start of a reply while the rest is still
being synthesised. Writing to a sink that cannot seek makes FFmpeg leave what it
would patch at the end as "unknown": a WAV's sizes are 0xFFFFFFFF, an MP3 has no
Xing header; every player takes both.

The decoder stops at ``max_seconds`` of decoded audio: a small compressed upload
cannot make the server decode hours of it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, StreamResampler, resample
from pipeline.engines.base import FloatAudio
from pipeline.errors import AudioFormatError

SPEECH_SAMPLE_RATE = 24_000
"""What ``/v1/audio/speech`` sends in every format, as OpenAI's does (``pcm`` is raw
24 kHz 16-bit mono by their documentation, and clients assume it)."""


@dataclass(frozen=True, slots=True)
class OutputFormat:
    container: str
    codec: str
    sample_format: str
    media_type: str
    options: tuple[tuple[str, str], ...] = ()


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "wav": OutputFormat("wav", "pcm_s16le", "s16", "audio/wav"),
    "mp3": OutputFormat("mp3", "libmp3lame", "s16p", "audio/mpeg"),
    # Ogg holds a page up to a second by default: 20 ms pages stream each chunk at once.
    "opus": OutputFormat("ogg", "libopus", "s16", "audio/ogg", (("page_duration", "20000"),)),
    "aac": OutputFormat("adts", "aac", "fltp", "audio/aac"),
    "flac": OutputFormat("flac", "flac", "s16", "audio/flac"),
    "pcm": OutputFormat("s16le", "pcm_s16le", "s16", "audio/pcm"),
}

MIN_SPEED = 0.25
MAX_SPEED = 4.0
_ATEMPO_MIN, _ATEMPO_MAX = 0.5, 2.0
"""One atempo filter's range; speeds beyond it chain two."""


class _Sink:
    """What the muxer writes to; no ``seek``, so nothing is patched afterwards."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _atempo_steps(speed: float) -> list[float]:
    steps: list[float] = []
    while speed > _ATEMPO_MAX:
        steps.append(_ATEMPO_MAX)
        speed /= _ATEMPO_MAX
    while speed < _ATEMPO_MIN:
        steps.append(_ATEMPO_MIN)
        speed /= _ATEMPO_MIN
    steps.append(speed)
    return steps


class SpeechEncoder:
    """Float chunks at ``input_rate`` in, ``fmt`` bytes at 24 kHz out, chunk by chunk.

    ``speed`` changes the tempo, not the pitch (FFmpeg's ``atempo``). Not thread
    safe; one encoder per response.
    """

    def __init__(self, fmt: str, input_rate: int, *, speed: float = 1.0) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise AudioFormatError(f"unknown audio format {fmt!r}", transient=False)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise AudioFormatError(
                f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {speed}", transient=False
            )
        self.format = OUTPUT_FORMATS[fmt]
        self.media_type = self.format.media_type
        self._resampler = StreamResampler(input_rate, SPEECH_SAMPLE_RATE)
        self._sink = _Sink()
        self._container: Any = av.open(
            self._sink, mode="w", format=self.format.container, options=dict(self.format.options)
        )
        stream: Any = self._container.add_stream(self.format.codec, rate=SPEECH_SAMPLE_RATE)
        stream.layout = "mono"
        self._stream = stream
        self._converter = av.AudioResampler(
            format=self.format.sample_format, layout="mono", rate=SPEECH_SAMPLE_RATE
        )
        self._tempo: Any = None
        if abs(speed - 1.0) > 1e-6:
            self._tempo = self._tempo_graph(speed)
        self._pts = 0
        self._closed = False

    @staticmethod
    def _tempo_graph(speed: float) -> Any:
        graph = av.filter.Graph()
        node = graph.add_abuffer(
            format="flt", sample_rate=SPEECH_SAMPLE_RATE, layout="mono",
            time_base=Fraction(1, SPEECH_SAMPLE_RATE),
        )
        for step in _atempo_steps(speed):
            tempo = graph.add("atempo", f"{step:.6f}")
            node.link_to(tempo)
            node = tempo
        sink = graph.add("abuffersink")
        node.link_to(sink)
        graph.configure()
        return graph

    def encode(self, audio: FloatAudio) -> bytes:
        """The bytes this chunk completes (possibly none: codecs work in frames)."""
        if self._closed:
            raise AudioFormatError("the encoder is finished", transient=False)
        self._push(self._resampler.process(audio))
        return self._sink.take()

    def finish(self) -> bytes:
        """The rest: buffered samples, the codec's last frames, the container's trailer."""
        if self._closed:
            return b""
        self._push(self._resampler.flush(), last=True)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._closed = True
        return self._sink.take()

    def close(self) -> None:
        """Drop the encoder without finishing it (the client went away)."""
        if not self._closed:
            self._closed = True
            self._container.close()

    def _push(self, samples: FloatAudio, *, last: bool = False) -> None:
        frames = [self._frame(samples)] if samples.size else []
        if self._tempo is not None:
            frames = self._through_tempo(frames, last=last)
        for frame in frames:
            for converted in self._converter.resample(frame):
                for packet in self._stream.encode(converted):
                    self._container.mux(packet)
        if last:
            for converted in self._converter.resample(None):
                for packet in self._stream.encode(converted):
                    self._container.mux(packet)

    def _frame(self, samples: FloatAudio) -> Any:
        clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(clipped[None, :], format="flt", layout="mono")
        frame.sample_rate = SPEECH_SAMPLE_RATE
        frame.pts = self._pts
        self._pts += int(samples.size)
        return frame

    def _through_tempo(self, frames: list[Any], *, last: bool) -> list[Any]:
        out: list[Any] = []
        for frame in frames:
            self._tempo.push(frame)
            out.extend(self._pull_tempo())
        if last:
            self._tempo.push(None)
            out.extend(self._pull_tempo())
        for frame in out:
            frame.pts = None  # the encoder numbers its own input
        return out

    def _pull_tempo(self) -> list[Any]:
        pulled: list[Any] = []
        while True:
            try:
                pulled.append(self._tempo.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return pulled


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    samples: FloatAudio
    """Mono float32 at ``sample_rate``."""
    sample_rate: int
    source_rate: int
    """The upload's own rate."""
    container: str
    codec: str

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


def decode_audio(
    data: bytes, *, max_seconds: float, sample_rate: int | None = PIPELINE_SAMPLE_RATE
) -> DecodedAudio:
    """Decode the first audio stream of a file in any container and codec FFmpeg reads,
    mixed to mono and resampled to ``sample_rate`` (None: the file's own).

    Raises a permanent AudioFormatError when it is not audio, has no audio stream,
    cannot be decoded, or runs longer than ``max_seconds``.
    """
    if not data:
        raise AudioFormatError("the file is empty", transient=False)
    try:
        container: Any = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as error:
        raise AudioFormatError(
            f"not an audio file FFmpeg can read ({error})", transient=False
        ) from None
    with container:
        if not container.streams.audio:
            raise AudioFormatError("the file has no audio stream", transient=False)
        stream = container.streams.audio[0]
        source_rate = int(stream.codec_context.sample_rate or 0)
        if source_rate <= 0:
            raise AudioFormatError("the audio stream has no sample rate", transient=False)
        to_mono = av.AudioResampler(format="flt", layout="mono", rate=source_rate)
        limit = int(max_seconds * source_rate)
        parts: list[FloatAudio] = []
        decoded = 0
        try:
            for frame in container.decode(stream):
                for mono in to_mono.resample(frame):
                    samples = np.asarray(mono.to_ndarray(), dtype=np.float32).reshape(-1)
                    decoded += samples.size
                    if decoded > limit:
                        raise AudioFormatError(
                            f"the audio is longer than {max_seconds:g} s", transient=False
                        )
                    parts.append(samples)
        except av.error.FFmpegError as error:
            raise AudioFormatError(
                f"the audio cannot be decoded ({error})", transient=False
            ) from None
        codec = stream.codec_context.name
        container_name = container.format.name
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioFormatError("the audio holds samples that are not numbers", transient=False)
    rate = sample_rate or source_rate
    return DecodedAudio(
        samples=resample(audio, source_rate, rate), sample_rate=rate, source_rate=source_rate,
        container=container_name, codec=codec,
    )
