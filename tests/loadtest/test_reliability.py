"""The reliability measurement (``python -m loadtest.reliability``) in its quick mode.

It runs most scenarios in-process, as the CLI does, and checks the report's
structure and the server's own rules (the invariants each scenario reports) —
never a timing, which depends on the machine. ``shutdown`` (two child servers)
is left out to keep this well under a minute: tests/e2e/test_shutdown.py covers
the same behaviour, and the full run measures it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from loadtest.abusers import ABUSERS, EXPECTED_CLOSES, error_provoking_frames
from loadtest.reliability import SCENARIOS, flatten, main
from loadtest.speech import espeak_available

QUICK = [name for name in SCENARIOS if name != "shutdown"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not espeak_available():
        pytest.fail("espeak-ng is required (make test installs it)")
    out = tmp_path_factory.mktemp("reliability") / "report.json"
    rc = main(["--quick", "--only", ",".join(QUICK), "--json", str(out)])
    report: dict[str, Any] = json.loads(out.read_text())
    report["rc"] = rc
    return report


def _failed(report: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: [f"{c['invariant']}: {c['detail']}" for c in entry["invariants"] if not c["passed"]]
        + ([entry["error"]] if entry["error"] else [])
        for name, entry in report["scenarios"].items()
        if not entry["passed"]
    }


def test_every_scenario_is_reported_with_settings_figures_and_invariants(
    report: dict[str, Any],
) -> None:
    assert list(report["scenarios"]) == QUICK
    assert report["quick"] is True
    assert report["command"].startswith("python -m loadtest.reliability --quick")
    for name, entry in report["scenarios"].items():
        assert {"passed", "duration_s", "settings", "figures", "invariants",
                "server_tracebacks", "error"} <= entry.keys(), name
        assert entry["settings"], name
        assert entry["figures"], name
        assert len(entry["invariants"]) >= 2, name  # its own rule(s) and "no traceback"
        assert all(isinstance(row[0], str) for row in flatten(entry["figures"]))


def test_every_invariant_holds_and_no_server_logged_a_traceback(report: dict[str, Any]) -> None:
    assert _failed(report) == {}
    assert report["passed"] is True and report["rc"] == 0
    for name, entry in report["scenarios"].items():
        assert entry["server_tracebacks"] == [], name


def test_refusals_are_measured_and_counted(report: dict[str, Any]) -> None:
    limit = report["scenarios"]["session_limit"]["figures"]
    assert limit["refused_count"] == limit["attempts_beyond_limit_count"] > 0
    assert limit["refusals_counted_in_metrics"] >= limit["refused_count"]
    assert limit["retry_after_header_s"] == ["10"]
    assert limit["refusal_latency_ms"]["n"] == limit["refused_count"]
    assert limit["admitted_after_hangup_ms"] is not None

    admission = report["scenarios"]["admission"]["figures"]
    assert admission["refused_count"] == admission["attempts_during_refusal_count"] > 0
    assert admission["readyz_status"] == 503

    security = report["scenarios"]["security"]["figures"]
    for case in ("no_credential", "wrong_key", "expired_token", "bad_origin", "unsigned_twilio"):
        assert security[f"{case}_statuses"] == [403], case
    assert all(count > 0 for count in security["refusals_counted"].values())


def test_limits_and_faults_report_what_the_server_did(report: dict[str, Any]) -> None:
    scenarios = report["scenarios"]
    flood = scenarios["frame_flood"]["figures"]
    assert flood["eager"]["too_many_frames_errors_count"] >= 1
    assert flood["eager"]["frames_dropped_count"] > 0 and flood["eager"]["call_kept"] is True
    assert flood["eager_counted_as_flood_count"] == 0
    assert flood["first_flood"]["close_code"] == 1008
    assert flood["first_flood"]["last_error_code"] == "too_many_frames"
    assert flood["flood_close_codes"] == ["1008"]
    assert flood["flood_disconnects_counted_count"] == flood["flooding_calls_count"] >= 1
    assert flood["new_call_after_flood"] == "completed"
    assert scenarios["audio_flood"]["figures"]["audio_rate_exceeded_errors_count"] >= 1
    assert scenarios["oversized"]["figures"]["hard_limit_close_codes"] == ["1009"]
    assert scenarios["idle_timeout"]["figures"]["idle_close_codes"] == ["1000"]
    faults = scenarios["llm_faults"]["figures"]
    assert faults["status_503"]["requests_count"] == 3
    assert faults["status_503"]["apology_spoken"] is True
    assert faults["refused"]["next_turn"] == "completed"
    engines = scenarios["engine_faults"]["figures"]
    assert engines["llm_value_error"]["error"] == ["llm_failed/permanent"]
    for stage, figures in scenarios["disconnects"]["figures"].items():
        assert figures["tasks_back_to_baseline_after_ms"] is not None, stage
    slow = scenarios["slow_reader"]["figures"]
    assert slow["pause_reply_reason"] == "client_too_slow"
    assert slow["stuck_audio_frames_dropped_count"] > 0
    assert slow["stuck_until_disconnected_s"] is not None


def test_an_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "session_limit,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_the_table_names_every_figure(report: dict[str, Any]) -> None:
    from io import StringIO

    from loadtest.reliability import print_table

    out = StringIO()
    print_table(report, out)
    text = out.getvalue()
    for name, entry in report["scenarios"].items():
        assert f"{name} [PASS" in text
        for key, _ in flatten(entry["figures"]):
            assert key in text, key


def test_every_abuser_ran_beside_the_callers_and_none_was_cut_off(report: dict[str, Any]) -> None:
    abuse = report["scenarios"]["abuse_impact"]["figures"]
    assert list(abuse["abusers"]) == list(ABUSERS)
    for name, figures in abuse["abusers"].items():
        abuser = figures["abuser"]
        assert abuser["connections_count"] >= 1 and abuser["frames_sent_count"] > 0, name
        assert not abuser["crashed"], name
        assert set(abuser["closed_by_server"]) <= EXPECTED_CLOSES.get(name, set()), name
        assert {"others_latency_with_ms", "others_latency_without_ms",
                "others_latency_p95_ratio"} <= figures.keys(), name
    # Each of its frames provokes a different error, each code within its own allowance.
    assert set(abuse["abusers"]["error_frames"]["abuser"]["errors_received"]) == set(
        error_provoking_frames())
    assert abuse["normal_turns_count"] >= 1
    assert abuse["normal_turns_not_completed_count"] == 0
    assert abuse["normal_error_events"] == {} and abuse["normal_failures"] == []
