"""Cost of one Smart Turn inference on this CPU, and what the model says on examples.

    python -m loadtest.smart_turn_cost --batches 1,8 --rounds 20 --threads 1,2 [--json out.json]
    python -m loadtest.smart_turn_cost --batches 1 --threads 1 --blas-threads default,1
    python -m loadtest.smart_turn_cost --examples [--voice espeak] [--transcripts]

Cost: features (Whisper log-mel of 8 s) and the onnxruntime call are timed
apart, per request, for each batch size and thread count, interleaved round by
round so every setting sees the same machine load; the model's CPU time is
reported beside its wall-clock time, and the load average with them, because the
machine may be shared. ``--blas-threads`` also alternates numpy's BLAS thread
count round by round (``default``: the library's own; the server sets 1,
``pipeline.thread_worker.single_threaded_blas``), with the whole request's CPU
time, because OpenBLAS's idle threads spin after the features' product and that
time lands in the model call's. Examples: the probability that the
turn is complete for each complete question and its cut-off version
(loadtest/turn_examples.py), at several lengths of trailing silence; with
``--transcripts``, also what tiny.en hears in each and whether the words end open
(``pipeline.turn_words.ends_open``), the learned policy's transcript cue.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.turn_examples import turn_examples, with_silence
from pipeline.smart_turn import SmartTurnModel, last_window
from pipeline.turn_words import ends_open

CUE_SILENCE_MS = 200.0
"""Where the transcript cue is judged: the learned policy's first question."""


BLAS_SETTLE_S = 0.3
"""Pause after changing the BLAS thread count, so threads still spinning from the
last setting's product do not count against the next one."""


def measure_cost(
    models: dict[int, SmartTurnModel], batches: list[int], rounds: int, seed: int = 0,
    blas_threads: list[int | None] | None = None,
) -> list[dict[str, Any]]:
    """``blas_threads``: numpy's BLAS thread counts to alternate (None: the
    library's own); default, leave it as it is."""
    from threadpoolctl import threadpool_limits

    original = threadpool_limits(limits=None, user_api="blas")
    library_default = original.get_original_num_threads().get("blas")
    settings = blas_threads or [None]
    rng = np.random.default_rng(seed)
    # Noise, not speech: the cost does not depend on what is said.
    audios = [
        (0.05 * rng.standard_normal(6 * 16000)).astype(np.float32) for _ in range(max(batches))
    ]
    samples: dict[tuple[int | None, int, int], dict[str, list[float]]] = {}
    for model in models.values():  # onnxruntime sizes its buffers on the first call of a shape
        for batch in batches:
            model.predict_batch(audios[:batch])
    try:
        for _ in range(rounds):
            for blas in settings:
                if blas_threads:
                    threadpool_limits(limits=blas or library_default, user_api="blas")
                    time.sleep(BLAS_SETTLE_S)
                _measure_round(models, batches, audios, blas, samples)
    finally:
        original.restore_original_limits()
    results = []
    for (blas, threads, batch), sample in samples.items():
        feature_times, model_times = sample["features"], sample["model"]
        results.append(
            {
                "blas_threads": blas if blas is not None else library_default,
                "threads": threads,
                "batch": batch,
                "rounds": rounds,
                "features_ms_per_request_p50": _p50_ms(feature_times),
                "features_cpu_ms_per_request_p50": _p50_ms(sample["features_cpu"]),
                "model_ms_per_request_p50": _p50_ms(model_times),
                "model_ms_per_request_min": round(min(model_times) * 1000, 2),
                # CPU time of the whole process (all onnxruntime threads): what the
                # call costs the machine, and far less sensitive to other load than
                # the wall-clock figures when the machine is shared.
                "model_cpu_ms_per_request_p50": _p50_ms(sample["model_cpu"]),
                "total_ms_per_request_p50": _p50_ms(
                    [f + m for f, m in zip(feature_times, model_times, strict=True)]
                ),
                "total_cpu_ms_per_request_p50": _p50_ms([
                    f + m for f, m in zip(sample["features_cpu"], sample["model_cpu"], strict=True)
                ]),
            }
        )
    return results


def _p50_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def _measure_round(
    models: dict[int, SmartTurnModel], batches: list[int], audios: list[np.ndarray],
    blas: int | None, samples: dict[tuple[int | None, int, int], dict[str, list[float]]],
) -> None:
    for threads, model in models.items():
        for batch in batches:
            started = time.perf_counter()
            features_cpu_started = time.process_time()
            features = np.stack([model.features(audio) for audio in audios[:batch]])
            features_cpu = time.process_time() - features_cpu_started
            featured = time.perf_counter()
            cpu_started = time.process_time()
            model.run_features(features)
            cpu_done = time.process_time()
            done = time.perf_counter()
            sample = samples.setdefault((blas, threads, batch), {
                "features": [], "model": [], "model_cpu": [], "features_cpu": []})
            sample["features"].append((featured - started) / batch)
            sample["model"].append((done - featured) / batch)
            sample["model_cpu"].append((cpu_done - cpu_started) / batch)
            sample["features_cpu"].append(features_cpu / batch)


def example_table(
    model: SmartTurnModel, silences_ms: list[float], voice: str = "piper"
) -> list[dict[str, Any]]:
    rows = []
    for example in turn_examples(voice):
        row: dict[str, Any] = {"prefix": example.prefix, "text": example.text}
        for silence in silences_ms:
            clips = [with_silence(example.complete, silence), with_silence(example.cut, silence)]
            complete, cut = model.predict_batch([last_window(clip) for clip in clips])
            row[f"complete@{silence:g}ms"] = round(float(complete), 3)
            row[f"cut@{silence:g}ms"] = round(float(cut), 3)
        rows.append(row)
    return rows


