"""What the voice prompt costs each streamed S3Gen chunk: whole, trimmed, cached.

    python -m loadtest.s3gen_prompt_bench [--seconds 10] [--trim 3] [--repeats 3]
                                          [--cfm-steps 10] [--threads 2] [--json out.json]

The library's full-size S3Gen with random weights (speed does not depend on them),
a ``--seconds`` reference (a harmonic tone, or ``--reference WAV``). One chunk's
flow pass as the engine runs it (``s3gen_stream``): the prompt, ``--left-context``
tokens, ``--chunk-tokens`` new tokens and 3 lookahead, ``--cfm-steps`` steps. Four
prompts, interleaved in rotating order within each repeat so that the machine's
drift falls on all of them: the whole prompt through the library's call, the same
with the voice's work cached (``prompt.flow_prompt``), and the last ``--trim``
seconds, uncached and cached. Each pass is timed in wall-clock and in the process's
CPU time; the ratios are of CPU time, which other work on the machine inflates far
less (at ``--threads 1``, hardly at all). A first pass of each at one step warms
up and checks that the cached mel equals the library's. The vocoder's share of a
chunk does not depend on the prompt and is not timed here (loadtest.vocoder_bench).

It also reports what caching the encoder would not give exactly: how far the
encoder's output over the prompt moves when the chunk's tokens follow it, and the
encoder's share of a pass (the most an inexact encoder cache could save).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

SAMPLE_RATE = 24_000
LOOKAHEAD_TOKENS = 3
VARIANTS = ("whole", "whole_cached", "trimmed", "trimmed_cached")


def _reference(args: argparse.Namespace) -> np.ndarray:
    if args.reference:
        from pipeline.audio import read_wav_mono, resample

        audio, rate = read_wav_mono(args.reference)
        return resample(audio, rate, SAMPLE_RATE)[: int(args.seconds * SAMPLE_RATE)]
    # A voiced-sounding tone with a slow vibrato and some breath (as the tests' voices).
    rng = np.random.default_rng(140)
    t = np.arange(int(args.seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2
    return np.asarray(tone + 0.01 * rng.standard_normal(t.size), dtype=np.float32)


def _encoder_drift(s3gen: Any, prompt: Any, window: Any) -> dict[str, float]:
    """The encoder's output over the prompt, alone against followed by ``window``."""
    import torch

    flow = s3gen.flow
    frames = prompt.frames
    with torch.inference_mode():
        alone, _ = flow.encoder(prompt.token_embedding, torch.tensor([prompt.frames // 2]))
        followed = torch.cat([prompt.token_embedding, flow.input_embedding(window)], dim=1)
        in_context, _ = flow.encoder(followed, torch.tensor([followed.shape[1]]))
        in_context = in_context[:, :frames]
        # Without the last 3 prompt tokens' frames, which the pre-lookahead
        # convolution reads the chunk's tokens into: what is left is attention.
        early = slice(0, frames - 2 * LOOKAHEAD_TOKENS)
        scale = float(in_context.pow(2).mean().sqrt())
        return {
            "max_abs": float((alone - in_context).abs().max()),
            "rms_relative": float((alone - in_context).pow(2).mean().sqrt()) / scale,
            "max_abs_before_lookahead": float((alone[:, early] - in_context[:, early]).abs().max()),
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from chatterbox.models.s3gen import S3Gen

    from pipeline.engines.chatterbox.prompt import (
        aligned_prompt,
        flow_prompt,
        prompt_mel,
        trimmed_prompt,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s3gen = S3Gen().eval()
    with torch.inference_mode():
        ref_dict = s3gen.embed_ref(torch.from_numpy(_reference(args)), SAMPLE_RATE)
    prompts: dict[str, Any] = {
        "whole": aligned_prompt(ref_dict),
        "whole_cached": flow_prompt(s3gen, ref_dict),
        "trimmed": trimmed_prompt(aligned_prompt(ref_dict), args.trim),
        "trimmed_cached": flow_prompt(s3gen, ref_dict, reference_seconds=args.trim),
    }
    window_tokens = args.left_context + args.chunk_tokens + LOOKAHEAD_TOKENS
    window = torch.randint(0, 6561, (1, window_tokens))

    def chunk(name: str, steps: int) -> tuple[float, float, Any]:
        prompt = prompts[name]
        frames = int(prompt["prompt_feat"].shape[1]) + 2 * window_tokens
        noise = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)  # the decoder's randn_like, overwritten by the noise
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if name.endswith("_cached"):
                mel = prompt_mel(s3gen, prompt, window, n_timesteps=steps, noised_mels=noise)
            else:
                mel = s3gen(
                    window, ref_wav=None, ref_sr=None, ref_dict=prompt, finalize=True,
                    skip_vocoder=True, n_cfm_timesteps=steps, noised_mels=noise,
                )  # fmt: skip
        return time.perf_counter() - started, time.process_time() - cpu_started, mel

    mels = {name: chunk(name, 1)[2] for name in VARIANTS}  # warm-up, and the equality check
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        shift = repeat % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            wall, used, _ = chunk(name, args.cfm_steps)
            times[name].append(wall)
            cpu[name].append(used)
            print(f"repeat {repeat + 1} {name}: {wall:.3f} s, CPU {used:.3f} s", file=sys.stderr)

    encoder_times = []
    whole = prompts["whole_cached"]
    with torch.inference_mode():
        embedded = torch.cat([whole.token_embedding, s3gen.flow.input_embedding(window)], dim=1)
        for _ in range(max(1, args.repeats)):
            started = time.process_time()
            s3gen.flow.encoder(embedded, torch.tensor([embedded.shape[1]]))
            encoder_times.append(time.process_time() - started)

    median = {name: statistics.median(values) for name, values in times.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "reference_s": int(whole["prompt_token"].shape[1]) / 25,
        "trimmed_s": int(prompts["trimmed"]["prompt_token"].shape[1]) / 25,
        "cfm_steps": args.cfm_steps,
        "window_tokens": window_tokens,
        "repeats": args.repeats,
        "chunk_s": times,
        "chunk_s_median": median,
        "chunk_cpu_s": cpu,
        "chunk_cpu_s_median": cpu_median,
        "ratio_to_whole": {name: cpu_median[name] / cpu_median["whole"] for name in VARIANTS},
        "wall_ratio_to_whole": {name: median[name] / median["whole"] for name in VARIANTS},
        "cached_mel_equal": {
            "whole": bool(torch.equal(mels["whole"], mels["whole_cached"])),
            "trimmed": bool(torch.equal(mels["trimmed"], mels["trimmed_cached"])),
        },
        "encoder_cpu_s_median": statistics.median(encoder_times),
        "encoder_share_of_whole": statistics.median(encoder_times) / cpu_median["whole"],
        "encoder_prompt_drift": _encoder_drift(s3gen, whole, window),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="reference length")
    parser.add_argument("--trim", type=float, default=3.0, help="seconds the trimmed prompt keeps")
    parser.add_argument("--reference", default=None, help="a WAV instead of the tone")
    parser.add_argument("--left-context", type=int, default=50)
    parser.add_argument("--chunk-tokens", type=int, default=25)
    parser.add_argument("--cfm-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    print(
        f"{result['machine']}, {args.threads} threads, {args.cfm_steps} steps,"
        f" window {result['window_tokens']} tokens, {args.repeats} repeats"
    )
    for name in VARIANTS:
        seconds = result["reference_s"] if name.startswith("whole") else result["trimmed_s"]
        print(
            f"{name:15s} prompt {seconds:4.1f} s  chunk {result['chunk_s_median'][name]:7.3f} s"
            f"  CPU {result['chunk_cpu_s_median'][name]:7.3f} s"
            f"  x{result['ratio_to_whole'][name]:.2f} of whole"
        )
    drift = result["encoder_prompt_drift"]
    print(
        f"cached mel equal to uncached: {result['cached_mel_equal']};"
        f" encoder {result['encoder_share_of_whole']:.1%} of a whole-prompt pass;"
        f" its prompt output moves by {drift['rms_relative']:.1%} RMS when the chunk follows"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
