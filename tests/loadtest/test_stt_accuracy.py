"""Transcripts by recogniser (``python -m loadtest.stt_accuracy``): its summary, and
short runs of the real Whisper and Moonshine engines on espeak-ng speech."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest.speech import espeak_available
from loadtest.stt_accuracy import Heard, main, render, summarize, voice_family


def test_summary_is_per_recogniser_with_wer_by_voice_and_time() -> None:
    heard = [
        Heard("whisper", "How many legs does a spider have?", "a",
              "How many lenses does a spider have?", 300.0),
        Heard("moonshine", "How many legs does a spider have?", "a",
              "How many legs does a spider have?", 310.0),
        Heard("whisper", "Can penguins fly?", "b", "Can penguins fly?", 320.0),
        Heard("moonshine", "Can penguins fly?", "b", "can penguins fly", 330.0),
    ]
    summary = summarize(heard)
    assert list(summary) == ["whisper", "moonshine"]
    assert summary["whisper"]["utterances"] == 2
    assert math.isclose(summary["whisper"]["wer"], 1 / 10)  # one word of ten substituted
    assert summary["whisper"]["wer_by_voice"] == {"a": pytest.approx(1 / 7), "b": 0.0}
    assert summary["moonshine"]["wer"] == 0.0  # case and punctuation are normalised away
    assert summary["whisper"]["stt_ms_p50"] == 310.0
    table = render(summary)
    assert "| whisper | 2 | 10.0% |" in table and "| moonshine | 2 | 0.0% |" in table


def test_a_short_run_transcribes_each_question_at_each_width(tmp_path: Path) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required (make test installs it)")
    out = tmp_path / "stt.json"
    assert main(["--beam-sizes", "1,3", "--moonshine", "--voices", "espeak-us",
                 "--questions", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["summary"]) == ["whisper", "whisper-beam3", "moonshine"]
    assert len(report["heard"]) == 6
    assert all(item["transcript"] for item in report["heard"])
    # Clear espeak-ng speech of two short questions: most words come through.
    assert all(row["wer"] < 0.5 for row in report["summary"].values())


def test_the_turn_corpus_voices_are_grouped_by_kind() -> None:
    assert voice_family("joe") == "piper"
    assert voice_family("espeak:en-gb+m3:150:73") == "espeak-gb"
    assert voice_family("espeak:en-us:183:43") == "espeak-us"