def transcript_cues(voice: str) -> list[dict[str, Any]]:
    """What tiny.en (the embedded STT) hears in each clip, as the speculative
    transcript would: 200 ms of lead-in, the words, 200 ms of silence."""
    import asyncio

    from pipeline.engines.whisper import WhisperSTT

    async def transcribe_all() -> list[dict[str, Any]]:
        stt = WhisperSTT()
        rows = []
        try:
            for example in turn_examples(voice):
                row: dict[str, Any] = {"prefix": example.prefix}
                for kind, audio in (("complete", example.complete), ("cut", example.cut)):
                    lead_in = np.zeros(3200, np.float32)
                    clip = np.concatenate([lead_in, with_silence(audio, CUE_SILENCE_MS)])
                    text = (await stt.transcribe(clip)).text
                    row[f"{kind}_transcript"] = text
                    row[f"{kind}_ends_open"] = ends_open(text)
                rows.append(row)
        finally:
            stt.close()
        return rows

    return asyncio.run(transcribe_all())


def print_cue_summary(rows: list[dict[str, Any]], cues: list[dict[str, Any]]) -> None:
    """Complete questions the first question would end, and cuts it would hold,
    by the model alone and by the model with the transcript cue."""
    key = f"@{CUE_SILENCE_MS:g}ms"
    for name, use_words in (("model alone", False), ("model + transcript cue", True)):
        ended_complete = held_cut = 0
        for row, cue in zip(rows, cues, strict=True):
            for kind in ("complete", "cut"):
                ends = row[f"{kind}{key}"] >= 0.5 and not (use_words and cue[f"{kind}_ends_open"])
                if kind == "complete":
                    ended_complete += ends
                else:
                    held_cut += not ends
        print(
            f"{name}: after {CUE_SILENCE_MS:g} ms, complete questions ended "
            f"{ended_complete}/{len(rows)}, cut ones held {held_cut}/{len(rows)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--blas-threads", default="",
        help="numpy's BLAS thread counts to alternate, e.g. default,1 (default: leave it)",
    )
    parser.add_argument("--examples", action="store_true", help="print the example table instead")
    parser.add_argument("--silences", default="100,200,400,700,1000,1500")
    parser.add_argument("--voice", choices=["piper", "espeak"], default="piper")
    parser.add_argument(
        "--transcripts", action="store_true", help="with --examples: the transcript cue too"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.examples:
        silences = [float(value) for value in args.silences.split(",")]
        model = SmartTurnModel(threads=1)
        if CUE_SILENCE_MS not in silences:
            silences.append(CUE_SILENCE_MS)
        rows = example_table(model, silences, args.voice)
        report["examples"] = rows
        for row in rows:
            complete = " ".join(f"{row[f'complete@{s:g}ms']:.2f}" for s in silences)
            cut = " ".join(f"{row[f'cut@{s:g}ms']:.2f}" for s in silences)
            print(f"complete {complete} | cut {cut} | {row['prefix']}")
        for silence in silences:
            complete_p = [row[f"complete@{silence:g}ms"] for row in rows]
            cut_p = [row[f"cut@{silence:g}ms"] for row in rows]
            print(
                f"silence {silence:g} ms: complete >= 0.5 in {sum(p >= 0.5 for p in complete_p)}"
                f"/{len(rows)}, cut < 0.5 in {sum(p < 0.5 for p in cut_p)}/{len(rows)}, "
                f"cut below its complete in "
                f"{sum(c < f for f, c in zip(complete_p, cut_p, strict=True))}/{len(rows)}"
            )
        if args.transcripts:
            cues = transcript_cues(args.voice)
            report["transcripts"] = cues
            for cue in cues:
                print(
                    f"heard {cue['complete_transcript']!r} (open: {cue['complete_ends_open']}) "
                    f"| cut {cue['cut_transcript']!r} (open: {cue['cut_ends_open']})"
                )
            print_cue_summary(rows, cues)
    else:
        batches = [int(value) for value in args.batches.split(",")]
        threads = [int(value) for value in args.threads.split(",")]
        models = {count: SmartTurnModel(threads=count) for count in threads}
        report["load_average_before"] = os.getloadavg()
        blas = [
            None if value == "default" else int(value)
            for value in args.blas_threads.split(",") if value
        ]
        report["cost"] = measure_cost(models, batches, args.rounds, blas_threads=blas or None)
        report["load_average_after"] = os.getloadavg()
        print(
            f"load average before {report['load_average_before']}, "
            f"after {report['load_average_after']}"
        )
        for row in report["cost"]:
            print(
                f"BLAS threads {row['blas_threads']}, "
                f"threads {row['threads']} batch {row['batch']}: per request "
                f"features {row['features_ms_per_request_p50']} ms "
                f"(CPU {row['features_cpu_ms_per_request_p50']} ms) + model "
                f"{row['model_ms_per_request_p50']} ms (p50 of {row['rounds']} rounds; "
                f"model min {row['model_ms_per_request_min']} ms, "
                f"model CPU time {row['model_cpu_ms_per_request_p50']} ms, "
                f"whole request's CPU time {row['total_cpu_ms_per_request_p50']} ms)"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
