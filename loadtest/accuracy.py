"""Spoken questions answered: transcript WER, answer accuracy and latency of a configuration.

    python -m loadtest.accuracy [--tier small|medium|large] [--url ws://…/ws]
        [--voices espeak-us,espeak-gb,piper] [--every-voice] [--instructions TEXT]
        [--json out.json]

Without ``--url`` it starts ``voiceforge serve --port 0`` (the embedded profile, with
``VOICEFORGE_TIER`` set to ``--tier``) in its own process. Each of the 48 questions
of ``loadtest.spoken_questions`` (facts, arithmetic, yes/no, instructions) is spoken
by one of the voices in turn (``--every-voice``: by each), streamed in real time as
20 ms frames by an open microphone over the real protocol, in sessions of
``--turns-per-session`` questions; the caller "plays" each reply in real time.

Per turn it keeps the transcript, the reply and whether the reply is right (the
question's accepted patterns, ``loadtest.scoring``), and the latency from the
acoustic end of speech (the last 10 ms above −45 dBFS of the audio sent) to the
first reply audio received, measured at the client (``loadtest.latency``'s
machinery). It reports the corpus word error rate of the transcripts, the share
of questions answered right (overall, by kind and by voice), latency p50/p95 and
the server's resident memory (``/metrics``), as a table and as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller
from loadtest.latency import one_turn, percentile, spawned_server
from loadtest.runner import scrape_server
from loadtest.scoring import is_right, word_error_rate
from loadtest.speech import piper_speak, speak
from loadtest.spoken_questions import QUESTIONS, Question


@dataclass(frozen=True, slots=True)
class Voice:
    name: str
    speak: Callable[[str], np.ndarray]
    description: str


VOICES: dict[str, Voice] = {
    voice.name: voice
    for voice in (
        Voice(
            "espeak-us",
            lambda text: speak(text, words_per_minute=175, voice="en-us"),
            "espeak-ng en-us, 175 words a minute",
        ),
        Voice(
            "espeak-gb",
            lambda text: speak(text, words_per_minute=140, voice="en-gb+m3", pitch=35),
            "espeak-ng en-gb (variant m3), 140 words a minute, lower pitch",
        ),
        Voice(
            "piper",
            lambda text: piper_speak(text, length_scale=1.1),
            "Piper en_US joe medium, 10 % slower than its default",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Asked:
    """One question as one voice speaks it."""

    question: Question
    voice: str


@dataclass
class Answer:
    question: str
    kind: str
    voice: str
    transcript: str
    reply: str
    status: str
    right: bool
    acoustic_ms: float | None
    server_ms: float | None
    transcript_wer: float


def plan(
    questions: Sequence[Question], voices: Sequence[str], every_voice: bool
) -> list[Asked]:
    """Each question once, the voices taking turns (or, ``every_voice``, by each voice)."""
    if not voices:
        raise ValueError("at least one voice")
    if every_voice:
        return [Asked(question, voice) for voice in voices for question in questions]
    return [Asked(question, voices[i % len(voices)]) for i, question in enumerate(questions)]


def answer_of(asked: Asked, transcript: str, reply: str, status: str,
              acoustic_ms: float | None, server_ms: float | None) -> Answer:
    """One turn scored: a reply that did not complete counts as wrong."""
    return Answer(
        question=asked.question.text,
        kind=asked.question.kind,
        voice=asked.voice,
        transcript=transcript,
        reply=reply,
        status=status,
        right=status == "completed" and is_right(asked.question, reply),
        acoustic_ms=acoustic_ms,
        server_ms=server_ms,
        transcript_wer=word_error_rate([asked.question.text], [transcript]),
    )


def _share(answers: Sequence[Answer]) -> dict[str, Any]:
    right = sum(answer.right for answer in answers)
    return {
        "asked": len(answers),
        "right": right,
        "accuracy": right / len(answers) if answers else float("nan"),
        "transcript_wer": word_error_rate(
            [a.question for a in answers], [a.transcript for a in answers]
        ),
    }


def summarize(answers: Sequence[Answer]) -> dict[str, Any]:
    acoustic = [a.acoustic_ms for a in answers if a.acoustic_ms is not None]
    server = [a.server_ms for a in answers if a.server_ms is not None]
    by = {
        group: {
            value: _share([a for a in answers if getattr(a, group) == value])
            for value in dict.fromkeys(getattr(a, group) for a in answers)
        }
        for group in ("kind", "voice")
    }
    return {
        **_share(answers),
        "completed": sum(a.status == "completed" for a in answers),
        "acoustic_latency_ms": {q: percentile(acoustic, n) for q, n in (("p50", 50), ("p95", 95))},
        "server_latency_ms": {q: percentile(server, n) for q, n in (("p50", 50), ("p95", 95))},
        "by_kind": by["kind"],
        "by_voice": by["voice"],
    }


def _progress_line(number: int, total: int, answer: Answer) -> str:
    mark = "right" if answer.right else "WRONG"
    return (
        f"  {number:2d}/{total} {answer.voice:9s} {mark}  {answer.acoustic_ms or 0:5.0f} ms"
        f"  heard {answer.transcript!r} -> {answer.reply[:70]!r}"
    )


async def ask_all(
    url: str,
    asked: Sequence[Asked],
    speech: Sequence[np.ndarray],
    per_session: int,
    session: dict[str, Any],
) -> tuple[list[Answer], float]:
    """Every question over the real protocol; the answers and the server's largest RSS."""
    answers: list[Answer] = []
    rss_max = 0.0
    http_base = _http_base(url)
    for start in range(0, len(asked), per_session):
        async with await VoiceForgeClient.connect(url) as client:
            if session:
                await client.update_session(**session)
            caller = TimedCaller(client)
            caller.start()
            try:
                for index in range(start, min(start + per_session, len(asked))):
                    turn = await one_turn(client, caller, asked[index].question.text, speech[index])
                    answers.append(
                        answer_of(asked[index], turn.transcript, turn.reply, turn.status,
                                  turn.acoustic_ms, turn.server_ms)
                    )
                    print(_progress_line(len(answers), len(asked), answers[-1]), flush=True)
            finally:
                await caller.stop()
        rss_max = max(rss_max, await asyncio.to_thread(_rss_bytes, http_base))
    return answers, rss_max


