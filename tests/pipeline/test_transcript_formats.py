"""SubRip and WebVTT as OpenAI's transcription endpoint writes them."""

from __future__ import annotations

from pipeline.engines.base import TimedWord, TranscriptSegment
from pipeline.transcript_formats import srt, transcript_text, verbose_words, vtt

SEGMENTS = [
    TranscriptSegment(
        0, 0.0, 2.5, " Hello there.", "en",
        words=(TimedWord(" Hello", 0.0, 0.4, 0.9), TimedWord(" there.", 0.5, 1.0, 0.8)),
    ),
    TranscriptSegment(1, 2.5, 2.6, "  ", "en"),
    TranscriptSegment(2, 3661.25, 3662.0, " Much later.", "en"),
]


def test_srt_numbers_cues_with_comma_milliseconds_and_skips_empty_ones() -> None:
    assert srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n01:01:01,250 --> 01:01:02,000\nMuch later.\n"
    )


def test_vtt_has_its_header_and_dot_milliseconds() -> None:
    assert vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.250 --> 01:01:02.000\nMuch later.\n"
    )


def test_text_and_words() -> None:
    assert transcript_text(SEGMENTS) == "Hello there. Much later."
    assert verbose_words(SEGMENTS) == [
        {"word": "Hello", "start": 0.0, "end": 0.4},
        {"word": "there.", "start": 0.5, "end": 1.0},
    ]
