"""The tool-call threshold calibration (loadtest/call_confidence.py): its phrasings
reach the gate, stay apart from the held-out spoken benchmark, and are scored right."""

from __future__ import annotations

from typing import Any

from loadtest.call_confidence import ASKING, MENTIONING, right_at
from loadtest.tool_accuracy import REQUESTS
from pipeline.tools.builtin import builtin_tools
from pipeline.tools.cues import call_plausible

TOOLS: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]


def test_every_phrasing_holds_a_cue_and_none_is_the_benchmarks() -> None:
    assert all(call_plausible(phrase, TOOLS) for phrase in (*ASKING, *MENTIONING))
    spoken = {request.said.lower() for request in REQUESTS}
    assert not spoken & {phrase.lower() for phrase in (*ASKING, *MENTIONING)}
    assert len(set(ASKING)) == len(ASKING) and len(set(MENTIONING)) == len(MENTIONING)


def test_a_threshold_is_right_when_askers_reach_it_and_mentions_do_not() -> None:
    asking = {"a": 0.9, "b": 0.2}
    mentioning = {"c": 0.1, "d": 0.5}
    assert right_at(asking, mentioning, 0.8) == 3  # a, c, d
    assert right_at(asking, mentioning, 0.15) == 3  # a, b, c
    assert right_at(asking, mentioning, 0.6) == 3  # a, c, d
    assert right_at(asking, mentioning, 0.05) == 2  # a, b
