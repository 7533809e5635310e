"""The tool benchmark's scoring (the benchmark itself runs outside the suite)."""

from __future__ import annotations

import pytest

from loadtest.tool_accuracy import REQUESTS, Request, Result, judge, main, summarize


def test_a_request_is_right_with_the_needed_tool_and_fitting_arguments() -> None:
    booking = Request("book", "book_table", {"day": r"(?i)fri", "people": r"^4$"})
    assert judge(booking, [("book_table", '{"day": "Friday", "people": 4}')])
    assert not judge(booking, [("book_table", '{"day": "Friday", "people": 40}')])
    assert not judge(booking, [("book_table", '{"day": "Friday"}')])
    assert not judge(booking, [("order_status", '{"order_number": "4"}')])
    assert not judge(booking, [("book_table", "{broken")])
    assert not judge(booking, [])
    clock = Request("time?", "get_current_time")
    assert judge(clock, [("get_current_time", "{}")]) and judge(clock, [("get_current_time", "")])


def test_a_request_needing_nothing_is_right_only_without_a_call() -> None:
    chat = Request("a joke", None)
    assert judge(chat, []) and not judge(chat, [("get_current_time", "{}")])


def test_the_set_is_large_and_mixed_enough() -> None:
    builtin = [r for r in REQUESTS if not r.demo]
    assert len(builtin) >= 20
    assert sum(r.tool is not None for r in builtin) >= 8
    assert sum(r.tool is None for r in builtin) >= 8


def test_the_summary_separates_tool_turns_from_plain_ones() -> None:
    results = [
        Result("a", "en-us", 160, "get_current_time", called=[("get_current_time", "{}")],
               acoustic_ms=1500.0, right=True),
        Result("b", "en-us", 160, None, acoustic_ms=1000.0, right=True),
        Result("c", "en-us", 160, None, called=[("end_call", "{}")], acoustic_ms=1200.0),
        Result("d", "en-us", 160, "end_call", acoustic_ms=900.0),
    ]
    summary = summarize(results)
    assert summary["accuracy"] == 0.5
    assert summary["tool_recall"] == 0.5 and summary["false_calls"] == 0.5
    assert summary["latency_ms"]["tool_turns"]["n"] == 2
    assert summary["latency_ms"]["plain_turns"]["p50"] == 950.0
    assert summary["added_latency_ms"]["p50"] == 1350.0 - 950.0


def test_a_server_setting_must_be_a_voiceforge_variable() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--env", "PATH=/tmp", "--passes", "1"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["--env", "VOICEFORGE_TOOL_CUES"])
