"""Calls per GPU for the gpu profile's speech (Chatterbox + Whisper), as arithmetic.

    python -m loadtest.capacity_model [--json docs/benchmarks/capacity-model.json]

Nothing of the gpu profile has run on a GPU here: this model derives calls per GPU
from published GPU figures for the same models, the scaling ratios measured on this
CPU, and stated assumptions, one line each (``INPUTS``), so that each can be
replaced by a measurement (``loadtest.gpu_bench --concurrency`` measures the
composite: first audio and underruns against concurrent calls).

GPU time per second of a call:

    G = a · (t3 + s3) + u · w

``a``: share of the call the agent speaks; ``u``: the caller; ``t3``, ``s3``: GPU
seconds of T3 and of streamed S3Gen per second of speech; ``w``: GPU seconds of
Whisper per second of caller audio. Calls per GPU = ``utilisation / G``: the GPU is
kept below full so a newcomer's first chunk does not queue (docs/deploy-gpu.md).

Published figures (4090) are scaled to an H200 by ``h200_speedup``; streamed S3Gen
costs ``stream_overhead`` times the whole-utterance decode the published figure is
for (each chunk's flow pass re-reads the voice prompt and left context:
``stream_overhead`` computes it from the frames); unbatched work runs at
``efficiency`` of the batched figure.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MEL_FRAMES_PER_TOKEN = 2
TOKENS_PER_S = 25


@dataclass(frozen=True)
class Inputs:
    agent_share: float = 0.4
    """a: the agent speaks 40 % of a call (assumed; support calls run 30-50 %)."""
    caller_share: float = 0.4
    """u: the caller speaks 40 % (assumed)."""
    utilisation: float = 0.7
    """Keep the GPU 70 % busy at most (assumed headroom for first-chunk queueing)."""
    h200_speedup: float = 2.0
    """H200 vs RTX 4090 for these memory-bound decodes: HBM 4.8 vs 1.0 TB/s would
    allow ~4.8x; 2x is assumed (kernel launches and small batches do not scale)."""
    t3_s_per_audio_s: float = 31.6 / (39.9 * 60)
    """Standard T3, batched (vLLM port, batch 80, RTX 4090): 31.6 s of T3 for
    39.9 min of audio (chatterbox-vllm README)."""
    t3_turbo_s_per_audio_s: float = 39.9 / (38.5 * 60)
    """Turbo T3, same source: 39.9 s for 38.5 min."""
    s3_s_per_audio_s: float = 70.4 / (39.9 * 60)
    """Standard S3Gen (10 CFM steps), whole utterances, batched: 70.4 s for 39.9 min."""
    s3_turbo_s_per_audio_s: float = 20.2 / (38.5 * 60)
    """Turbo's S3Gen (2 mean-flow steps): 20.2 s for 38.5 min."""
    whisper_s_per_audio_s: float = 17.0 / (13 * 60)
    """faster-whisper large-v2, fp16, batched (batch 8), RTX 3070 Ti: 13 min in 17 s
    (its README); large-v3-turbo decodes with 4 layers instead of 32: taken as no
    faster (conservative), on a GPU far slower than an H200's."""
    our_t3_efficiency: float = 1 / 3
    """Our batched HF loop (eager, growing cache, no CUDA graphs) against vLLM's
    (assumed: a third; the vLLM port reports 4x over the library's loop unbatched).
    With ``VOICEFORGE_TTS_CUDA_GRAPHS=1`` (captured slot buckets) taken as vLLM's."""
    unbatched_s3_efficiency: float = 1 / 2
    """S3Gen per chunk, one call at a time, against the batched figure (assumed)."""
    prompt_s: float = 10.0
    """The voice prompt S3Gen re-reads per chunk (the library keeps up to 10 s)."""
    left_context_tokens: int = 50
    chunk_tokens: int = 25
    lookahead_tokens: int = 3
    utterance_s: float = 10.0
    """The whole-utterance decode the published S3Gen figure stands for."""


def stream_overhead(inputs: Inputs) -> float:
    """Flow frames processed per output frame, streamed over whole-utterance."""
    prompt = inputs.prompt_s * TOKENS_PER_S * MEL_FRAMES_PER_TOKEN
    window = MEL_FRAMES_PER_TOKEN * (
        inputs.left_context_tokens + inputs.chunk_tokens + inputs.lookahead_tokens
    )
    streamed = (prompt + window) / (MEL_FRAMES_PER_TOKEN * inputs.chunk_tokens)
    whole_frames = inputs.utterance_s * TOKENS_PER_S * MEL_FRAMES_PER_TOKEN
    published_prompt = 10.0 * TOKENS_PER_S * MEL_FRAMES_PER_TOKEN
    whole = (published_prompt + whole_frames) / whole_frames
    return streamed / whole


