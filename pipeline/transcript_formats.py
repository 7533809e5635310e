"""Transcripts in the shapes OpenAI's ``/v1/audio/transcriptions`` answers with
(sans-I/O): plain text, SubRip, WebVTT and ``verbose_json``'s segments and words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.engines.base import TranscriptSegment


def transcript_text(segments: Sequence[TranscriptSegment]) -> str:
    return " ".join(text for segment in segments if (text := segment.text.strip()))


def _clock(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: Sequence[TranscriptSegment]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, a blank line after each."""
    cues = [
        f"{number}\n{_clock(segment.start, ',')} --> {_clock(segment.end, ',')}\n"
        f"{segment.text.strip()}\n"
        for number, segment in enumerate(
            (segment for segment in segments if segment.text.strip()), start=1
        )
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[TranscriptSegment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm`` times."""
    cues = [
        f"{_clock(segment.start, '.')} --> {_clock(segment.end, '.')}\n{segment.text.strip()}\n"
        for segment in segments
        if segment.text.strip()
    ]
    return "\n".join(["WEBVTT\n", *cues])


def verbose_segment(segment: TranscriptSegment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def verbose_words(segments: Sequence[TranscriptSegment]) -> list[dict[str, Any]]:
    return [
        {"word": word.word.strip(), "start": round(word.start, 3), "end": round(word.end, 3)}
        for segment in segments
        for word in segment.words
        if word.word.strip()
    ]