def _http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def _rss_bytes(http_base: str) -> float:
    try:
        return scrape_server(http_base).get("rss_bytes", 0.0)
    except OSError:
        return 0.0  # /metrics behind a key, or not exposed: RSS is then not reported


def prepare_speech(asked: Sequence[Asked]) -> list[np.ndarray]:
    speech = []
    for number, item in enumerate(asked, 1):
        speech.append(VOICES[item.voice].speak(item.question.text))
        if number % 10 == 0 or number == len(asked):
            print(f"  speech {number}/{len(asked)} ready", flush=True)
    return speech


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def render(summary: dict[str, Any]) -> str:
    """The printed table."""
    latency = summary["acoustic_latency_ms"]
    lines = [
        f"tier {summary['tier']}: {summary['right']}/{summary['asked']} right "
        f"({summary['accuracy']:.0%}), transcript WER {summary['transcript_wer']:.1%}, "
        f"acoustic end of speech -> first audio p50 {latency['p50']:.0f} ms, "
        f"p95 {latency['p95']:.0f} ms, server RSS max {summary['rss_mb_max']:.0f} MiB",
        "",
        f"{'':14s} {'asked':>5s} {'right':>5s} {'accuracy':>8s} {'WER':>6s}",
    ]
    for group in ("by_kind", "by_voice"):
        for name, share in summary[group].items():
            lines.append(
                f"{name:14s} {share['asked']:5d} {share['right']:5d} "
                f"{share['accuracy']:8.0%} {share['transcript_wer']:6.1%}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--tier", help="the tier the started server loads (VOICEFORGE_TIER)")
    parser.add_argument("--voices", default=",".join(VOICES),
                        help=f"comma-separated, of {', '.join(VOICES)} (default: all)")
    parser.add_argument("--every-voice", action="store_true",
                        help="ask every question in every voice (default: voices take turns)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS),
                        help="ask only the first N questions")
    parser.add_argument("--turns-per-session", type=int, default=4)
    parser.add_argument("--instructions", help="session instructions (default: the server's)")
    parser.add_argument("--session", type=json.loads, default=None, metavar="JSON",
                        help="more session.update fields for every session")
    parser.add_argument("--json", type=Path, help="write the summary and every turn here")
    args = parser.parse_args(argv)
    voices = [name.strip() for name in args.voices.split(",") if name.strip()]
    unknown = [name for name in voices if name not in VOICES]
    if unknown or not voices:
        parser.error(f"unknown voices {unknown}; known: {', '.join(VOICES)}")
    if args.tier is not None:
        from pipeline.tiers import tier_named

        tier = tier_named(args.tier)
        os.environ["VOICEFORGE_TIER"] = tier.name
    session = dict(args.session or {})
    if args.instructions is not None:
        session["instructions"] = args.instructions
    asked = plan(QUESTIONS[: args.questions], voices, args.every_voice)
    print(f"preparing {len(asked)} spoken questions ({', '.join(voices)})", flush=True)
    speech = prepare_speech(asked)
    load_before = os.getloadavg()
    started = time.monotonic()

    def run(url: str) -> tuple[list[Answer], float]:
        return asyncio.run(ask_all(url, asked, speech, args.turns_per_session, session))

    if args.url:
        answers, rss = run(args.url)
    else:
        with spawned_server() as url:
            answers, rss = run(url)
    summary = summarize(answers)
    summary.update(
        tier=args.tier or os.environ.get("VOICEFORGE_TIER") or "server default",
        setup_bytes=_setup_bytes(args.tier) if args.tier else None,
        rss_mb_max=rss / 2**20,
        voices={name: VOICES[name].description for name in voices},
        session=session,
        duration_s=time.monotonic() - started,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        commit=_git_commit(),
        turns=[asdict(answer) for answer in answers],
    )
    print()
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"written to {args.json}")
    return 0 if summary["completed"] == summary["asked"] else 1


def _setup_bytes(tier_name: str) -> int:
    from pipeline.tiers import tier_named

    return tier_named(tier_name).setup_bytes()


if __name__ == "__main__":
    sys.exit(main())
