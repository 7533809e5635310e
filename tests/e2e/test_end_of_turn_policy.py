"""``session.turn.end_of_turn_policy`` over the real protocol: refused where the server
has no end-of-turn model, applied where it has one, and a turn ended by the model
before the silence rule could have ended it.

A real server on 127.0.0.1 with the bench STT/LLM/TTS, the real Silero VAD and the
real Smart Turn model; the caller speaks a Piper question over ``input_audio.append``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import numpy as np
import pytest
from websockets.asyncio.client import connect

from agent.config import Settings
from agent.metrics import SMART_TURN_INFERENCE
from loadtest.harness import bench_engines
from loadtest.turn_examples import turn_examples, with_silence
from loadtest.turns import scrape_cost
from pipeline.audio import float_to_pcm16
from pipeline.smart_turn import BatchedSmartTurnWorker, SmartTurnModel
from tests.e2e.conftest import start_server
from tests.e2e.raw import RawSession, subprotocols

serving = contextlib.contextmanager(start_server)
LEARNED = {"type": "session.update", "session": {"turn": {"end_of_turn_policy": "learned"}}}


async def test_learned_is_refused_without_the_model() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            assert session.created["session"]["turn"]["end_of_turn_policy"] == "silence"
            assert session.created["limits"]["end_of_turn_policies"] == ["silence"]
            await session.send(LEARNED)
            error = await session.wait_type("error", 10)
            assert error["code"] == "invalid_session" and "end-of-turn model" in error["message"]
            await session.send({"type": "session.update", "session": {}})
            updated = await session.wait_type("session.updated", 10)
            assert updated["session"]["turn"]["end_of_turn_policy"] == "silence"


@pytest.mark.parametrize("policy", ["learned", "silence"])
async def test_a_complete_question_ends_on_the_models_word(policy: str) -> None:
    """480 ms of silence after the question: the model ends the turn; the silence
    rule (500 ms) does not, so under it the turn only ends once more silence comes."""
    engines = replace(bench_engines(), smart_turn=BatchedSmartTurnWorker(SmartTurnModel()))
    question = next(e for e in turn_examples() if e.prefix == "What is the capital of")
    audio = np.concatenate([np.zeros(4800, np.float32), with_silence(question.complete, 480)])
    with serving(Settings(), engines) as server:
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            assert session.created["limits"]["end_of_turn_policies"] == ["silence", "learned"]
            await session.send(
                {"type": "session.update", "session": {"turn": {"end_of_turn_policy": policy}}}
            )
            updated = await session.wait_type("session.updated", 10)
            assert updated["session"]["turn"]["end_of_turn_policy"] == policy
            for start in range(0, len(audio), 320):
                pcm = float_to_pcm16(audio[start : start + 320])
                await session.send({"type": "input_audio.append", "audio": pcm})
                # 20 ms of audio every 12 ms: under the 2x real-time rate limit.
                await asyncio.sleep(0.012)
            if policy == "learned":
                await session.wait_type("transcript.final", 30)
                done = await session.wait_type("response.done", 60)
                assert done["status"] == "completed"
            else:
                await session.wait_type("input_audio.speech_stopped", 30)
                # Under silence the turn ends only with 500 ms of silence received.
                more_silence = float_to_pcm16(np.zeros(1600, np.float32))
                await session.send({"type": "input_audio.append", "audio": more_silence})
                await session.wait_type("transcript.final", 30)
            assert engines.smart_turn is not None
            asked = engines.smart_turn.requests_run
            assert (asked > 0) == (policy == "learned")
            # The model's cost, as `loadtest.turns --cost-metric` reads it off /metrics.
            cost = await asyncio.to_thread(scrape_cost, server.url, SMART_TURN_INFERENCE)
            assert cost is not None
            seconds, inferences = cost
            assert inferences == asked
            assert (seconds > 0.0) == (asked > 0)
