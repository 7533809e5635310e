"""G.711 µ-law with numpy (``audioop`` is gone in Python 3.13).

The encoder is the Sun reference implementation of ITU-T G.711 (the one audioop,
sox and ffmpeg follow): 14-bit magnitude, bias 33, eight segments, bits inverted
on the wire. Decoding is a 256-entry table built
from the same formula, so ``decode(encode(x))`` is the G.711 quantisation of ``x``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.engines.base import FloatAudio

_BIAS = 0x21
"""Added to the 14-bit magnitude (0x84 on the 16-bit scale)."""
_CLIP = 8159
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_DECODE = _decode_table()


def encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """PCM16 samples to µ-law bytes, one per sample (the Sun ``linear2ulaw``)."""
    value = pcm.astype(np.int32) >> 2  # 14-bit, floor like C's arithmetic shift
    negative = value < 0
    magnitude = np.minimum(np.where(negative, -value, value), _CLIP) + _BIAS
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude, side="left").astype(np.int32)
    mantissa = (magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F
    codes = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    codes ^= np.where(negative, 0x7F, 0xFF)
    return codes.astype(np.uint8).tobytes()


def decode(data: bytes) -> npt.NDArray[np.int16]:
    """µ-law bytes to PCM16 samples."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def encode_float(audio: FloatAudio) -> bytes:
    """Float samples in [-1, 1] to µ-law bytes."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    return encode(pcm)


def decode_float(data: bytes) -> FloatAudio:
    """µ-law bytes to float32 samples in [-1, 1]."""
    return (decode(data).astype(np.float32) / 32768.0).astype(np.float32)
