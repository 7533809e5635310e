"""The vocoder stage alone, HiFT vs Vocos, on the same S3Gen-format mel.

    python -m loadtest.vocoder_bench [--seconds 10] [--threads 2] [--device cpu]
                                     [--vocos-weights DIR] [--json out.json]

The mel is Chatterbox's own mel function of espeak-ng speech (a tone when espeak-ng
is missing), ``--seconds`` long. Each vocoder runs in its own child process (so
peak memory is its own): the whole mel in one pass (median of ``--repeats``), and
the streaming path: the engine's chunking (a 20-frame first chunk, then 50-frame
chunks = 25 tokens) through ``Vocoder.stream()``. Weights are random unless
``--vocos-weights`` is given: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

SAMPLE_RATE = 24_000
FIRST_CHUNK_FRAMES = 20
CHUNK_FRAMES = 50


def _mel(seconds: float) -> Any:
    import torch

    from pipeline.engines.chatterbox.vocos import mel_features

    try:
        from loadtest.speech import speak

        text = (
            "The vocoder turns a mel spectrogram into a waveform. Vocos predicts a "
            "spectrum and runs one inverse transform; HiFT upsamples with convolutions. "
        ) * 4
        audio = speak(text, SAMPLE_RATE)
    except (RuntimeError, OSError):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        audio = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    samples = int(seconds * SAMPLE_RATE) // 480 * 480
    audio = np.resize(audio, samples).astype(np.float32)
    return mel_features(torch.from_numpy(audio)[None])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipeline.engines.chatterbox.vocoder import HiFTVocoder, VocosVocoder
    from pipeline.engines.chatterbox.vocos import VocosS3Gen, load_vocos

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mel = _mel(args.seconds).to(args.device)
    vocoder: HiFTVocoder | VocosVocoder
    if args.only == "hift":
        from chatterbox.models.s3gen import S3Gen

        vocoder = HiFTVocoder(S3Gen().to(args.device).eval())
        parameters = sum(p.numel() for p in vocoder._s3gen.mel2wav.parameters())
    else:
        model = (
            load_vocos(args.vocos_weights, args.device)
            if args.vocos_weights
            else VocosS3Gen().to(args.device).eval()
        )
        vocoder = VocosVocoder(model)
        parameters = sum(p.numel() for p in model.parameters())
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        vocoder.vocode(mel[..., :100])  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = _peak_rss_mb()
        whole = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            audio = vocoder.vocode(mel)
            sync()
            whole.append(time.perf_counter() - started)
        assert audio.shape[-1] == mel.shape[-1] * 480
        stream = vocoder.stream()
        chunk_times = []
        start, frames = 0, mel.shape[-1]
        size = FIRST_CHUNK_FRAMES
        while start < frames:
            end = min(frames, start + size)
            started = time.perf_counter()
            stream.push(mel[..., start:end], final=end == frames)
            sync()
            chunk_times.append(time.perf_counter() - started)
            start, size = end, CHUNK_FRAMES
    seconds = mel.shape[-1] * 480 / SAMPLE_RATE
    return {
        "vocoder": args.only,
        "parameters_m": round(parameters / 1e6, 2),
        "audio_s": seconds,
        "whole_s_median": statistics.median(whole),
        "whole_rtf": statistics.median(whole) / seconds,
        "stream_total_s": sum(chunk_times),
        "stream_first_chunk_s": chunk_times[0],
        "stream_chunk_s_median": statistics.median(chunk_times[1:] or chunk_times),
        "stream_rtf": sum(chunk_times) / seconds,
        "peak_extra_mb": (
            torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else _peak_rss_mb() - rss_before
        ),
        "peak_memory_kind": "CUDA allocated" if cuda else "process RSS above the loaded model",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocos-weights", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", choices=("hift", "vocos"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(_child(args)))
        return 0
    results = []
    for name in ("hift", "vocos"):
        command = [sys.executable, "-W", "ignore", "-m", "loadtest.vocoder_bench", "--only", name]
        for flag in ("seconds", "threads", "repeats", "device", "vocos_weights"):
            value = getattr(args, flag)
            if value is not None:
                command += [f"--{flag.replace('_', '-')}", str(value)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    hift, vocos = results
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, {args.device}")
    print(f"{'':8s} {'params':>7s} {'whole':>8s} {'RTF':>7s} {'stream':>8s} {'1st chunk':>9s}"
          f" {'chunk':>7s} {'peak MB':>8s}")
    for r in results:
        print(
            f"{r['vocoder']:8s} {r['parameters_m']:6.1f}M {r['whole_s_median']:7.3f}s"
            f" {r['whole_rtf']:7.4f} {r['stream_total_s']:7.3f}s {r['stream_first_chunk_s']:8.3f}s"
            f" {r['stream_chunk_s_median']:6.3f}s {r['peak_extra_mb']:8.0f}"
        )
    print(
        f"Vocos is {hift['whole_s_median'] / vocos['whole_s_median']:.1f}x faster whole,"
        f" {hift['stream_total_s'] / vocos['stream_total_s']:.1f}x streamed"
        f" ({vocos['audio_s']:.1f} s of audio)"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"threads": args.threads, "device": args.device, "results": results}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
