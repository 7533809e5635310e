"""Spoken questions answered: transcript WER, answer accuracy and latency of configurations.

    python -m loadtest.accuracy [--variants small,medium+first_chunk_max_words=4,large]
        [--url ws://…/ws] [--voices espeak-us,espeak-gb,piper] [--every-voice]
        [--json out.json]

A variant is a tier (``VOICEFORGE_TIER``), optionally with ``/previous``: the
instructions VoiceForge had before issue 18 instead of the server's default, and
any ``+FIELD=VALUE``: a ``session.update`` field of its sessions (variants of one
tier share its server, so ``medium,medium+first_chunk_max_words=4`` measures one
switch on the same server, interleaved). One
``voiceforge serve --port 0`` per tier is started in its own process (or, with
``--url``, the one server given is asked, as variant ``server``). Each of the 48
questions of ``loadtest.spoken_questions`` (facts, arithmetic, yes/no,
instructions) is spoken by one of the voices in turn (``--every-voice``: by
each), streamed in real time as 20 ms frames by an open microphone over the real
protocol; the caller "plays" each reply in real time. The questions go in blocks
of ``--turns-per-session``, each block asked of every variant in a session of its
own, the variants' order rotating block by block: every variant hears the same
questions, interleaved in time, so a machine busier at one moment than another
burdens them alike, and only one server works at a time.

Per turn it keeps the transcript, the reply and whether the reply is right (the
question's accepted patterns, ``loadtest.scoring``), and the latency from the
acoustic end of speech (the last 10 ms above −45 dBFS of the audio sent) to the
first reply audio received, measured at the client (``loadtest.latency``'s
machinery). Per variant it reports the corpus word error rate of the transcripts,
the share of questions answered right (overall, by kind and by voice), latency
p50/p95 (and their ratio to the first variant's) and the server's resident memory
(``/metrics``), as a table and as JSON, with the load average before and after.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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
from pipeline.errors import VoiceForgeError


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


PREVIOUS_INSTRUCTIONS = (
    "You are VoiceForge, a friendly voice assistant talking with a caller. Your words are "
    "spoken aloud, so answer in one to three short, complete sentences of plain speech. "
    "No lists, no markdown, no code, no emoji."
)
"""The default instructions before issue 18, kept to measure the new ones against."""


@dataclass(frozen=True, slots=True)
class Variant:
    """What one set of answers was asked of: a tier, and the instructions if not the default."""

    name: str
    tier: str
    instructions: str | None = None
    session: tuple[tuple[str, Any], ...] = ()
    """``session.update`` fields of this variant's sessions (``+FIELD=VALUE``)."""


def parse_variant(spec: str) -> Variant:
    """``TIER`` or ``TIER/previous``, then any ``+FIELD=VALUE`` (a session field, the
    value JSON or a plain word: ``medium+first_chunk_max_words=4``); ``server`` is the
    one server of ``--url``. Variants of one tier share its server."""
    head, *settings = spec.split("+")
    session: list[tuple[str, Any]] = []
    for setting in settings:
        field, equals, value = setting.partition("=")
        if not field or not equals:
            raise ValueError(f"variant {spec!r}: {setting!r} is not FIELD=VALUE")
        try:
            session.append((field, json.loads(value)))
        except ValueError:
            session.append((field, value))
    tier, _, prompt = head.partition("/")
    if prompt not in ("", "previous"):
        raise ValueError(f"variant {spec!r}: after the tier only /previous is known")
    if tier != "server":
        from pipeline.tiers import tier_named

        tier_named(tier)
    return Variant(spec, tier, PREVIOUS_INSTRUCTIONS if prompt else None, tuple(session))


@dataclass(frozen=True, slots=True)
class Asked:
    """One question as one voice speaks it."""

    question: Question
    voice: str


@dataclass
class Answer:
    variant: str
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
              acoustic_ms: float | None, server_ms: float | None, variant: str = "") -> Answer:
    """One turn scored: a reply that did not complete counts as wrong."""
    return Answer(
        variant=variant,
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
        f"  {number:3d}/{total} {answer.variant:15s} {answer.voice:9s} {mark}"
        f"  {answer.acoustic_ms or 0:5.0f} ms  heard {answer.transcript!r}"
        f" -> {answer.reply[:60]!r}"
    )


def interleave(count: int, per_session: int, variants: int) -> list[tuple[int, range]]:
    """(variant index, question indexes) per session: each block of questions asked of
    every variant, the order rotating by one variant each block."""
    order = []
    for number, start in enumerate(range(0, count, per_session)):
        block = range(start, min(start + per_session, count))
        order += [((number + k) % variants, block) for k in range(variants)]
    return order


