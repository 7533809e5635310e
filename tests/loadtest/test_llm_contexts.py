"""``python -m loadtest.llm_contexts`` on the packaged GGUF, at its smallest."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.llm_contexts import main


def test_the_benchmark_measures_both_sides_and_the_kept_contexts_read_less(
    tmp_path: Path,
) -> None:
    out = tmp_path / "contexts.json"
    assert main(["--calls", "2", "--rounds", "3", "--max-tokens", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["contexts_restored"] >= 2
    # Prompt tokens are counted, not timed: the kept contexts read only new words.
    assert report["on"]["prompt_tokens"]["n"] == report["off"]["prompt_tokens"]["n"] == 2
    assert report["on"]["prompt_tokens"]["p50"] < report["off"]["prompt_tokens"]["p50"]
    ahead = report["instructions_read_ahead"]
    assert ahead["on"]["prompt_tokens_p50"] < ahead["off"]["prompt_tokens_p50"] / 3
    assert ahead["on"]["first_token_ms"]["n"] == 3
    # A new call after a tool answer: from the base it reads almost nothing ahead.
    base = report["new_call_after_tool_answer"]
    assert base["on"]["read_ahead_ms"]["n"] == base["off"]["read_ahead_ms"]["n"] == 3
    assert base["on"]["prompt_tokens_p50"] < 20 < 200 < base["off"]["prompt_tokens_p50"]
    # Cues on: the read-ahead is the plain prompt a tool answer shares; no base needed.
    assert base["with_cues"]["plain_prompt_tokens_p50"] < 20
    assert base["with_cues"]["read_ahead_ms"]["n"] == 2
