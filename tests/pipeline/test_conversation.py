"""The orchestrator's mechanics, with exact timing.

Real Silero VAD on real (espeak-ng) speech drives the turns; the STT, LLM and TTS
are the deterministic ``bench`` engines so that ordering, cancellation, held
speculative replies and history truncation can be asserted exactly. The same
paths run with the real engines in tests/e2e.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.engines.whisper import WhisperSTT
from pipeline.errors import LLMUnavailableError, TTSError
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.vad import BatchedVADWorker
from tests.faults.support import wait_until
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")


class Harness:
    default_timeout_s = 20.0

    def __init__(self, conversation: Conversation, events: list[Event]) -> None:
        self.conversation = conversation
        self.events = events

    def feed(self, audio: np.ndarray) -> None:
        for start in range(0, len(audio), 320):
            assert self.conversation.feed_audio(audio[start : start + 320])

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout_s: float | None = None
    ) -> Event:
        deadline = time.monotonic() + (timeout_s or self.default_timeout_s)
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.01)
        raise TimeoutError(f"not seen; events: {[type(e).__name__ for e in self.events]}")

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("What is the capital of France?")


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperSTT]:
    stt = WhisperSTT()
    yield stt
    stt.close()



def make(
    vad: BatchedVADWorker,
    *,
    stt: ScriptedSTT | None = None,
    llm: ScriptedLLM | None = None,
    tts: ToneTTS | None = None,
    config: SessionConfig | None = None,
    on_event: Callable[[Conversation, Event], None] | None = None,
) -> Harness:
    events: list[Event] = []
    engines = Engines(stt=stt or ScriptedSTT(), llm=llm or ScriptedLLM(), tts=tts or ToneTTS(),
                      vad=vad)
    holder: list[Conversation] = []

    def emit(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(holder[0], event)

    conversation = Conversation(engines, emit, config)
    holder.append(conversation)
    conversation.start()
    return Harness(conversation, events)


async def test_a_turn_runs_in_order_and_lands_in_history(
    vad: BatchedVADWorker, question: np.ndarray
) -> None:
    h = make(vad, config=SessionConfig(playback_grace_ms=0))
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        kinds = [type(e) for e in h.events]
        order = [SpeechStarted, SpeechStopped, TranscriptFinal, ResponseCreated, ResponseDone]
        positions = [kinds.index(k) for k in order]
        assert positions == sorted(positions)
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        created = h.of(ResponseCreated)
        assert len(created) == 1
        rid = created[0].response_id  # type: ignore[attr-defined]
        deltas = [e for e in h.of(ResponseAudioDelta) if isinstance(e, ResponseAudioDelta)]
        assert [d.seq for d in deltas] == list(range(len(deltas)))
        assert all(d.response_id == rid and d.duration_ms <= 100.0 + 1e-6 for d in deltas)
        text = "".join(e.delta for e in h.of(ResponseTextDelta))  # type: ignore[attr-defined]
        assert text == done.text == done.text_heard
        assert h.conversation.history.messages()[1:] == [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": done.text},
        ]
        # The reply was started on the speculative transcript and held until the turn ended.
        assert done.timings["speculative_transcript"] == 1.0
        assert done.timings["speculative_response"] == 1.0
        assert done.timings["end_of_speech_to_first_audio_ms"] > 0
    finally:
        await h.conversation.close()


async def test_resuming_during_the_end_of_turn_wait_discards_the_held_reply(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM(tokens_per_second=200, first_token_ms=1)
    h = make(vad, llm=llm, stt=ScriptedSTT(["What is", "What is the capital of France?"]))
    try:
        first = speak("What is")
        rest = speak("the capital of France?")
        # espeak ends each clip with 350 ms of silence; with 50 ms more the pause stays
        # shorter than the 500 ms end-of-turn silence: one turn.
        h.feed(np.concatenate([silence(0.3), first]))
        await h.wait_for(lambda e: isinstance(e, SpeechStopped))
        # The speculative reply starts on the pause's transcript and runs, held.
        await wait_until(lambda: len(llm.requests) == 1, 20, "the held reply started")
        h.feed(np.concatenate([silence(0.05), rest, silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        created = h.of(ResponseCreated)
        assert len(created) == 1, "the discarded draft never reached the client"
        rid = created[0].response_id  # type: ignore[attr-defined]
        tagged = [e for e in h.events if hasattr(e, "response_id")]
        assert all(e.response_id == rid for e in tagged)  # type: ignore[attr-defined]
        assert llm.closed_early >= 1 or len(llm.requests) >= 2
        assert llm.requests[-1][-1]["content"] == "What is the capital of France?"
        finals = [e.text for e in h.of(TranscriptFinal)]  # type: ignore[attr-defined]
        assert finals == ["What is the capital of France?"]
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
    finally:
        await h.conversation.close()


async def test_barge_in_clears_then_cancels_and_history_keeps_what_was_played(
    vad: BatchedVADWorker, question: np.ndarray, whisper: WhisperSTT
) -> None:
    played_report_ms = 700.0

    def client(conversation: Conversation, event: Event) -> None:
        if isinstance(event, ResponseAudioClear):
            # What a client does right after flushing its playback buffer.
            conversation.report_played(event.response_id, played_report_ms)

    # Real Whisper: pauses between words make several speculative transcripts per turn.
    h = make(vad, on_event=client, stt=whisper)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(0.8)]))
        first_audio = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first_audio, ResponseAudioDelta)
        rid = first_audio.response_id
        h.feed(np.concatenate([speak("Stop, stop, wait a moment."), silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone) and e.response_id == rid)
        assert isinstance(done, ResponseDone)
        assert done.status is ResponseStatus.CANCELLED and done.reason == "barge_in"
        clear_at = next(i for i, e in enumerate(h.events) if isinstance(e, ResponseAudioClear))
        assert clear_at < h.events.index(done)
        assert not [
            e for e in h.events[clear_at:]
            if isinstance(e, ResponseAudioDelta) and e.response_id == rid
        ]
        # 700 ms into a 1860 ms first chunk of six words: two words were heard.
        assert done.played_ms == played_report_ms
        assert done.text_heard == "The capital"
        assert done.timings["played_source_client"] == 1.0
        await h.wait_for(lambda e: isinstance(e, ResponseDone) and e.response_id != rid)
        messages = h.conversation.history.messages()
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert "capital" in messages[1]["content"].lower()
        assert messages[2]["content"] == "The capital"
        assert "stop" in messages[3]["content"].lower()
    finally:
        await h.conversation.close()


async def test_a_turn_with_no_words_says_so(vad: BatchedVADWorker, question: np.ndarray) -> None:
    h = make(vad, stt=ScriptedSTT([""]))
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(1.0)]))
        ignored = await h.wait_for(lambda e: isinstance(e, TurnIgnored))
        assert isinstance(ignored, TurnIgnored) and ignored.reason == "no_words_recognized"
        assert not h.of(ResponseCreated)
    finally:
        await h.conversation.close()


async def test_llm_down_fails_the_response_and_the_session_goes_on(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM()
    # Down for the first try and both retries.
    llm.failures.extend(
        LLMUnavailableError("http://127.0.0.1:9/v1 refused the connection") for _ in range(3)
    )
    h = make(vad, llm=llm, config=SessionConfig(apology=""))
    try:
        h.conversation.send_text("Hello?")
        failed = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(failed, ResponseDone) and failed.status is ResponseStatus.FAILED
        assert len(llm.requests) == 3
        error = h.of(ErrorEvent)[0]
        assert isinstance(error, ErrorEvent)
        assert error.code == "llm_unavailable" and not error.fatal
        assert error.category == "transient"
        h.conversation.send_text("Hello again?")
        ok = await h.wait_for(
            lambda e: isinstance(e, ResponseDone) and e.status is ResponseStatus.COMPLETED
        )
        assert isinstance(ok, ResponseDone)
        # The failed turn's user text merges with the next: the LLM saw no reply between.
        assert llm.requests[-1][-1] == {"role": "user", "content": "Hello? Hello again?"}
    finally:
        await h.conversation.close()


async def test_close_mid_reply_stops_every_task(
    vad: BatchedVADWorker, question: np.ndarray
) -> None:
    llm = ScriptedLLM(tokens_per_second=5)
    h = make(vad, llm=llm)
    h.feed(np.concatenate([silence(0.3), question, silence(1.0)]))
    await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    await h.conversation.close()
    await asyncio.sleep(0)
    still = [t for t in before if not t.done() and "sess_" in t.get_name()]
    assert still == []
    assert llm.closed_early >= 1


class _KeepingLLM(ScriptedLLM):
    """An LLM whose per-call views keep something for their call (as llama.cpp does)."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []
        self.warmed: list[str] = []

    def for_session(self, session_id: str) -> _KeptView:
        return _KeptView(self, session_id)


