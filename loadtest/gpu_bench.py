"""Benchmark for GPU owners: vLLM time to first token, Chatterbox first audio and RTF.

    python -m loadtest.gpu_bench --llm-url http://127.0.0.1:8001/v1 --llm-model llama-3.3-70b
    python -m loadtest.gpu_bench --skip-llm --tts-device cuda --json out/gpu-bench.json
    python -m loadtest.gpu_bench --skip-llm --tts chatterbox-turbo
    python -m loadtest.gpu_bench --skip-llm --concurrency 1,8,16,32,64 --json out/gpu-calls.json
    python -m loadtest.gpu_bench --skip-llm --skip-tts --tts chatterbox-turbo \
        --concurrency 1,8,16,32,64 --reference-seconds 3 --cuda-graphs --bf16

LLM: ``--requests`` streamed chat completions (a voice-agent prompt), each timed
from request to first token and to the end, sequentially; report p50/p95.
TTS: each sentence synthesized twice — streamed through our engine
(``pipeline.engines.chatterbox.ChatterboxTTS.synthesize``: time to the first
chunk, total time) and whole through the library (``chatterbox.tts.ChatterboxTTS
.generate``, or ``ChatterboxTurboTTS`` with ``--tts chatterbox-turbo``); real-time
factor = synthesis time / audio duration (below 1 is faster than real time). The
engine is warmed up first (``warm_up``, as the gpu profile does before ready), so
the first sentence does not carry CUDA initialisation. Chatterbox is imported only
when the TTS part runs.
Concurrency (``--concurrency``): the capacity model's inputs (docs/deploy-gpu.md).
For each count N, N utterances (the sentences in turn) start within
``--arrival-s`` of each other, each played back in real time from its first chunk
by a simulated listener: first-audio p50/p95, and underruns (a chunk that arrives
after the audio before it has finished playing, and the silence it leaves).
Print the machine (GPU model, driver) with the figures when you publish them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.engines.base import ChatMessage
from pipeline.engines.openai_compat import OpenAICompatLLM

SENTENCES = [
    "Sure, I can help with that.",
    "Your table for four is booked for eight o'clock tonight, and I sent the confirmation.",
    "The weather tomorrow in Berlin will be cloudy in the morning, with sunny spells "
    "later and a high of nineteen degrees.",
]
PROMPT: list[ChatMessage] = [
    {"role": "system", "content": "You are a voice assistant. Answer in two short sentences."},
    {"role": "user", "content": "What should I see on a first trip to Rome?"},
]


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "n": float(len(ordered))}


async def bench_llm(url: str, model: str, requests: int) -> dict[str, Any]:
    llm = OpenAICompatLLM(url, model, first_token_timeout_s=60.0, stall_timeout_s=30.0)
    first: list[float] = []
    total: list[float] = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            first_at = None
            async for _delta in llm.stream(PROMPT, max_tokens=96, temperature=0.7):
                if first_at is None:
                    first_at = time.perf_counter()
            end = time.perf_counter()
            if first_at is not None:
                first.append((first_at - started) * 1000)
                total.append((end - started) * 1000)
    finally:
        await llm.aclose()
    return {"first_token_ms": _percentiles(first), "total_ms": _percentiles(total)}


async def bench_tts(device: str, turbo: bool = False) -> dict[str, Any]:
    import numpy as np

    from pipeline.engines.chatterbox import ChatterboxTTS

    engine = ChatterboxTTS(device=device, turbo=turbo)
    warmed = await engine.warm_up()
    rows = []
    for sentence in SENTENCES:
        started = time.perf_counter()
        first_ms = None
        samples = 0
        async for chunk in engine.synthesize(sentence):
            if first_ms is None:
                first_ms = (time.perf_counter() - started) * 1000
            samples += len(chunk)
        streamed_s = time.perf_counter() - started
        audio_s = samples / engine.sample_rate
        whole = _whole_rtf(sentence, device, turbo)
        rows.append({
            "sentence": sentence,
            "audio_s": audio_s,
            "streamed_first_audio_ms": first_ms,
            "streamed_rtf": streamed_s / audio_s if audio_s else float("nan"),
            **whole,
        })  # fmt: skip
    mean_rtf = float(np.mean([row["streamed_rtf"] for row in rows]))
    return {"engine": engine.name, "warmed_voices": warmed, "sentences": rows,
            "mean_streamed_rtf": mean_rtf}  # fmt: skip


async def bench_concurrency(
    engine: Any, counts: list[int], *, arrival_s: float = 1.0, seed: int = 0
) -> list[dict[str, Any]]:
    """Per count N: N utterances on one engine, arrivals spread over ``arrival_s``."""
    import random

    rows = []
    for count in counts:
        rng = random.Random(seed + count)
        offsets = sorted(rng.uniform(0.0, arrival_s) for _ in range(count))
        texts = [SENTENCES[index % len(SENTENCES)] for index in range(count)]
        started = time.perf_counter()
        listened = await asyncio.gather(*(
            _listen(engine, text, started + offset)
            for text, offset in zip(texts, offsets, strict=True)
        ))  # fmt: skip
        firsts = [row["first_audio_ms"] for row in listened]
        gaps = [gap for row in listened for gap in row["gaps_ms"]]
        audio_s = sum(row["audio_s"] for row in listened)
        rows.append({
            "calls": count,
            "first_audio_ms": _percentiles(firsts),
            "underruns": len(gaps),
            "utterances_with_underruns": sum(1 for row in listened if row["gaps_ms"]),
            "underrun_ms": _percentiles(gaps) if gaps else None,
            "audio_s": audio_s,
            "wall_s": time.perf_counter() - started,
        })  # fmt: skip
    return rows


async def _listen(engine: Any, text: str, start_at: float) -> dict[str, Any]:
    """One utterance heard in real time: playback starts with the first chunk and
    stalls whenever the next chunk is not there yet."""
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    requested = time.perf_counter()
    first_ms: float | None = None
    played_until = 0.0
    """When the audio received so far will have finished playing."""
    gaps: list[float] = []
    audio_s = 0.0
    async for chunk in engine.synthesize(text):
        now = time.perf_counter()
        if first_ms is None:
            first_ms = (now - requested) * 1000
            played_until = now
        elif now > played_until:
            gaps.append((now - played_until) * 1000)
            played_until = now
        seconds = len(chunk) / engine.sample_rate
        played_until += seconds
        audio_s += seconds
    return {"first_audio_ms": first_ms or 0.0, "gaps_ms": gaps, "audio_s": audio_s}


_library_model: Any = None


def _whole_rtf(sentence: str, device: str, turbo: bool = False) -> dict[str, float]:
    """The library's own non-streaming generate(): first audio = all of it."""
    global _library_model
    if _library_model is None:
        if turbo:
            from chatterbox.tts_turbo import ChatterboxTurboTTS

            _library_model = ChatterboxTurboTTS.from_pretrained(device=device)
        else:
            from chatterbox.tts import ChatterboxTTS as Library

            _library_model = Library.from_pretrained(device=device)
    started = time.perf_counter()
    wav = _library_model.generate(sentence)
    elapsed = time.perf_counter() - started
    audio_s = wav.shape[-1] / _library_model.sr
    return {"whole_first_audio_ms": elapsed * 1000, "whole_rtf": elapsed / audio_s}


