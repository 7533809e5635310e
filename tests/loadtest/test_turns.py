"""The turn-taking benchmark: how it scores a trial, and a ``--quick`` run over the real
protocol against ``voiceforge serve --profile bench`` (the real Silero VAD decides the
turns; the engines are scripted). It checks the report's structure and the figures'
consistency — never their values, which depend on the machine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest.latency import spawned_server
from loadtest.speech import espeak_available
from loadtest.turn_report import policy_figures
from loadtest.turns import (
    Policy,
    Trial,
    analyse_turn,
    interleave_kinds,
    main,
    model_cost,
    parse_cost_metric,
    parse_policies,
    schedule,
)
from pipeline.events import ResponseCreated, TranscriptFinal, TurnIgnored

LAST_SEGMENT_MS = 2000.0
LAST_SENT_AT = 100.0


def test_a_turn_ending_in_the_pause_is_a_cut_off() -> None:
    log = [
        (99.0, TranscriptFinal("my number is four one five", 500.0, 1300.0)),
        (99.1, ResponseCreated("resp_first")),
        (101.0, TranscriptFinal("two two three", 2000.0, 2900.0)),
        (101.1, ResponseCreated("resp_whole")),
    ]
    assert analyse_turn(log, LAST_SEGMENT_MS, LAST_SENT_AT) == (True, "resp_whole", False)


def test_one_turn_over_the_whole_utterance_is_not_a_cut_off() -> None:
    log = [
        (101.0, TranscriptFinal("my number is four one five two two three", 500.0, 2900.0)),
        (101.1, ResponseCreated("resp_whole")),
    ]
    assert analyse_turn(log, LAST_SEGMENT_MS, LAST_SENT_AT) == (False, "resp_whole", False)
    # Nothing decided yet: no reply to wait for, no cut-off.
    assert analyse_turn(log[:1], LAST_SEGMENT_MS, LAST_SENT_AT) == (False, None, False)


def test_a_reply_created_before_the_last_segment_was_sent_is_a_cut_off() -> None:
    # Whatever its transcript says, the server answered before the caller finished.
    log = [
        (99.5, ResponseCreated("resp_early")),
        (101.0, TranscriptFinal("the whole thing", 500.0, 2900.0)),
        (101.1, ResponseCreated("resp_whole")),
    ]
    assert analyse_turn(log, LAST_SEGMENT_MS, LAST_SENT_AT) == (True, "resp_whole", False)


def test_an_ignored_final_turn_has_no_reply() -> None:
    log = [
        (101.0, TranscriptFinal("", 500.0, 2900.0)),
        (101.1, TurnIgnored("no_words_recognized", 500.0, 2900.0)),
    ]
    assert analyse_turn(log, LAST_SEGMENT_MS, LAST_SENT_AT) == (False, None, True)


def test_policies_come_from_json_and_get_names() -> None:
    policies = parse_policies(
        '[{"end_of_turn_silence_ms": 300}, {"end_of_turn_policy": "learned",'
        ' "end_of_turn_threshold": 0.5},'
        ' {"name": "mine", "turn": {"end_of_turn_silence_ms": 650}}]'
    )
    assert [p.name for p in policies] == ["silence-300", "learned-0.5", "mine"]
    assert policies[2].turn == {"end_of_turn_silence_ms": 650}
    assert policies[2].session == {}
    paused = parse_policies(
        '[{"name": "p", "turn": {"end_of_turn_silence_ms": 500},'
        ' "session": {"playback_pause": true}}]'
    )
    assert paused[0].session == {"playback_pause": True}
    for bad in ("not json", "[]", "[1]", '[{"a": 1}, {"a": 1}]',
                '[{"turn": {}, "session": {"turn": {}}}]', '[{"turn": {}, "session": 3}]'):
        with pytest.raises(ValueError):
            parse_policies(bad)


@dataclass(frozen=True)
class _Item:
    name: str
    kind: str = "complete"


def test_every_item_runs_under_every_policy_interleaved() -> None:
    policies = [Policy("a", {}), Policy("b", {}), Policy("c", {})]
    items = [_Item("x"), _Item("y"), _Item("z"), _Item("w")]
    plan = schedule(items, policies)  # type: ignore[arg-type]
    assert len(plan) == 12
    # Item by item, each policy once, the first policy rotating.
    assert [p.name for _, p in plan[:6]] == ["a", "b", "c", "b", "c", "a"]
    for item in items:
        assert sorted(p.name for i, p in plan if i == item) == ["a", "b", "c"]


def test_each_policy_goes_first_as_often_within_every_kind() -> None:
    """Four kinds taking turns and two policies: rotating over the whole run would
    put the same policy first on every item of a kind."""
    policies = [Policy("a", {}), Policy("b", {})]
    kinds = ["paused", "complete", "backchannel", "interruption"]
    items = [_Item(f"{kind}-{n}", kind) for n in range(4) for kind in kinds]
    plan = schedule(items, policies)  # type: ignore[arg-type]
    for kind in kinds:
        firsts = [plan[i][1].name for i in range(0, len(plan), 2) if plan[i][0].kind == kind]
        assert sorted(firsts) == ["a", "a", "b", "b"], (kind, firsts)


def test_figures_count_only_valid_trials() -> None:
    trials = [
        Trial("p1", "paused", "joe", "s", cut_off=True, replied=True, latency_ms=900.0),
        Trial("p2", "paused", "joe", "s", cut_off=False, replied=True, latency_ms=700.0),
        Trial("c1", "complete", "joe", "s", replied=False),
        Trial("b1", "backchannel", "joe", "s", cancelled=True),
        Trial("i1", "interruption", "joe", "s", cancelled=False),
        Trial("i2", "interruption", "joe", "s", valid=False, note="reply ended"),
    ]
    figures = policy_figures(trials)
    assert figures["false_cut_offs"] == 1 and figures["paused"] == 2
    assert figures["false_cut_off_rate"] == 0.5
    assert figures["latency_paused_ms"]["p50"] == 700.0  # the cut-off one is left out
    assert figures["turns_without_reply"] == 1
    assert figures["backchannels_cancelling"] == 1
    assert figures["interruptions"] == 1 and figures["interruptions_missed"] == 1
    assert figures["invalid"] == 1


def test_turns_whose_reply_called_a_tool_are_counted_and_set_apart() -> None:
    trials = [
        Trial("c1", "complete", "joe", "s", replied=True, latency_ms=800.0, tool_calls=0),
        Trial("c2", "complete", "joe", "s", replied=True, latency_ms=2900.0, tool_calls=1),
        Trial("c3", "complete", "joe", "s", replied=True, latency_ms=1000.0, tool_calls=0),
        Trial("p1", "paused", "joe", "s", cut_off=False, replied=True, latency_ms=3100.0,
              tool_calls=2),
    ]
    figures = policy_figures(trials)
    assert figures["turns_calling_a_tool"] == 2
    assert figures["latency_complete_no_tool_ms"]["p50"] == 900.0
    assert figures["latency_complete_ms"]["p50"] == 1000.0  # every complete turn


def test_quick_run_over_the_real_protocol(tmp_path: Path) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required (make test installs it)")
    out, png = tmp_path / "turns.json", tmp_path / "curve.png"
    policies = json.dumps([
        {"end_of_turn_silence_ms": 300},
        {"end_of_turn_silence_ms": 800},
        {"name": "refused", "turn": {"end_of_turn_silence_ms": -1}},  # skipped, not fatal
    ])
    with spawned_server("bench", echo=False) as url:
        # The hook for a model's cost per inference, on a histogram the server has
        # today (the STT stage): any labelled histogram of seconds works the same way.
        code = main(["--url", url, "--quick", "--no-piper", "--policies", policies,
                     "--concurrency", "5", "--json", str(out), "--plot", str(png),
                     "--cost-metric", 'voiceforge_stage_seconds{stage="stt"}'])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["per_policy"]) == {"silence-300", "silence-800"}
    assert "refused" in report["skipped_policies"]
    assert "invalid_session" in report["skipped_policies"]["refused"]
    kinds = [item["kind"] for item in report["items"]]
    assert sorted(kinds) == ["backchannel", "complete", "interruption", "paused", "paused"]
    assert all(300 <= item["pause_ms"] <= 1500 for item in report["items"]
               if item["kind"] == "paused")
    assert len(report["trials"]) == len(kinds) * 2
    for name, figures in report["per_policy"].items():
        trials = [t for t in report["trials"] if t["policy"] == name]
        assert figures["trials"] == len(trials) == len(kinds), name
        valid = [t for t in trials if t["valid"]]
        assert figures["invalid"] == len(trials) - len(valid)
        for kind, key in (("paused", "paused"), ("backchannel", "backchannels"),
                          ("interruption", "interruptions")):
            assert figures[key] == sum(t["kind"] == kind for t in valid), (name, kind)
        for quantiles in (figures["latency_ms"], figures["interruption_stop_ms"]):
            if quantiles["p50"] is not None:
                assert quantiles["p50"] <= quantiles["p95"]
        assert figures["false_cut_offs"] == sum(
            bool(t["cut_off"]) for t in trials if t["valid"] and t["kind"] == "paused"
        )
    # On the same audio, a silence timer that ends a turn at 800 ms of silence ended it
    # at 300 ms too: silence-300 cuts off at least every utterance silence-800 does.
    cut = {
        name: {t["item"] for t in report["trials"]
               if t["policy"] == name and t["valid"] and t["cut_off"]}
        for name in ("silence-300", "silence-800")
    }
    assert cut["silence-800"] <= cut["silence-300"]
    assert png.stat().st_size > 0
    cost = report["model_cost"]
    assert cost is not None and cost["inferences"] >= 1 and cost["mean_ms"] >= 0


def test_cost_metric_selects_a_histogram_and_its_labels() -> None:
    assert parse_cost_metric("eot_seconds") == ("eot_seconds", {})
    assert parse_cost_metric('voiceforge_stage_seconds{stage="stt",x="1"}') == (
        "voiceforge_stage_seconds", {"stage": "stt", "x": "1"}
    )
    with pytest.raises(ValueError):
        parse_cost_metric("not a metric")
    assert model_cost((1.0, 10.0), (1.5, 20.0)) == {"inferences": 10, "mean_ms": 50.0}
    # Exposed, but nothing ran (a run under silence policies only).
    assert model_cost((1.0, 10.0), (1.0, 10.0)) == {"inferences": 0, "mean_ms": None}
    assert model_cost(None, (1.0, 10.0)) is None  # not exposed


def test_kinds_are_interleaved_so_a_prefix_covers_them_all() -> None:
    class Fake:
        def __init__(self, kind: str) -> None:
            self.kind = kind

    items = [Fake(k) for k in ["paused"] * 3 + ["complete"] * 2 + ["interruption"]]
    ordered = interleave_kinds(items)  # type: ignore[arg-type]
    assert [i.kind for i in ordered[:3]] == ["paused", "complete", "interruption"]