class _KeptView(ScriptedLLM):
    def __init__(self, owner: _KeepingLLM, session_id: str) -> None:
        super().__init__()
        self._owner, self._session = owner, session_id

    def release(self) -> None:
        self._owner.released.append(self._session)

    def warm(self, instructions: str, tools: Sequence[dict[str, Any]] = ()) -> None:
        self._owner.warmed.append(instructions)


async def test_closing_a_call_releases_what_the_llm_kept_for_it(vad: BatchedVADWorker) -> None:
    llm = _KeepingLLM()
    h = make(vad, llm=llm)
    assert llm.released == []
    await h.conversation.close()
    await h.conversation.close()  # closing twice releases once
    assert llm.released == [h.conversation.session_id]


async def test_new_instructions_are_handed_to_the_llm_to_read_ahead(
    vad: BatchedVADWorker,
) -> None:
    llm = _KeepingLLM()
    h = make(vad, llm=llm)
    try:
        config = h.conversation.config
        h.conversation.update(replace(config, temperature=0.1))  # same instructions
        h.conversation.update(replace(config, instructions="Answer like a pirate."))
        h.conversation.update(replace(config, instructions="Answer like a pirate."))
        assert llm.warmed == ["Answer like a pirate."]
    finally:
        await h.conversation.close()


