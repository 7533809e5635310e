"""A call's events become its timeline (pipeline.records): no I/O, no server."""

from __future__ import annotations

from pipeline.events import (
    ErrorEvent,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    ResponseToolCall,
    ResponseToolResult,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.records import CallRecorder, EntryKind, RecordLimits, Redaction


def done(response_id: str, text: str, heard: str, *, status: ResponseStatus =
         ResponseStatus.COMPLETED, reason: str | None = None) -> ResponseDone:
    return ResponseDone(response_id, status, text, heard, audio_ms=900.0, played_ms=400.0,
                        timings={"llm_first_token_ms": 120.0, "stt_ms": 30.0}, reason=reason)


def test_a_spoken_turn_is_one_entry_with_the_words_it_answered_and_its_timings() -> None:
    recorder = CallRecorder("call_a")
    assert recorder.observe(TranscriptFinal("What time is it?", 100.0, 900.0), 10.0) == []
    assert recorder.observe(ResponseCreated("resp_1"), 10.5) == []
    assert recorder.observe(ResponseTextDelta("resp_1", "It is "), 10.6) == []
    (entry,) = recorder.observe(done("resp_1", "It is noon.", "It is noon."), 12.0)
    assert entry.kind is EntryKind.TURN
    assert (entry.call_id, entry.seq, entry.response_id) == ("call_a", 1, "resp_1")
    assert entry.user_text == "What time is it?"
    assert entry.inputs == [{"text": "What time is it?", "source": "speech",
                             "audio_start_ms": 100.0, "audio_end_ms": 900.0}]
    assert (entry.started_at, entry.ended_at) == (10.0, 12.0)
    assert (entry.status, entry.reply_text, entry.heard_text) == (
        "completed", "It is noon.", "It is noon.")
    assert entry.timings == {"llm_first_token_ms": 120.0, "stt_ms": 30.0}
    assert not entry.interrupted


def test_a_barge_in_keeps_what_was_heard_and_the_new_words_go_to_the_next_reply() -> None:
    recorder = CallRecorder("call_b")
    recorder.text_input("Tell me a story.", 1.0)
    recorder.observe(ResponseCreated("resp_1"), 1.1)
    recorder.observe(ResponseAudioPause("resp_1"), 2.0)
    # The caller's words arrive before the reply they cut is done.
    recorder.observe(TranscriptFinal("Stop, a shorter one.", 1500.0, 2500.0), 2.5)
    (cut,) = recorder.observe(done("resp_1", "Once upon a time there was", "Once upon",
                                   status=ResponseStatus.CANCELLED, reason="barge_in"), 2.6)
    recorder.observe(ResponseCreated("resp_2"), 2.7)
    (answer,) = recorder.observe(done("resp_2", "Fine.", "Fine."), 3.0)
    assert cut.user_text == "Tell me a story."
    assert cut.inputs[0]["source"] == "text"
    assert (cut.status, cut.reason, cut.heard_text, cut.pauses) == (
        "cancelled", "barge_in", "Once upon", 1)
    assert cut.interrupted
    assert answer.user_text == "Stop, a shorter one."
    assert [cut.seq, answer.seq] == [1, 2]


def test_a_backchannel_is_an_ignored_entry_and_the_reply_it_paused_records_the_resume() -> None:
    recorder = CallRecorder("call_c")
    recorder.observe(ResponseCreated("resp_1"), 1.0)
    recorder.observe(ResponseAudioPause("resp_1"), 1.2)
    recorder.observe(TranscriptFinal("mm-hmm", 500.0, 800.0), 1.4)
    (ignored,) = recorder.observe(TurnIgnored("backchannel", 500.0, 800.0), 1.4)
    recorder.observe(ResponseAudioResume("resp_1"), 1.5)
    (turn,) = recorder.observe(done("resp_1", "Hello there.", "Hello there."), 2.0)
    assert (ignored.kind, ignored.status, ignored.user_text) == (
        EntryKind.IGNORED, "backchannel", "mm-hmm")
    assert (turn.user_text, turn.pauses, turn.resumes) == ("", 1, 1)
    assert [ignored.seq, turn.seq] == [1, 2]


def test_tool_calls_and_errors_belong_to_their_turn_and_other_errors_stand_alone() -> None:
    recorder = CallRecorder("call_d")
    recorder.text_input("Where is order A7?", 1.0)
    recorder.observe(ResponseCreated("resp_1"), 1.0)
    recorder.observe(ResponseToolCall("resp_1", "call_1", "lookup_order",
                                      '{"order_id": "A7"}', "server"), 1.1)
    recorder.observe(ResponseToolResult("resp_1", "call_1", "lookup_order", "ok",
                                        "order A7 shipped", 12.5), 1.2)
    recorder.observe(ErrorEvent("tts_failed", "voice broke", response_id="resp_1",
                                category="transient"), 1.3)
    (alone,) = recorder.observe(ErrorEvent("malformed_frame", "not msgpack"), 1.4)
    (turn,) = recorder.observe(done("resp_1", "It shipped.", "It shipped."), 2.0)
    assert turn.tool_calls == [{"call_id": "call_1", "name": "lookup_order",
                                "arguments": '{"order_id": "A7"}', "executor": "server",
                                "status": "ok", "output": "order A7 shipped",
                                "elapsed_ms": 12.5}]
    assert turn.errors == [{"code": "tts_failed", "message": "voice broke",
                            "category": "transient", "fatal": False}]
    assert (alone.kind, alone.status, alone.seq) == (EntryKind.ERROR, "malformed_frame", 1)
    assert turn.seq == 2


def test_the_end_of_the_call_writes_the_turn_in_flight_as_incomplete() -> None:
    recorder = CallRecorder("call_e")
    recorder.text_input("Count to ten.", 1.0)
    recorder.observe(ResponseCreated("resp_1"), 1.0)
    recorder.observe(ResponseTextDelta("resp_1", "One, two,"), 1.1)
    recorder.text_input("Never mind.", 1.2)
    cut, unanswered = recorder.close(1.5)
    assert (cut.status, cut.reason, cut.reply_text, cut.user_text) == (
        "incomplete", "call_ended", "One, two,", "Count to ten.")
    assert (unanswered.kind, unanswered.user_text) == (EntryKind.IGNORED, "Never mind.")
    assert recorder.close(2.0) == []
    assert recorder.observe(ResponseCreated("resp_2"), 2.0) == []


def test_a_flood_is_bounded_in_entries_and_in_text() -> None:
    recorder = CallRecorder("call_f", limits=RecordLimits(max_text_chars=50, max_entries=3))
    kept = []
    for n in range(10):
        kept += recorder.observe(ErrorEvent("too_many_frames", "x" * 500), float(n))
    assert [entry.seq for entry in kept] == [1, 2, 3]
    assert recorder.dropped == 7
    assert len(kept[0].errors[0]["message"]) == 50


def test_redaction_hides_digits_and_emails_in_everything_stored() -> None:
    redact = Redaction.named(("digits", "emails"))
    recorder = CallRecorder("call_g", redaction=redact)
    recorder.observe(TranscriptFinal(
        "my card is 4111 1111 and mail jane.doe@example.com or bob at mail dot org, "
        "pin four one five nine", 0.0, 1.0), 1.0)
    recorder.observe(ResponseCreated("resp_1"), 1.0)
    recorder.observe(ResponseToolCall("resp_1", "c1", "lookup", '{"card": "4111"}', "server"), 1)
    (turn,) = recorder.observe(done("resp_1", "Card 4111 noted.", "Card 4111"), 2.0)
    assert turn.user_text == ("my card is #### #### and mail [email] or [email], "
                              "pin [digits]")
    assert (turn.reply_text, turn.heard_text) == ("Card #### noted.", "Card ####")
    assert turn.tool_calls[0]["arguments"] == '{"card": "####"}'
    assert Redaction.named(("emails",))("call 555, a@b.io") == "call 555, [email]"
    assert Redaction()("one or two, 42") == "one or two, 42"
