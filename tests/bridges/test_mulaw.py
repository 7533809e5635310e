"""µ-law against G.711 reference values (the Sun reference coder, as audioop had it)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import mulaw

# (linear PCM16, µ-law code): G.711 µ-law, bits inverted on the wire.
ENCODE_REFERENCE = [
    (0, 0xFF),
    (1, 0xFF),
    (-1, 0x7E),
    (8, 0xFE),
    (-8, 0x7E),
    (100, 0xF2),
    (-100, 0x72),
    (1000, 0xCE),
    (-1000, 0x4E),
    (8031, 0xA0),
    (16000, 0x90),
    (32124, 0x80),
    (32767, 0x80),
    (-32124, 0x00),
    (-32768, 0x00),
]

# (µ-law code, linear PCM16): the G.711 decoding table.
DECODE_REFERENCE = [
    (0x00, -32124),
    (0x0F, -16764),
    (0x10, -15996),
    (0x70, -120),
    (0x7E, -8),
    (0x7F, 0),
    (0x80, 32124),
    (0x8F, 16764),
    (0xEF, 132),
    (0xF0, 120),
    (0xFE, 8),
    (0xFF, 0),
]


@pytest.mark.parametrize(("linear", "code"), ENCODE_REFERENCE)
def test_encode_matches_g711(linear: int, code: int) -> None:
    assert mulaw.encode(np.array([linear], dtype=np.int16)) == bytes([code])


@pytest.mark.parametrize(("code", "linear"), DECODE_REFERENCE)
def test_decode_matches_g711(code: int, linear: int) -> None:
    assert int(mulaw.decode(bytes([code]))[0]) == linear


def test_every_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    again = mulaw.encode(mulaw.decode(codes))
    # 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF.
    assert again == codes.replace(b"\x7f", b"\xff")


def test_round_trip_error_stays_within_the_segment_step() -> None:
    linear = np.arange(-32768, 32768, dtype=np.int16)
    decoded = mulaw.decode(mulaw.encode(linear)).astype(np.int32)
    error = np.abs(decoded - linear.astype(np.int32))
    # Four mantissa bits per segment: the error is at most half a step plus the
    # encoder's truncation, about 1/19 of the biased magnitude; clipping above
    # 32124 adds up to 644.
    magnitude = np.abs(linear.astype(np.int32))
    assert np.all(error[magnitude < 100] <= 8)
    in_range = magnitude < 32124
    assert np.all(error[in_range] <= (magnitude[in_range] + 132) / 19)
    assert error.max() <= 644
    assert np.array_equal(np.sign(decoded[magnitude > 8]), np.sign(linear[magnitude > 8]))


def test_float_helpers_round_trip_speech_level_audio() -> None:
    t = np.arange(8000) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    payload = mulaw.encode_float(tone)
    assert len(payload) == len(tone)
    back = mulaw.decode_float(payload)
    assert back.dtype == np.float32
    snr = 10 * np.log10(np.sum(tone**2) / np.sum((back - tone) ** 2))
    assert snr > 30  # G.711 gives ~38 dB on a loud tone
