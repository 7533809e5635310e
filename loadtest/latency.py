"""End-of-speech → first-audio latency of real turns, with the per-stage breakdown.

    python -m loadtest.latency --turns 20 [--url ws://127.0.0.1:8000/ws] [--json out.json]

Without ``--url`` it starts ``voiceforge serve --port 0`` (the embedded default) in
its own process, so the caller and the server do not share an interpreter. Each
turn is a question spoken by espeak-ng, streamed in real time as 20 ms frames by
an open microphone; the caller "plays" the reply in real time and reports
``output_audio.played`` like a real client. Sessions hold ``--turns-per-session``
turns, so history grows as in a real conversation.

Three figures per turn, all ending at the first reply audio:

* ``acoustic_ms`` (the headline, at the client): from the acoustic end of speech,
  the last 10 ms above −45 dBFS of the audio sent (``loadtest.acoustic``), to the
  first ``response.audio.delta`` received;
* ``client_ms``: the same from the VAD's end of speech (``speech_stopped``);
* ``server_ms``: the server's own ``end_of_speech_to_first_audio_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.client import VoiceForgeClient
from agent.protocol import ServerMessage
from loadtest.acoustic import TimedCaller, elapsed_ms
from loadtest.speech import speak
from pipeline.events import ResponseDone, SpeechStopped, TranscriptFinal

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you name a large animal that lives in the ocean?",
    "What is two plus three?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "How many days are there in a week?",
    "What is the opposite of hot?",
    "Tell me one fruit that is yellow.",
    "What language is spoken in Spain?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "How many minutes are in an hour?",
    "What is the largest planet in our solar system?",
    "Which animal is known as the king of the jungle?",
    "What is frozen water called?",
    "How many continents are there?",
    "What gas do plants take in from the air?",
    "What is the tallest animal in the world?",
    "What do you call a baby cat?",
    "Which season comes after winter?",
    "What is the main ingredient of bread?",
    "How many wheels does a bicycle have?",
]

QUANTILES = (("p50", 50), ("p95", 95), ("p99", 99))

STAGES = [
    "end_of_turn_wait_ms",
    "stt_ms",
    "stt_after_end_of_turn_ms",
    "llm_first_token_ms",
    "first_chunk_text_ms",
    "tts_first_audio_ms",
]


@dataclass
class Turn:
    question: str
    transcript: str
    reply: str
    status: str
    server_ms: float | None
    client_ms: float | None
    acoustic_ms: float | None = None
    """Client: acoustic end of speech sent → first reply audio received."""
    timings: dict[str, float] = field(default_factory=dict)
    variant: str = ""
    """``on``/``off`` under ``--compare``: which value of the field its session had."""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@contextmanager
def spawned_server(
    profile: str = "embedded", *, echo: bool = True, env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[str]:
    """``voiceforge serve --port 0`` on 127.0.0.1 in a child process; yields its ws:// URL.
    ``env``: settings (``VOICEFORGE_*``) for it on top of this process's environment.
    ``workers``: its ``--workers`` (1 unless asked: the figures in docs/ are of one
    process, and a pool's /metrics shows no whole-server CPU)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--profile", profile, "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdout is not None
    stdout = process.stdout
    drain: threading.Thread | None = None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        url = None
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                tail = "".join(seen[-15:])
                raise RuntimeError(f"server exited before it was ready; its output:\n{tail}")
            seen.append(line)
            if echo:
                print(f"  server: {line.rstrip()}", flush=True)
            match = re.search(r"ready: connect to (ws://\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise RuntimeError("server not ready within 300 s")
        # Keep draining the server's output so it never blocks on a full pipe; the
        # thread closes the pipe at EOF, once the server has exited.
        drain = threading.Thread(target=_drain, args=(stdout,), daemon=True)
        drain.start()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        if drain is not None:
            drain.join(timeout=15)
        else:
            stdout.close()


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the process that started it dies.
    A benchmark killed by a signal (Ctrl-C handled, but SIGTERM or SIGKILL run no
    ``finally``) would otherwise leave its server running, still busy with callers
    that are gone, under the next benchmark's measurements."""
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Looked up here, not in the forked child (where only the call itself runs).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _drain(stream: IO[str]) -> None:
    with stream:
        for _ in stream:
            pass


async def run_turns(
    url: str,
    turns: int,
    per_session: int,
    session: dict[str, Any] | None = None,
    compare: str | None = None,
) -> list[Turn]:
    """``compare``: a session field switched between sessions (``FIELD`` or
    ``FIELD=ON,OFF``, as ``python -m loadtest --compare``). Each block of
    ``per_session`` questions is then asked twice, in one session with the field on
    and one with it off, the order alternating block by block: both sides hear the
    same questions, interleaved (``turns`` counts both)."""
    from loadtest.runner import compare_values

    results: list[Turn] = []
    count = turns if compare is None else (turns + 1) // 2
    questions = (QUESTIONS * (count // len(QUESTIONS) + 1))[:count]
    plan: list[tuple[str, list[str]]] = []
    for number, start in enumerate(range(0, count, per_session)):
        block = questions[start : start + per_session]
        order = ("on", "off") if number % 2 == 0 else ("off", "on")
        plan += [("", block)] if compare is None else [(variant, block) for variant in order]
    total = sum(len(block) for _, block in plan)
    for variant, block in plan:
        fields = dict(session or {})
        if compare is not None:
            name, on_value, off_value = compare_values(compare)
            fields[name] = on_value if variant == "on" else off_value
        async with await VoiceForgeClient.connect(url) as client:
            if fields:
                await client.update_session(**fields)
            caller = TimedCaller(client)
            caller.start()
            try:
                for question in block:
                    results.append(await one_turn(client, caller, question, speak(question)))
                    turn = results[-1]
                    turn.variant = variant
                    print(
                        f"  turn {len(results):2d}/{total}: acoustic {turn.acoustic_ms or 0:6.0f}"
                        f"  client {turn.client_ms or 0:6.0f}  server {turn.server_ms or 0:6.0f}"
                        f" ms  [{turn.status}] {variant}"
                        f"  {turn.transcript!r} -> {turn.reply[:60]!r}",
                        flush=True,
                    )
            finally:
                await caller.stop()
    return results


async def one_turn(
    client: VoiceForgeClient, caller: TimedCaller, question: str, audio: np.ndarray
) -> Turn:
    start = len(caller.log)
    spoken = caller.utter(audio)
    done = await caller.wait_done(90, after=start)
    assert isinstance(done, ResponseDone)
    finals = [m for m in caller.messages(TranscriptFinal, after=start)]
    stops = [m for m in caller.messages(SpeechStopped, after=start)]
    client_ms = client_latency_ms(client, stops, done.response_id)
    acoustic_ms = elapsed_ms(
        caller.acoustic_end_sent_at(spoken), client.first_audio_at.get(done.response_id)
    )
    # Let the caller "hear" the end of the reply before asking the next question.
    await asyncio.sleep(0.5)
    return Turn(
        question=question,
        transcript=" ".join(getattr(m, "text", "") for m in finals),
        reply=done.text.strip(),
        status=done.status.value,
        server_ms=done.timings.get("end_of_speech_to_first_audio_ms"),
        client_ms=client_ms,
        acoustic_ms=acoustic_ms,
        timings=dict(done.timings),
    )


def client_latency_ms(
    client: VoiceForgeClient, stops: Sequence[ServerMessage], response_id: str
) -> float | None:
    """Client-side end of speech → first audio: sending the audio that held the
    last ``speech_stopped`` → receiving the reply's first audio delta."""
    first_audio = client.first_audio_at.get(response_id)
    if not stops or first_audio is None:
        return None
    last_stop = stops[-1]
    assert isinstance(last_stop, SpeechStopped)
    sent = client.sent_at(last_stop.audio_end_ms)
    return None if sent is None else (first_audio - sent) * 1000


def summarize(turns: list[Turn]) -> dict[str, Any]:
    server = [t.server_ms for t in turns if t.server_ms is not None]
    client = [t.client_ms for t in turns if t.client_ms is not None]
    acoustic = [t.acoustic_ms for t in turns if t.acoustic_ms is not None]
    stages = {
        stage: {
            "p50": percentile([t.timings[stage] for t in turns if stage in t.timings], 50),
            "p95": percentile([t.timings[stage] for t in turns if stage in t.timings], 95),
        }
        for stage in STAGES
    }
    return {
        "turns": len(turns),
        "completed": sum(t.status == "completed" for t in turns),
        "acoustic_latency_ms": {q: percentile(acoustic, n) for q, n in QUANTILES},
        "latency_ms": {q: percentile(server, n) for q, n in QUANTILES},
        "client_latency_ms": {q: percentile(client, n) for q, n in QUANTILES},
        "stages_ms": stages,
        "speculative_response_share": float(
            np.mean([t.timings.get("speculative_response", 0.0) for t in turns])
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "turn_details": [t.__dict__ for t in turns],
    }


def compare_summary(turns: list[Turn], field_spec: str) -> dict[str, Any]:
    """Both sides of ``--compare`` and their ratio (on / off) per latency figure."""
    sides = {
        variant: {
            key: value
            for key, value in summarize([t for t in turns if t.variant == variant]).items()
            if key in ("turns", "completed", "acoustic_latency_ms", "latency_ms", "stages_ms")
        }
        for variant in ("on", "off")
    }
    ratios = {
        figure: {
            q: sides["on"][figure][q] / sides["off"][figure][q]
            for q in ("p50", "p95")
        }
        for figure in ("acoustic_latency_ms", "latency_ms")
    }
    return {"field": field_spec, **sides, "ratio_on_off": ratios}


def plot(turns: list[Turn], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server = [t.server_ms or 0.0 for t in turns]
    order = np.argsort(server)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottoms = np.zeros(len(turns))
    parts = [
        ("end of turn wait", "end_of_turn_wait_ms"),
        ("STT after end of turn", "stt_after_end_of_turn_ms"),
    ]
    for label, key in parts:
        values = np.array([turns[i].timings.get(key, 0.0) for i in order])
        left.bar(range(len(turns)), values, bottom=bottoms, label=label)
        bottoms += values
    rest = np.array([server[i] for i in order]) - bottoms
    left.bar(
        range(len(turns)), np.clip(rest, 0, None), bottom=bottoms, label="LLM + TTS to 1st audio"
    )
    left.axhline(1500, color="k", linestyle="--", linewidth=1, label="target p50 1.5 s")
    left.axhline(1800, color="r", linestyle=":", linewidth=1, label="target p95 1.8 s")
    left.set_xlabel("turn (sorted by latency)")
    left.set_ylabel("ms")
    left.set_title("End of speech → first audio, by stage")
    left.legend(fontsize=8)
    right.hist(server, bins=12, color="tab:blue", alpha=0.8, label="server (VAD end)")
    client = [t.client_ms for t in turns if t.client_ms is not None]
    right.hist(client, bins=12, color="tab:orange", alpha=0.6, label="client (VAD end)")
    acoustic = [t.acoustic_ms for t in turns if t.acoustic_ms is not None]
    right.hist(acoustic, bins=12, color="tab:green", alpha=0.6, label="client (acoustic end)")
    right.set_xlabel("ms")
    right.set_title("Latency distribution")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--turns-per-session", type=int, default=5)
    parser.add_argument(
        "--no-speculative-response",
        action="store_true",
        help="start replies only at the confirmed end of turn (to measure the speculation)",
    )
    parser.add_argument("--session", type=json.loads, default=None, metavar="JSON",
                        help='session.update fields for every session, e.g. '
                        '\'{"first_chunk_max_words": 4}\'')
    parser.add_argument("--compare", metavar="FIELD[=ON,OFF]",
                        help="alternate a session field between sessions (interleaved on/off "
                        "in one run), e.g. first_chunk_max_words=4,0; reports both sides")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    args = parser.parse_args(argv)
    session = dict(args.session or {})
    if args.no_speculative_response:
        session["speculative_response"] = False
    if args.compare is not None:
        from loadtest.runner import compare_values

        try:
            compare_values(args.compare)
        except ValueError as error:
            parser.error(str(error))

    def run(url: str) -> list[Turn]:
        return asyncio.run(
            run_turns(url, args.turns, args.turns_per_session, session, args.compare)
        )

    if args.url:
        turns = run(args.url)
    else:
        with spawned_server() as url:
            turns = run(url)
    summary = summarize(turns)
    if args.compare is not None:
        summary["compare"] = compare_summary(turns, args.compare)
    latency, client = summary["latency_ms"], summary["client_latency_ms"]
    acoustic = summary["acoustic_latency_ms"]
    print(f"\n{summary['turns']} turns, {summary['completed']} completed")
    print(f"acoustic end of speech -> first audio (client, headline): p50 {acoustic['p50']:.0f} ms,"
          f" p95 {acoustic['p95']:.0f} ms, p99 {acoustic['p99']:.0f} ms")
    print(f"VAD end of speech -> first audio (client):               p50 {client['p50']:.0f} ms,"
          f" p95 {client['p95']:.0f} ms")
    print(f"VAD end of speech -> first audio (server):               p50 {latency['p50']:.0f} ms,"
          f" p95 {latency['p95']:.0f} ms, p99 {latency['p99']:.0f} ms")
    for stage, values in summary["stages_ms"].items():
        print(f"  {stage:28s} p50 {values['p50']:6.0f}  p95 {values['p95']:6.0f}")
    if "compare" in summary:
        compared = summary["compare"]
        for variant in ("on", "off"):
            side = compared[variant]["acoustic_latency_ms"]
            print(f"  {compared['field']} {variant}: {compared[variant]['turns']} turns, acoustic "
                  f"p50 {side['p50']:.0f} ms, p95 {side['p95']:.0f} ms")
        ratio = compared["ratio_on_off"]["acoustic_latency_ms"]
        print(f"  ratio on/off (acoustic): p50 {ratio['p50']:.2f}, p95 {ratio['p95']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot(turns, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if summary["completed"] == summary["turns"] else 1


if __name__ == "__main__":
    sys.exit(main())
