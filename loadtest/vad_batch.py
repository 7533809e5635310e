"""Cost per 32 ms stream-chunk of Silero VAD: one batched call for all sessions vs one
call per session, interleaved in one run.

    python -m loadtest.vad_batch --streams 1,10,50,200 --rounds 50 [--json out.json]

Each round evaluates one chunk of every stream, batched and per stream
alternately, so both see the same machine load. The model, the states and the
numpy glue are the server's own (``SileroVAD.run_batch``); only the asyncio
worker is left out, so this is the model-call cost, not queueing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.vad import FRAME_SAMPLES, SileroVAD


def measure(vad: SileroVAD, streams: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    batched_states = [vad.new_state() for _ in range(streams)]
    single_states = [vad.new_state() for _ in range(streams)]
    # One untimed round: onnxruntime sizes its buffers on the first call of a shape.
    warm = np.zeros((streams, FRAME_SAMPLES), dtype=np.float32)
    vad.run_batch(warm, [vad.new_state() for _ in range(streams)])
    vad.run_batch(warm[:1], [vad.new_state()])
    batched_s = single_s = 0.0
    for _ in range(rounds):
        chunks = (0.05 * rng.standard_normal((streams, FRAME_SAMPLES))).astype(np.float32)
        started = time.perf_counter()
        vad.run_batch(chunks, batched_states)
        batched_s += time.perf_counter() - started
        started = time.perf_counter()
        for row, state in zip(chunks, single_states, strict=True):
            vad.run_batch(row[None, :], [state])
        single_s += time.perf_counter() - started
    per_chunk_batched = batched_s / (rounds * streams) * 1e6
    per_chunk_single = single_s / (rounds * streams) * 1e6
    return {
        "streams": streams,
        "rounds": rounds,
        "batched_us_per_chunk": round(per_chunk_batched, 1),
        "per_stream_us_per_chunk": round(per_chunk_single, 1),
        "ratio_batched_over_per_stream": round(per_chunk_batched / per_chunk_single, 3),
        # A chunk is 32 ms of audio: the share of one core VAD takes per stream.
        "core_share_per_stream_batched": round(per_chunk_batched / 32_000, 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", default="1,10,50,200")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    vad = SileroVAD()
    results = []
    for streams in (int(n) for n in args.streams.split(",")):
        result = measure(vad, streams, args.rounds)
        results.append(result)
        print(
            f"{streams:4d} streams: batched {result['batched_us_per_chunk']:7.1f} us/chunk, "
            f"one call per stream {result['per_stream_us_per_chunk']:7.1f} us/chunk, "
            f"ratio {result['ratio_batched_over_per_stream']:.3f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
