"""A phone call picks its voice with the TwiML's ``<Parameter name="voice">`` (a voice
of the server's, cloned ones included): the bridges take the voice library's voices
as ``/ws`` and ``/v1/realtime`` do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from websockets.asyncio.client import connect

from agent.config import Settings
from agent.telephony import TelephonySession
from loadtest.harness import bench_engines
from pipeline.engines.base import FloatAudio
from pipeline.engines.bench import ToneTTS
from tests.bridges.test_telephony import RATE, STREAM_SID, Provider, start_call
from tests.faults.support import serving, wait_until
from tests.speech import speak

pytestmark = [pytest.mark.filterwarnings("error")]


class TwoVoices(ToneTTS):
    def voices(self) -> Sequence[str]:
        return ["tone", "alto"]

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        self.used.append(voice)
        async for audio in super().synthesize(text, voice=voice):
            yield audio

    used: list[str | None]


@pytest.mark.parametrize(("asked", "speaks"), [("alto", "alto"), ("bass", None), ("", None)])
async def test_the_streams_voice_parameter_picks_the_calls_voice(
    asked: str, speaks: str | None
) -> None:
    tts = TwoVoices(ms_per_char=20.0)
    tts.used = []
    with serving(Settings(), bench_engines(tts=tts)) as server:
        url = server.url.replace("/ws", "/telephony/twilio")
        async with connect(url) as ws:
            call = Provider(ws)
            await start_call(call, {"voice": asked} if asked else None)
            try:
                await wait_until(lambda: bool(server.app_state.bridge_sessions), 30, "the call")
                (session,) = [s for s in server.app_state.bridge_sessions
                              if isinstance(s, TelephonySession)]
                assert session.conversation.config.voice == speaks
                call.say(speak("Hello, who is this?", RATE))  # the caller speaks
                await wait_until(lambda: bool(tts.used), 60, "the reply")
                assert set(tts.used) == {speaks}  # an unknown voice: the default speaks
            finally:
                await call.send({"event": "stop", "streamSid": STREAM_SID, "stop": {}})
                for task in call.tasks:
                    task.cancel()