async def _concurrency(
    device: str, turbo: bool, counts: list[int], arrival_s: float, **fast_paths: Any
) -> dict[str, Any]:
    """``fast_paths``: the engine's ``cuda_graphs``, ``bf16``, ``reference_seconds``
    (the capacity model's configurations, docs/deploy-gpu.md)."""
    from pipeline.engines.chatterbox import ChatterboxTTS

    engine = ChatterboxTTS(device=device, turbo=turbo, max_streams=max(counts), **fast_paths)
    try:
        await engine.warm_up()
        rows = await bench_concurrency(engine, counts, arrival_s=arrival_s)
    finally:
        engine.close()
    return {"engine": engine.name, "by_calls": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-url", default="http://127.0.0.1:8001/v1")
    parser.add_argument("--llm-model", default="llama-3.3-70b")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-tts", action="store_true")
    parser.add_argument("--tts-device", default="cuda")
    parser.add_argument("--tts", choices=("chatterbox", "chatterbox-turbo"), default="chatterbox")
    parser.add_argument(
        "--concurrency", default=None,
        help="comma-separated call counts: concurrent utterances on one engine",
    )  # fmt: skip
    parser.add_argument("--arrival-s", type=float, default=1.0)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="--concurrency: T3 on captured slot buckets")
    parser.add_argument("--bf16", action="store_true", help="--concurrency: T3 in bfloat16")
    parser.add_argument("--reference-seconds", type=float, default=None,
                        help="--concurrency: S3Gen's voice prompt cut to this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if not args.skip_llm:
        results["llm"] = asyncio.run(bench_llm(args.llm_url, args.llm_model, args.requests))
    turbo = args.tts == "chatterbox-turbo"
    if not args.skip_tts:
        results["tts"] = asyncio.run(bench_tts(args.tts_device, turbo))
    if args.concurrency:
        counts = [int(count) for count in args.concurrency.split(",")]
        results["concurrency"] = asyncio.run(
            _concurrency(args.tts_device, turbo, counts, args.arrival_s,
                         cuda_graphs=args.cuda_graphs, bf16=args.bf16,
                         reference_seconds=args.reference_seconds)
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