@dataclass(frozen=True)
class Configuration:
    name: str
    turbo: bool
    batched_t3: bool
    t3_at_vllm_efficiency: bool
    batched_s3: bool
    prompt_s: float


CONFIGURATIONS = (
    Configuration("before: one call's chunk at a time", False, False, False, False, 10.0),
    Configuration("standard, T3 batched (this change)", False, True, False, False, 10.0),
    Configuration("Turbo, T3 batched", True, True, False, False, 10.0),
    Configuration("Turbo, T3 batched, 3 s reference", True, True, False, False, 3.0),
    Configuration("Turbo, T3 and S3Gen batched, 3 s (built)", True, True, False, True, 3.0),
    Configuration("Turbo, T3 with CUDA graphs (built, not run on a GPU), S3Gen batched, 3 s",
                  True, True, True, True, 3.0),
)


def calls_per_gpu(inputs: Inputs, configuration: Configuration) -> dict[str, float]:
    scaled = replace(inputs, prompt_s=configuration.prompt_s)
    h = inputs.h200_speedup
    t3 = inputs.t3_turbo_s_per_audio_s if configuration.turbo else inputs.t3_s_per_audio_s
    if not configuration.t3_at_vllm_efficiency:
        t3 /= inputs.our_t3_efficiency
    if not configuration.batched_t3:
        # One utterance per step: the step costs what a batch's does (memory
        # bound), so each call pays the whole step: assumed 8x (B = 8 by default).
        t3 *= 8
    s3 = inputs.s3_turbo_s_per_audio_s if configuration.turbo else inputs.s3_s_per_audio_s
    s3 *= stream_overhead(scaled)
    if not configuration.batched_s3:
        s3 /= inputs.unbatched_s3_efficiency
    t3, s3, whisper = t3 / h, s3 / h, inputs.whisper_s_per_audio_s / h
    busy = inputs.agent_share * (t3 + s3) + inputs.caller_share * whisper
    return {
        "t3_ms_per_audio_s": t3 * 1000,
        "s3gen_ms_per_audio_s": s3 * 1000,
        "whisper_ms_per_audio_s": whisper * 1000,
        "gpu_ms_per_call_s": busy * 1000,
        "calls_per_gpu": inputs.utilisation / busy,
    }


SPEEDUPS = (2.0, 3.0, 4.0)
"""H200 over 4090 factors shown side by side: the one assumption that moves most."""


def table(inputs: Inputs) -> list[dict[str, Any]]:
    rows = []
    for configuration in CONFIGURATIONS:
        row = {"configuration": configuration.name, **calls_per_gpu(inputs, configuration)}
        row["calls_by_speedup"] = {
            str(speedup): calls_per_gpu(replace(inputs, h200_speedup=speedup), configuration)[
                "calls_per_gpu"
            ]
            for speedup in SPEEDUPS
        }
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    speedups = " | ".join(f"calls, H200 = {float(s):g}x 4090" for s in SPEEDUPS)
    lines = [
        "| configuration | T3 ms / speech s | S3Gen ms / speech s | Whisper ms / caller s"
        f" | GPU ms / call s | {speedups} |",
        "|---|---|---|---|---|" + "---|" * len(SPEEDUPS),
    ]
    for row in rows:
        calls = " | ".join(f"{row['calls_by_speedup'][str(s)]:.0f}" for s in SPEEDUPS)
        lines.append(
            f"| {row['configuration']} | {row['t3_ms_per_audio_s']:.1f} |"
            f" {row['s3gen_ms_per_audio_s']:.1f} | {row['whisper_ms_per_audio_s']:.1f} |"
            f" {row['gpu_ms_per_call_s']:.1f} | {calls} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="replace an input (e.g. --set h200_speedup=4): a measurement, say",
    )  # fmt: skip
    args = parser.parse_args(argv)
    inputs = Inputs()
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Inputs.__dataclass_fields__ or not value:
            parser.error(f"--set {item!r}: no input called {name!r}")
        inputs = replace(inputs, **{name: type(getattr(inputs, name))(float(value))})
    rows = table(inputs)
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"inputs": asdict(inputs), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
