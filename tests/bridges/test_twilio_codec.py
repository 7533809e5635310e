"""The Twilio Media Streams messages, parsed and built without a socket."""

from __future__ import annotations

import base64
import json

import pytest

from agent import telephony
from agent.telephony import Connected, Dtmf, Mark, Media, Start, Stop, TelephonyProtocolError

START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC1",
        "streamSid": "MZ1",
        "callSid": "CA1",
        "tracks": ["inbound"],
        "customParameters": {"api_key": "k"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": "MZ1",
}


def test_provider_messages_parse() -> None:
    assert telephony.parse(json.dumps({"event": "connected", "protocol": "Call"})) == Connected()
    assert telephony.parse(json.dumps(START)) == Start(
        "MZ1", "CA1", "audio/x-mulaw", 8000, {"api_key": "k"}, account_sid="AC1"
    )
    payload = base64.b64encode(b"\xff" * 160).decode()
    media = {"event": "media", "media": {"track": "inbound", "payload": payload}}
    assert telephony.parse(json.dumps(media)) == Media(b"\xff" * 160, "inbound")
    mark = {"event": "mark", "streamSid": "MZ1", "mark": {"name": "resp_1:100.0"}}
    assert telephony.parse(json.dumps(mark)) == Mark("resp_1:100.0")
    dtmf = {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}
    assert telephony.parse(json.dumps(dtmf)) == Dtmf("5")
    assert telephony.parse(json.dumps({"event": "stop", "stop": {}})) == Stop()
    assert telephony.parse(json.dumps({"event": "something_new"})) is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"no": "event"}),
        json.dumps({"event": "media", "media": {"payload": "***"}}),
        json.dumps({"event": "mark"}),
        json.dumps(["event"]),
    ],
)
def test_unreadable_messages_raise(text: str) -> None:
    with pytest.raises(TelephonyProtocolError):
        telephony.parse(text)


def test_outbound_messages_follow_the_convention() -> None:
    assert json.loads(telephony.media_message("MZ1", b"\x00\x01")) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": base64.b64encode(b"\x00\x01").decode()},
    }
    assert json.loads(telephony.mark_message("MZ1", "m")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "m"},
    }
    assert json.loads(telephony.clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_mark_names_carry_the_response_and_position() -> None:
    assert telephony.read_mark(telephony.mark_name("resp_abc", 1234.5)) == ("resp_abc", 1234.5)
    assert telephony.read_mark("someone else's mark") is None
    assert telephony.read_mark("resp:x") is None
    # Re-sent after a pause: a fresh name, the same position.
    assert telephony.read_mark(telephony.mark_name("resp_abc", 1.5, 1)) == ("resp_abc", 1.5)
