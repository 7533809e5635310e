"""Speech in the server's process or in one of its own: what it costs the event loop.

    python -m loadtest.speech_process --json docs/benchmarks/speech-process.json \\
        --plot docs/img/speech-process.png

The server's event loop moves every caller's 20 ms frames; a TTS worker thread in
the same process takes the GIL for every Python step of its model. This runs the
small random-weight Chatterbox (loadtest/chatterbox_tiny.py: the real engine, batch
scheduler, S3Gen and HiFT, with a T3 whose step is tiny kernels and Python, the
launch-bound regime of T3 on a GPU) with ``--streams`` utterances speaking at once,
continuously, for ``--seconds``, first in this process (``ChatterboxTTS``), then
in a child (``pipeline.engines.hosted``, as the gpu profile runs it by default),
alternating ``--rounds`` times. Meanwhile a probe on the event loop wakes every
20 ms, as a media loop does, and records how late each wake-up is.

Reported per placement, each figure the median over the rounds: the wake-up
lateness p50 / p95 / p99 / max, how long the tick's ``--loop-load`` of Python work
took, and the speech produced (audio seconds per wall second), so the move is seen
to cost no throughput. Both placements run torch on ``--threads`` threads. On this
2-core machine the child has the second core to itself; on a GPU host the child's
time is mostly the GPU's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.chatterbox_tiny import tiny_engine, write_checkpoint, write_reference_wav
from loadtest.latency import percentile

TICK_S = 0.020
TEXTS = (
    "Your table for four is booked at seven tonight.",
    "The train leaves from platform two in ten minutes.",
    "I have moved the meeting to Thursday afternoon.",
    "It will be sunny tomorrow, with a light breeze.",
    "Your parcel should arrive before noon on Friday.",
    "Sure, I can read the last message back to you.",
)
PLACEMENTS = ("in the server's process", "in a process of its own")


def bench_engine(checkpoint: str, voices_dir: str, threads: int) -> Any:
    """The tiny engine on ``threads`` torch threads (the child's factory too)."""
    import torch

    torch.set_num_threads(threads)
    return tiny_engine(checkpoint, voices_dir)


async def _speak(tts: Any, index: int, until: float, produced: list[float]) -> None:
    turn = index
    while time.perf_counter() < until:
        async for chunk in tts.synthesize(TEXTS[turn % len(TEXTS)], voice="alice"):
            produced[index] += len(chunk) / tts.sample_rate
        turn += 1


def _python_work(iterations: int) -> int:
    """Pure-Python work standing in for a tick's frame handling (it needs the GIL)."""
    total = 0
    for value in range(iterations):
        total += value & 7
    return total


def calibrate(work_ms: float) -> int:
    """Iterations of `_python_work` that take ``work_ms`` on this machine, alone."""
    iterations = 10_000
    while True:
        start = time.perf_counter()
        _python_work(iterations)
        elapsed = (time.perf_counter() - start) * 1000.0
        if elapsed > 20.0:
            return max(1, round(iterations * work_ms / elapsed))
        iterations *= 2


async def _probe(until: float, iterations: int) -> tuple[list[float], list[float]]:
    """Wake every tick, do the tick's work; how late each wake-up was and how long
    each tick's work took (ms)."""
    lateness, work = [], []
    expected = time.perf_counter() + TICK_S
    while expected < until:
        await asyncio.sleep(max(0.0, expected - time.perf_counter()))
        woke = time.perf_counter()
        lateness.append((woke - expected) * 1000.0)
        if iterations:
            _python_work(iterations)
            work.append((time.perf_counter() - woke) * 1000.0)
        expected += TICK_S  # frames keep arriving on time: a late tick's backlog counts
    return lateness, work


async def measure(tts: Any, streams: int, seconds: float, iterations: int) -> dict[str, float]:
    """``streams`` utterances speaking at once for ``seconds`` while the probe ticks."""
    produced = [0.0] * streams
    start = time.perf_counter()
    until = start + seconds
    speakers = [asyncio.create_task(_speak(tts, i, until, produced)) for i in range(streams)]
    lateness, work = await _probe(until, iterations)
    await asyncio.gather(*speakers)
    wall = time.perf_counter() - start
    return {
        "lateness_p50_ms": round(percentile(lateness, 50), 2),
        "lateness_p95_ms": round(percentile(lateness, 95), 2),
        "lateness_p99_ms": round(percentile(lateness, 99), 2),
        "lateness_max_ms": round(max(lateness), 2),
        "ticks": len(lateness),
        "tick_work_p50_ms": round(statistics.median(work), 2) if work else 0.0,
        "tick_work_p95_ms": round(percentile(work, 95), 2) if work else 0.0,
        "audio_s_per_s": round(sum(produced) / wall, 3),
    }


def _build(placement: str, checkpoint: Path, voices: Path, threads: int) -> Any:
    from pipeline.engines.hosted import hosted_tts
    from pipeline.engines.process_host import EngineSpec

    kwargs = {"checkpoint": str(checkpoint), "voices_dir": str(voices), "threads": threads}
    if placement == PLACEMENTS[0]:
        engine = bench_engine(**kwargs)
        asyncio.run(engine.warm_up())
        return engine
    spec = EngineSpec("loadtest.speech_process:bench_engine", kwargs, "bench-tts")
    return hosted_tts(spec, progress=lambda line: None)


def run(streams: int, seconds: float, rounds: int, threads: int, loop_load: float
        ) -> dict[str, Any]:
    iterations = calibrate(loop_load * TICK_S * 1000.0) if loop_load > 0 else 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        voices = root / "voices"
        voices.mkdir()
        write_reference_wav(voices / "alice.wav", pitch_hz=210.0)
        print("writing the random-weight checkpoint ...", file=sys.stderr, flush=True)
        write_checkpoint(root / "checkpoint", write_reference_wav(root / "builtin.wav"))
        by_round: dict[str, list[dict[str, float]]] = {placement: [] for placement in PLACEMENTS}
        for round_index in range(rounds):
            for placement in PLACEMENTS:
                tts = _build(placement, root / "checkpoint", voices, threads)
                try:
                    figures = asyncio.run(measure(tts, streams, seconds, iterations))
                finally:
                    tts.close()
                by_round[placement].append(figures)
                print(f"round {round_index + 1}/{rounds}, {placement}: {figures}",
                      file=sys.stderr, flush=True)
    median = {
        placement: {
            key: statistics.median(figures[key] for figures in rows) for key in rows[0]
        }
        for placement, rows in by_round.items()
    }
    here, there = (median[placement] for placement in PLACEMENTS)
    return {
        "command": "python -m loadtest.speech_process " + " ".join(sys.argv[1:]),
        "streams": streams, "seconds": seconds, "rounds": rounds, "threads": threads,
        "loop_load": loop_load, "tick_work_alone_ms": round(loop_load * TICK_S * 1000.0, 2),
        "tick_ms": TICK_S * 1000, "median": median, "rounds_measured": by_round,
        "p95_lateness_ratio": round(here["lateness_p95_ms"] / max(there["lateness_p95_ms"],
                                                                  0.01), 1),
        "throughput_ratio": round(there["audio_s_per_s"] / here["audio_s_per_s"], 2),
    }  # fmt: skip


def _plot(results: dict[str, Any], path: Path) -> None:
    from loadtest.report import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(6.4, 4.0))
    for placement in PLACEMENTS:
        rows = results["rounds_measured"][placement]
        keys = ("lateness_p50_ms", "lateness_p95_ms", "lateness_p99_ms", "lateness_max_ms")
        values = [statistics.median(row[key] for row in rows) for key in keys]
        axis.plot(["p50", "p95", "p99", "max"], values, marker="o", label=placement)
    axis.set_yscale("log")
    axis.set_ylabel("event-loop wake-up lateness (ms, 20 ms ticks)")
    axis.set_title(f"{results['streams']} Chatterbox utterances speaking (tiny random weights)")
    axis.legend()
    axis.grid(True, alpha=0.3)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loop-load", type=float, default=0.4,
                        help="share of each 20 ms tick the loop spends in Python work alone")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    results = run(args.streams, args.seconds, args.rounds, args.threads, args.loop_load)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.plot is not None:
        _plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
