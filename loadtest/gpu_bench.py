"""Benchmark for GPU owners: vLLM time to first token, Chatterbox first audio and RTF.

    python -m loadtest.gpu_bench --llm-url http://127.0.0.1:8001/v1 --llm-model llama-3.3-70b
    python -m loadtest.gpu_bench --skip-llm --tts-device cuda --json out/gpu-bench.json
    python -m loadtest.gpu_bench --skip-llm --tts chatterbox-turbo

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-url", default="http://127.0.0.1:8001/v1")
    parser.add_argument("--llm-model", default="llama-3.3-70b")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-tts", action="store_true")
    parser.add_argument("--tts-device", default="cuda")
    parser.add_argument("--tts", choices=("chatterbox", "chatterbox-turbo"), default="chatterbox")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if not args.skip_llm:
        results["llm"] = asyncio.run(bench_llm(args.llm_url, args.llm_model, args.requests))
    if not args.skip_tts:
        turbo = args.tts == "chatterbox-turbo"
        results["tts"] = asyncio.run(bench_tts(args.tts_device, turbo))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