async def ask_all(
    urls: dict[str, str],
    variants: Sequence[Variant],
    asked: Sequence[Asked],
    speech: Sequence[np.ndarray],
    per_session: int,
    session: dict[str, Any],
    answers: list[Answer],
    rss_max: dict[str, float],
    after_session: Callable[[], None] = lambda: None,
) -> None:
    """Every question of every variant over the real protocol, interleaved, into
    ``answers``; each server's largest RSS (by tier) into ``rss_max``. Filled as it
    goes, so a run stopped early keeps what it has."""
    rss_max.update(dict.fromkeys(urls, 0.0))
    total = len(asked) * len(variants)
    for tier, url in urls.items():
        await warm_up(url)
        print(f"  warmed up the {tier} server", flush=True)
    for which, block in interleave(len(asked), per_session, len(variants)):
        variant = variants[which]
        url = urls[variant.tier]
        fields = dict(session)
        if variant.instructions is not None:
            fields["instructions"] = variant.instructions
        fields.update(variant.session)
        async with await VoiceForgeClient.connect(url) as client:
            if fields:
                await client.update_session(**fields)
            caller = TimedCaller(client)
            caller.start()
            try:
                for index in block:
                    turn = await one_turn(client, caller, asked[index].question.text, speech[index])
                    answers.append(
                        answer_of(asked[index], turn.transcript, turn.reply, turn.status,
                                  turn.acoustic_ms, turn.server_ms, variant.name)
                    )
                    print(_progress_line(len(answers), total, answers[-1]), flush=True)
            finally:
                await caller.stop()
        rss = await asyncio.to_thread(_rss_bytes, _http_base(url))
        rss_max[variant.tier] = max(rss_max[variant.tier], rss)
        after_session()


def answered_by_all(variants: Sequence[Variant], answers: Sequence[Answer]) -> list[Answer]:
    """The answers to the questions every variant has answered (a run stopped early
    compares the variants on the same questions)."""
    asked_of = [
        {(a.question, a.voice) for a in answers if a.variant == variant.name}
        for variant in variants
    ]
    common = set.intersection(*asked_of) if asked_of else set()
    return [a for a in answers if (a.question, a.voice) in common]


WARM_UP = "Hello, can you hear me?"


async def warm_up(url: str) -> None:
    """One turn not counted: a fresh server's first turn pays for its engines' first
    run (12.5 s against about 1 s after it, in a trial), which says nothing about a
    tier's latency in use."""
    async with await VoiceForgeClient.connect(url) as client:
        caller = TimedCaller(client)
        caller.start()
        try:
            await one_turn(client, caller, WARM_UP, speak(WARM_UP))
        finally:
            await caller.stop()


@contextmanager
def tier_servers(tiers: Sequence[str]) -> Iterator[dict[str, str]]:
    """One ``voiceforge serve`` per tier, each started with its ``VOICEFORGE_TIER``."""
    urls: dict[str, str] = {}
    saved = os.environ.get("VOICEFORGE_TIER")
    with ExitStack() as stack:
        try:
            for tier in tiers:
                print(f"starting a server for tier {tier}", flush=True)
                os.environ["VOICEFORGE_TIER"] = tier
                urls[tier] = stack.enter_context(spawned_server())
        finally:
            if saved is None:
                os.environ.pop("VOICEFORGE_TIER", None)
            else:
                os.environ["VOICEFORGE_TIER"] = saved
        yield urls


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
    """The printed table: one row per variant, then each variant's kinds and voices."""
    lines = [
        f"{'variant':16s} {'right':>7s} {'accuracy':>8s} {'WER':>6s} {'p50 ms':>7s} "
        f"{'p95 ms':>7s} {'p50 ratio':>9s} {'RSS MiB':>8s}",
    ]
    for name, result in summary["variants"].items():
        latency = result["acoustic_latency_ms"]
        lines.append(
            f"{name:16s} {result['right']:3d}/{result['asked']:<3d} {result['accuracy']:8.0%} "
            f"{result['transcript_wer']:6.1%} {latency['p50']:7.0f} {latency['p95']:7.0f} "
            f"{result['p50_ratio']:9.2f} {result['rss_mb_max']:8.0f}"
        )
    lines += ["", f"{'accuracy by':16s} " + " ".join(f"{n:>16s}" for n in summary["variants"])]
    first = next(iter(summary["variants"].values()))
    for group in ("by_kind", "by_voice"):
        for key in first[group]:
            cells = [
                f"{result[group][key]['right']:3d}/{result[group][key]['asked']:<3d}"
                f" WER {result[group][key]['transcript_wer']:4.0%}"
                for result in summary["variants"].values()
            ]
            lines.append(f"{key:16s} " + " ".join(f"{cell:>16s}" for cell in cells))
    return "\n".join(lines)


