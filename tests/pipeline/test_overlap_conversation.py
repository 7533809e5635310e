"""Pause, resume or cancel a reply the caller speaks over (protocol 1.1), in the orchestrator.

Real Silero VAD and real Whisper judge real (espeak-ng) speech; the LLM and TTS are
the deterministic ``bench`` engines, so the reply and its audio are known exactly.
A fake client reports where playback stood at each pause and clear.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.conversation import Conversation, SessionConfig
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.engines.whisper import WhisperSTT
from pipeline.events import (
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TurnIgnored,
)
from pipeline.vad import BatchedVADWorker
from tests.pipeline.test_conversation import make, question  # noqa: F401 (fixtures)
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")

REPLY = "The capital of France is Paris. It is a large city on the river Seine."
PLAYED_AT_PAUSE_MS = 700.0


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperSTT]:
    stt = WhisperSTT()
    yield stt
    stt.close()


def _client(conversation: Conversation, event: Event) -> None:
    """Where playback stood: reported at a pause and after a clear, as a client must."""
    if isinstance(event, ResponseAudioPause | ResponseAudioClear):
        conversation.report_played(event.response_id, PLAYED_AT_PAUSE_MS)


def _config(*, pause: bool) -> SessionConfig:
    # A grace past the clock's end of playback: the reply stays audible long
    # enough for the caller's speech to land on it.
    return SessionConfig(playback_pause=pause, playback_grace_ms=3000.0)


async def test_a_backchannel_pauses_then_resumes_and_the_reply_completes(
    vad: BatchedVADWorker, question: np.ndarray, whisper: WhisperSTT  # noqa: F811
) -> None:
    h = make(vad, stt=whisper, llm=ScriptedLLM(REPLY), tts=ToneTTS(), config=_config(pause=True),
             on_event=_client)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(0.8)]))
        first = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first, ResponseAudioDelta)
        rid = first.response_id
        h.feed(np.concatenate([speak("Okay."), silence(1.0)]))
        await h.wait_for(lambda e: isinstance(e, ResponseAudioPause))
        await h.wait_for(lambda e: isinstance(e, ResponseAudioResume))
        ignored = await h.wait_for(lambda e: isinstance(e, TurnIgnored))
        assert isinstance(ignored, TurnIgnored) and ignored.reason == "backchannel"
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone), timeout_s=60)
        assert isinstance(done, ResponseDone) and done.response_id == rid
        assert done.status is ResponseStatus.COMPLETED
        assert done.text_heard == REPLY
        pause_at = next(i for i, e in enumerate(h.events) if isinstance(e, ResponseAudioPause))
        resume_at = next(i for i, e in enumerate(h.events) if isinstance(e, ResponseAudioResume))
        assert pause_at < resume_at < h.events.index(done)
        # Nothing of the reply was sent while it was paused.
        assert not [e for e in h.events[pause_at:resume_at] if isinstance(e, ResponseAudioDelta)]
        assert not h.of(ResponseAudioClear)
        assert len(h.of(ResponseCreated)) == 1  # the "okay" was not answered
        messages = h.conversation.history.messages()
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[2]["content"] == REPLY
    finally:
        await h.conversation.close()


async def test_a_real_interruption_pauses_then_cancels_with_history_as_heard(
    vad: BatchedVADWorker, question: np.ndarray, whisper: WhisperSTT  # noqa: F811
) -> None:
    h = make(vad, stt=whisper, llm=ScriptedLLM(REPLY), tts=ToneTTS(), config=_config(pause=True),
             on_event=_client)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(0.8)]))
        first = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first, ResponseAudioDelta)
        rid = first.response_id
        h.feed(np.concatenate([speak("Wait, what about Lyon?"), silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone) and e.response_id == rid)
        assert isinstance(done, ResponseDone)
        assert done.status is ResponseStatus.CANCELLED and done.reason == "barge_in"
        pause_at = next(i for i, e in enumerate(h.events) if isinstance(e, ResponseAudioPause))
        clear_at = next(i for i, e in enumerate(h.events) if isinstance(e, ResponseAudioClear))
        assert pause_at < clear_at < h.events.index(done)
        assert not h.of(ResponseAudioResume)
        assert not [
            e for e in h.events[pause_at:]
            if isinstance(e, ResponseAudioDelta) and e.response_id == rid
        ]
        # Heard: what played before the pause (700 ms of a 1860 ms six-word chunk).
        assert done.played_ms == PLAYED_AT_PAUSE_MS
        assert done.text_heard == "The capital"
        await h.wait_for(lambda e: isinstance(e, ResponseDone) and e.response_id != rid, 60)
        messages = h.conversation.history.messages()
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert messages[2]["content"] == "The capital"
        assert "wait" in messages[3]["content"].lower()
    finally:
        await h.conversation.close()


async def test_without_playback_pause_nothing_is_paused(
    vad: BatchedVADWorker, question: np.ndarray, whisper: WhisperSTT  # noqa: F811
) -> None:
    """A 1.0 client: the "okay" is long enough to barge in, and it does, as before."""
    h = make(vad, stt=whisper, llm=ScriptedLLM(REPLY), tts=ToneTTS(), config=_config(pause=False),
             on_event=_client)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(0.8)]))
        first = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first, ResponseAudioDelta)
        h.feed(np.concatenate([speak("Okay."), silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.reason == "barge_in"
        assert not h.of(ResponseAudioPause) and not h.of(ResponseAudioResume)
    finally:
        await h.conversation.close()


class MishearsShortSpeech(ScriptedSTT):
    """Whisper's reading of a Piper "mm-hmm" ("MMU") for any clip under 1.2 s, the
    question otherwise: what the verdict sees is then decided by the audio alone."""

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        text = "MMU" if len(audio) < 1.2 * 16000 else "What is the capital of France?"
        return Transcript(text, len(audio) / 16.0, 0.0)


@pytest.mark.parametrize(
    ("words", "resumed"),
    [
        ("right", True),  # 410 ms of sound: a short burst, resumed
        ("the other thing", False),  # 880 ms of sound, same transcript: cancelled
    ],
)
async def test_a_misheard_burst_is_judged_by_its_voiced_time(
    vad: BatchedVADWorker, question: np.ndarray, words: str, resumed: bool  # noqa: F811
) -> None:
    h = make(vad, stt=MishearsShortSpeech(), llm=ScriptedLLM(REPLY), tts=ToneTTS(),
             config=_config(pause=True), on_event=_client)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(0.8)]))
        first = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first, ResponseAudioDelta)
        rid = first.response_id
        h.feed(np.concatenate([speak(words), silence(1.0)]))
        await h.wait_for(lambda e: isinstance(e, ResponseAudioPause))
        done = await h.wait_for(
            lambda e: isinstance(e, ResponseDone) and e.response_id == rid, timeout_s=60
        )
        assert isinstance(done, ResponseDone)
        if resumed:
            assert h.of(ResponseAudioResume)
            assert done.status is ResponseStatus.COMPLETED and done.text_heard == REPLY
        else:
            assert not h.of(ResponseAudioResume)
            assert done.status is ResponseStatus.CANCELLED and done.reason == "barge_in"
    finally:
        await h.conversation.close()
