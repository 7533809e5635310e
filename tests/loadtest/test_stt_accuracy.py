"""Transcripts by beam width (``python -m loadtest.stt_accuracy``): its summary, and a
short run of the real Whisper engine on espeak-ng speech."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest.speech import espeak_available
from loadtest.stt_accuracy import Heard, main, render, summarize


def test_summary_is_per_beam_width_with_wer_by_voice_and_time() -> None:
    heard = [
        Heard(1, "How many legs does a spider have?", "a", "How many lenses does a spider have?",
              300.0),
        Heard(1, "Can penguins fly?", "b", "Can penguins fly?", 320.0),
        Heard(5, "How many legs does a spider have?", "a", "How many legs does a spider have?",
              310.0),
        Heard(5, "Can penguins fly?", "b", "can penguins fly", 330.0),
    ]
    summary = summarize(heard)
    assert list(summary) == ["1", "5"]
    assert summary["1"]["utterances"] == 2
    assert math.isclose(summary["1"]["wer"], 1 / 10)  # one word of ten substituted
    assert summary["1"]["wer_by_voice"] == {"a": pytest.approx(1 / 7), "b": 0.0}
    assert summary["5"]["wer"] == 0.0  # case and punctuation are normalised away
    assert summary["1"]["stt_ms_p50"] == 310.0
    table = render(summary)
    assert "| 1 | 2 | 10.0% |" in table and "| 5 | 2 | 0.0% |" in table


def test_a_short_run_transcribes_each_question_at_each_width(tmp_path: Path) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required (make test installs it)")
    out = tmp_path / "stt.json"
    assert main(["--beam-sizes", "1,3", "--voices", "espeak-us", "--questions", "2",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"1", "3"}
    assert len(report["heard"]) == 4
    assert all(item["transcript"] for item in report["heard"])
    # Clear espeak-ng speech of two short questions: most words come through.
    assert all(row["wer"] < 0.5 for row in report["summary"].values())
