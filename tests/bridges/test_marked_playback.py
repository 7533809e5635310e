"""The telephony bridge's ledger of sent, acknowledged and kept reply audio
(pipeline/marked_playback.py): which chunks a pause keeps and a resume re-sends."""

from __future__ import annotations

import pytest

from pipeline import marked_playback
from pipeline.marked_playback import MarkedPlayback, Send, mark_name, read_mark


def _sent(result: Send | str) -> Send:
    assert isinstance(result, Send), result
    return result


def _three_chunks(ledger: MarkedPlayback) -> list[Send]:
    return [_sent(ledger.add("resp_a", bytes([i]) * 800, 100.0)) for i in range(3)]


def test_marks_say_how_far_into_the_reply_and_acknowledge_in_order() -> None:
    ledger = MarkedPlayback()
    sends = _three_chunks(ledger)
    assert [read_mark(s.mark) for s in sends] == [
        ("resp_a", 100.0), ("resp_a", 200.0), ("resp_a", 300.0)
    ]
    assert ledger.acknowledge(sends[0].mark) == ("resp_a", 100.0)
    assert ledger.unheard_ms("resp_a") == 200.0
    assert ledger.acknowledge(sends[0].mark) is None  # once only
    assert ledger.acknowledge("someone else's mark") is None
    assert ledger.acknowledge(mark_name("resp_other", 100.0)) is None


def test_a_pause_keeps_the_unacknowledged_chunks_and_a_resume_resends_them() -> None:
    ledger = MarkedPlayback()
    sends = _three_chunks(ledger)
    assert ledger.acknowledge(sends[0].mark) == ("resp_a", 100.0)
    assert ledger.pause("resp_a") == 100.0
    # The clear returns the pending marks unplayed: they are not what was heard.
    assert ledger.acknowledge(sends[1].mark) is None
    assert ledger.acknowledge(sends[2].mark) is None
    assert ledger.heard_ms("resp_a") == 100.0
    # Audio made while paused is held, not sent.
    assert ledger.add("resp_a", b"\x07" * 400, 50.0) == "held"
    resent = ledger.resume("resp_a")
    assert [s.payload for s in resent] == [sends[1].payload, sends[2].payload, b"\x07" * 400]
    assert [read_mark(s.mark) for s in resent] == [
        ("resp_a", 200.0), ("resp_a", 300.0), ("resp_a", 350.0)
    ]
    # Fresh names: a returned mark of the first send can never count for the re-send.
    assert not {s.mark for s in resent} & {s.mark for s in sends}
    assert ledger.acknowledge(sends[2].mark) is None
    assert ledger.acknowledge(resent[1].mark) == ("resp_a", 300.0)
    assert ledger.acknowledge(resent[0].mark) is None  # covered by the later mark
    assert ledger.unheard_ms("resp_a") == 50.0
    assert ledger.resume("resp_a") == []  # not paused


def test_a_second_pause_resends_from_the_mark_acknowledged_since() -> None:
    ledger = MarkedPlayback()
    sends = _three_chunks(ledger)
    ledger.pause("resp_a")
    first = ledger.resume("resp_a")
    assert len(first) == 3
    assert ledger.acknowledge(first[0].mark) == ("resp_a", 100.0)
    assert ledger.pause("resp_a") == 100.0
    assert ledger.acknowledge(first[1].mark) is None
    second = ledger.resume("resp_a")
    assert [s.payload for s in second] == [sends[1].payload, sends[2].payload]
    assert not {s.mark for s in second} & {s.mark for s in first}


def test_drop_forgets_the_reply_and_says_what_was_heard() -> None:
    ledger = MarkedPlayback()
    sends = _three_chunks(ledger)
    ledger.acknowledge(sends[1].mark)
    ledger.pause("resp_a")
    assert ledger.drop("resp_a") == 200.0
    assert ledger.resume("resp_a") == []
    assert ledger.acknowledge(sends[2].mark) is None
    assert ledger.unheard_ms("resp_a") == 0.0


def test_kept_audio_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marked_playback, "MAX_UNHEARD_MS", 250.0)
    ledger = MarkedPlayback()
    _sent(ledger.add("resp_a", b"\x01" * 800, 100.0))
    _sent(ledger.add("resp_a", b"\x01" * 800, 100.0))
    assert ledger.add("resp_a", b"\x01" * 800, 100.0) == "dropped"
    assert ledger.unheard_ms("resp_a") == 200.0
    # Only a few replies are followed: an old one's state goes.
    for n in range(marked_playback.MAX_REPLIES):
        _sent(ledger.add(f"resp_{n}", b"\x01", 1.0))
    assert ledger.unheard_ms("resp_a") == 0.0


def test_mark_names_of_resends_read_back() -> None:
    assert read_mark(mark_name("resp_a", 12.5, 2)) == ("resp_a", 12.5)
    assert read_mark("resp_a:12.5/x") is None
    assert read_mark("resp_a:") is None
