"""The learned end-of-turn policy inside a conversation: real Silero VAD and the real
Smart Turn model on real (Piper) speech; STT, LLM and TTS are the deterministic bench
engines, as in test_conversation.py.

The turn detector only runs on audio it receives, so what a test feeds bounds when a
turn can end: a turn that ends after 480 ms of received silence was ended by the
model (the silence rule needs 500 ms, the maximum 2000 ms).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest

from loadtest.turn_examples import turn_examples, with_silence
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.events import (
    Event,
    ResponseCreated,
    ResponseDone,
    SpeechStopped,
    TranscriptFinal,
)
from pipeline.smart_turn import BatchedSmartTurnWorker, SmartTurnModel
from pipeline.turn import TurnConfig
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.pipeline.test_conversation import Harness as ConversationHarness

LEARNED = SessionConfig(turn=TurnConfig(end_of_turn_policy="learned"), playback_grace_ms=0.0)


class Harness(ConversationHarness):
    default_timeout_s = 30.0  # the model's inference on a loaded machine


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return SmartTurnModel()


@pytest.fixture
async def workers(
    model: SmartTurnModel,
) -> AsyncIterator[tuple[BatchedVADWorker, BatchedSmartTurnWorker]]:
    vad = BatchedVADWorker(SileroVAD())
    smart_turn = BatchedSmartTurnWorker(model)
    await vad.start()
    await smart_turn.start()
    yield vad, smart_turn
    await smart_turn.stop()
    await vad.stop()


def make(
    vad: BatchedVADWorker,
    smart_turn: BatchedSmartTurnWorker | None,
    config: SessionConfig = LEARNED,
    stt: ScriptedSTT | None = None,
) -> Harness:
    events: list[Event] = []
    engines = Engines(
        stt=stt or ScriptedSTT(),
        llm=ScriptedLLM(),
        tts=ToneTTS(),
        vad=vad,
        smart_turn=smart_turn,
    )
    conversation = Conversation(engines, events.append, config)
    conversation.start()
    return Harness(conversation, events)


async def test_a_complete_question_ends_before_the_silence_rule_would(
    workers: tuple[BatchedVADWorker, BatchedSmartTurnWorker],
) -> None:
    """'What is the capital of Australia?' scores 0.99 at 200 ms of silence."""
    vad, smart_turn = workers
    question = next(e for e in turn_examples() if e.prefix == "What is the capital of")
    h = make(vad, smart_turn)
    try:
        h.feed(np.concatenate([np.zeros(4800, np.float32), with_silence(question.complete, 480)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone)
        assert len(h.of(TranscriptFinal)) == 1 and len(h.of(ResponseCreated)) == 1
        assert smart_turn.requests_run >= 1
    finally:
        await h.conversation.close()


async def test_the_silence_policy_never_asks_the_model(
    workers: tuple[BatchedVADWorker, BatchedSmartTurnWorker],
) -> None:
    vad, smart_turn = workers
    question = next(e for e in turn_examples() if e.prefix == "What is the capital of")
    h = make(vad, smart_turn, SessionConfig(playback_grace_ms=0.0))
    try:
        h.feed(np.concatenate([np.zeros(4800, np.float32), with_silence(question.complete, 600)]))
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert smart_turn.requests_run == 0 and smart_turn.requests_refused == 0
    finally:
        await h.conversation.close()


async def test_an_unfinished_sentence_is_held_past_the_silence_rule(
    workers: tuple[BatchedVADWorker, BatchedSmartTurnWorker],
) -> None:
    """'Where can I buy fresh bread and' … (1 s) … 'cheese around here?': one turn.
    The cut scores 0.01 at every silence up to 1.5 s, so the model keeps holding."""
    vad, smart_turn = workers
    example = next(e for e in turn_examples() if e.prefix == "Where can I buy fresh bread and")
    rest = example.complete[len(example.cut) :]
    stt = ScriptedSTT(["Where can I buy fresh bread and cheese around here?"])
    h = make(vad, smart_turn, stt=stt)
    try:
        h.feed(np.concatenate([np.zeros(4800, np.float32), with_silence(example.cut, 1000)]))
        h.feed(with_silence(rest, 2500))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone)
        finals = h.of(TranscriptFinal)
        assert len(finals) == 1, "the 1 s pause ended the turn"
        assert len(h.of(SpeechStopped)) >= 2  # the pause was seen, and held
    finally:
        await h.conversation.close()


async def test_without_a_model_the_learned_policy_falls_back_to_the_silence_rule(
    workers: tuple[BatchedVADWorker, BatchedSmartTurnWorker],
) -> None:
    vad, _ = workers
    question = next(e for e in turn_examples() if e.prefix == "What is the capital of")
    h = make(vad, None, replace(LEARNED, turn=replace(LEARNED.turn, end_of_turn_silence_ms=600)))
    try:
        h.feed(np.concatenate([np.zeros(4800, np.float32), with_silence(question.complete, 700)]))
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
    finally:
        await h.conversation.close()
