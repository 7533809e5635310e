"""The GPU capacity model's arithmetic (docs/deploy-gpu.md prints its table)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from loadtest import capacity_model
from loadtest.capacity_model import CONFIGURATIONS, Inputs, calls_per_gpu, stream_overhead


def test_streaming_overhead_counts_the_prompt_and_context_frames() -> None:
    inputs = Inputs()
    # 10 s prompt = 500 frames; window 2 * (50 + 25 + 3) = 156; output 50 frames:
    # 13.12 per output frame, against (500 + 500) / 500 = 2 for a whole 10 s utterance.
    assert stream_overhead(inputs) == pytest.approx(656 / 50 / 2)
    assert stream_overhead(replace(inputs, prompt_s=3.0)) == pytest.approx(306 / 50 / 2)


def test_calls_per_gpu_is_utilisation_over_gpu_time_per_call_second() -> None:
    inputs = Inputs(h200_speedup=1.0, our_t3_efficiency=1.0, unbatched_s3_efficiency=1.0)
    best = CONFIGURATIONS[-1]
    row = calls_per_gpu(inputs, best)
    t3 = inputs.t3_turbo_s_per_audio_s
    s3 = inputs.s3_turbo_s_per_audio_s * stream_overhead(replace(inputs, prompt_s=3.0))
    busy = 0.4 * (t3 + s3) + 0.4 * inputs.whisper_s_per_audio_s
    assert row["gpu_ms_per_call_s"] == pytest.approx(busy * 1000)
    assert row["calls_per_gpu"] == pytest.approx(0.7 / busy)
    # Twice the GPU, twice the calls.
    double = calls_per_gpu(replace(inputs, h200_speedup=2.0), best)["calls_per_gpu"]
    assert double == pytest.approx(2 * row["calls_per_gpu"])


def test_each_lever_adds_calls_and_the_table_is_written(tmp_path: Path) -> None:
    rows = capacity_model.table(Inputs())
    calls = [row["calls_per_gpu"] for row in rows]
    assert calls == sorted(calls) and calls[0] < calls[-1]
    out = tmp_path / "model.json"
    assert capacity_model.main(["--set", "h200_speedup=4", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["inputs"]["h200_speedup"] == 4.0
    assert written["rows"][-1]["calls_by_speedup"]["4.0"] == pytest.approx(
        written["rows"][-1]["calls_per_gpu"]
    )
    with pytest.raises(SystemExit):
        capacity_model.main(["--set", "speed=3"])