def summarize_variants(
    variants: Sequence[Variant], answers: Sequence[Answer], rss: dict[str, float]
) -> dict[str, Any]:
    """Each variant's summary, with its latency p50 as a ratio of the first variant's."""
    results = {}
    for variant in variants:
        result = summarize([a for a in answers if a.variant == variant.name])
        result["tier"] = variant.tier
        result["instructions"] = "previous" if variant.instructions else "default"
        result["session"] = dict(variant.session)
        result["rss_mb_max"] = rss.get(variant.tier, 0.0) / 2**20
        result["setup_bytes"] = _setup_bytes(variant.tier)
        results[variant.name] = result
    base = next(iter(results.values()))["acoustic_latency_ms"]["p50"]
    for result in results.values():
        result["p50_ratio"] = result["acoustic_latency_ms"]["p50"] / base
    return {"variants": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="ask this running server (variant 'server') instead")
    parser.add_argument("--variants", default="small",
                        help="comma-separated TIER or TIER/previous (default: small)")
    parser.add_argument("--voices", default=",".join(VOICES),
                        help=f"comma-separated, of {', '.join(VOICES)} (default: all)")
    parser.add_argument("--every-voice", action="store_true",
                        help="ask every question in every voice (default: voices take turns)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS),
                        help="ask only the first N questions")
    parser.add_argument("--turns-per-session", type=int, default=4)
    parser.add_argument("--session", type=json.loads, default=None, metavar="JSON",
                        help="more session.update fields for every session")
    parser.add_argument("--json", type=Path, help="write the summary and every turn here")
    args = parser.parse_args(argv)
    voices = [name.strip() for name in args.voices.split(",") if name.strip()]
    unknown = [name for name in voices if name not in VOICES]
    if unknown or not voices:
        parser.error(f"unknown voices {unknown}; known: {', '.join(VOICES)}")
    specs = ["server"] if args.url else [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        variants = [parse_variant(spec) for spec in specs]
    except (ValueError, VoiceForgeError) as error:
        parser.error(str(error))
    asked = plan(QUESTIONS[: args.questions], voices, args.every_voice)
    print(f"preparing {len(asked)} spoken questions ({', '.join(voices)})", flush=True)
    speech = prepare_speech(asked)
    session = dict(args.session or {})
    tiers = list(dict.fromkeys(variant.tier for variant in variants))
    with ExitStack() as stack:
        urls = {"server": args.url} if args.url else stack.enter_context(tier_servers(tiers))
        load_before = os.getloadavg()
        started = time.monotonic()
        commit = _git_commit()  # the code that runs, whatever is committed meanwhile
        answers: list[Answer] = []
        rss: dict[str, float] = {}

        def report(final: bool) -> dict[str, Any]:
            kept = answered_by_all(variants, answers)
            summary = summarize_variants(variants, kept, rss)
            summary.update(
                voices={name: VOICES[name].description for name in voices},
                session=session,
                complete=final,
                questions_per_variant=len(kept) // len(variants),
                previous_instructions=PREVIOUS_INSTRUCTIONS,
                duration_s=time.monotonic() - started,
                load_average_before=load_before,
                load_average_now=os.getloadavg(),
                machine=f"{platform.machine()}, {os.cpu_count()} cores, "
                f"{platform.python_version()}",
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                commit=commit,
                turns=[asdict(answer) for answer in kept],
            )
            if args.json:
                # Written after every session: a run stopped early still leaves the
                # figures of the questions every variant answered.
                args.json.write_text(json.dumps(summary, indent=2))
            return summary

        asyncio.run(
            ask_all(urls, variants, asked, speech, args.turns_per_session, session,
                    answers, rss, lambda: report(final=False))
        )
    summary = report(final=True)
    print()
    print(render(summary))
    if args.json:
        print(f"written to {args.json}")
    return 0 if all(a.status == "completed" for a in answers) else 1


def _setup_bytes(tier_name: str) -> int | None:
    """What the tier assembles at set-up (None for a server we did not start)."""
    from pipeline.tiers import TIERS

    tier = TIERS.get(tier_name)
    return tier.setup_bytes() if tier is not None else None


if __name__ == "__main__":
    sys.exit(main())