class _YieldingLLM(ScriptedLLM):
    """Records when the runner asks the LLM to stand aside, and for what."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(tokens_per_second=200)
        self.log = log

    def pause_generation(self) -> None:
        self.log.append("pause")

    def resume_generation(self) -> None:
        self.log.append("resume")


class _LoggingTTS(ToneTTS):
    def __init__(self, log: list[str], fail: bool = False) -> None:
        super().__init__()
        self.log, self.fail = log, fail

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        self.log.append(f"tts:{text.split()[0]}")
        if self.fail:
            raise TTSError("tts down", transient=False)
        async for audio in super().synthesize(text, voice=voice):
            self.log.append("audio")
            yield audio


async def test_the_llm_stands_aside_until_the_first_chunk_is_heard(
    vad: BatchedVADWorker,
) -> None:
    log: list[str] = []
    h = make(vad, llm=_YieldingLLM(log), tts=_LoggingTTS(log))
    try:
        h.conversation.send_text("Where is Paris?")
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
    finally:
        await h.conversation.close()
    first_tts = log.index("tts:The")
    assert log[first_tts - 1] == "pause"  # paused as the first chunk went to TTS
    assert log[first_tts + 1 : first_tts + 3] == ["audio", "resume"]  # resumed at its audio
    assert log.count("pause") == 1  # later chunks do not pause it


async def test_a_failed_first_chunk_leaves_the_llm_running(vad: BatchedVADWorker) -> None:
    log: list[str] = []
    h = make(vad, llm=_YieldingLLM(log), tts=_LoggingTTS(log, fail=True))
    try:
        h.conversation.send_text("Where is Paris?")
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
    finally:
        await h.conversation.close()
    assert log.count("pause") >= 1
    assert log[-1] == "resume"


async def test_first_chunk_priority_off_leaves_the_llm_alone(vad: BatchedVADWorker) -> None:
    log: list[str] = []
    config = SessionConfig(first_chunk_priority=False)
    h = make(vad, llm=_YieldingLLM(log), tts=_LoggingTTS(log), config=config)
    try:
        h.conversation.send_text("Where is Paris?")
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
    finally:
        await h.conversation.close()
    assert "audio" in log and "pause" not in log
