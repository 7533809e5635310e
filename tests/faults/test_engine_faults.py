"""Engines that raise: each failure costs one turn at most, never the call.

A real server (``/ws``) with the bench engines, instrumented (``ProbeSTT``,
``ProbeLLM``, ``ProbeTTS``) so a fault lands exactly where each test puts it; the
real Silero VAD finds the turns in real (espeak-ng) speech. After each fault the
same call answers the next turn, the error is counted in ``/metrics``, and
``/readyz`` names the failing engine until a turn succeeds again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import ServerMessage
from pipeline.chunker import ChunkerConfig, TextChunker
from pipeline.conversation import SessionConfig
from pipeline.errors import STTError, TTSError
from pipeline.events import ResponseStatus, TranscriptFinal, TurnIgnored
from tests.e2e.conftest import RunningServer
from tests.faults.support import (
    AudioSender,
    ProbeLLM,
    ProbeSTT,
    ProbeTTS,
    audio_of,
    bench_engines,
    collect_until_done,
    describe,
    done,
    error_deltas,
    errors,
    readyz,
    scrape,
    serving,
    text_of,
    tracebacks,
    typed_turn,
    wait_ready,
)
from tests.speech import speak

APOLOGY = SessionConfig().apology
TRANSCRIPT = "What is the capital of France?"
REPLY = "The capital of France is Paris. It is known for the Eiffel Tower."
RETRIES = Settings().engine_retries


def _first_chunk(text: str) -> str:
    chunker = TextChunker(ChunkerConfig())
    chunks = [c for word in text.split(" ") for c in chunker.push(word + " ")]
    chunks += chunker.flush()
    return chunks[0].display_text.strip()


FIRST_CHUNK = _first_chunk(REPLY)
""""The capital of France is Paris.": what the speech synthesiser gets first."""


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak(TRANSCRIPT)


@pytest.fixture(scope="module")
def stt() -> ProbeSTT:
    return ProbeSTT([TRANSCRIPT])


@pytest.fixture(scope="module")
def llm() -> ProbeLLM:
    return ProbeLLM(REPLY, tokens_per_second=200, first_token_ms=5)


@pytest.fixture(scope="module")
def tts() -> ProbeTTS:
    return ProbeTTS(ms_per_char=4.0, chunk_ms=50.0)


@pytest.fixture(scope="module")
def server(stt: ProbeSTT, llm: ProbeLLM, tts: ProbeTTS) -> Iterator[RunningServer]:
    # One call's failures are enough to report here (test_engine_health.py checks the
    # default, which wants failures from several calls).
    settings = Settings(engine_failure_sessions=1)
    with serving(settings, bench_engines(stt=stt, llm=llm, tts=tts)) as running:
        yield running


@pytest.fixture
async def client(
    server: RunningServer, stt: ProbeSTT, llm: ProbeLLM, tts: ProbeTTS
) -> AsyncIterator[VoiceForgeClient]:
    """A new call on a healthy server; one transcription per turn (no speculation)."""
    for faults in (stt.failures, llm.failures, llm.fail_after_words, tts.failures):
        faults.clear()
    tts.midway_on_call.clear()
    await wait_ready(server)
    with tracebacks() as logged:
        async with await VoiceForgeClient.connect(server.url) as connected:
            await connected.update_session(
                speculative_transcript=False, speculative_response=False
            )
            yield connected
    for faults in (stt.failures, llm.failures, llm.fail_after_words, tts.failures):
        faults.clear()
    # Engine errors are reported as error events, never as tracebacks in the log.
    assert not logged, describe(logged)


async def _spoken_turn(
    sender: AudioSender, speech: np.ndarray, *, dones: int = 1
) -> list[ServerMessage]:
    await sender.turn(speech)
    return await collect_until_done(sender.client, dones=dones)


async def _assert_failing(server: RunningServer, engine: str, code: str, category: str) -> None:
    status, body = await readyz(server)
    assert status == 503, body
    assert body["reasons"] == {f"{engine}_failing": f"{code} ({category})"}


def _answered(events: list[ServerMessage]) -> None:
    """A real answer, with nothing going wrong on the way."""
    answer = done(events)
    assert not errors(events), errors(events)
    assert answer.status is ResponseStatus.COMPLETED
    assert answer.text == REPLY
    assert answer.text_heard == REPLY
    assert "apology" not in answer.timings
    assert audio_of(events, answer.response_id)


# ------------------------------------------------------------------------- STT


async def test_a_transient_stt_error_is_retried_and_the_turn_answered(
    server: RunningServer, client: VoiceForgeClient, stt: ProbeSTT, question: np.ndarray
) -> None:
    before = await scrape(server.http)
    started = stt.started
    stt.failures.extend([STTError("decoder busy")])
    events = await _spoken_turn(AudioSender(client), question)
    _answered(events)
    assert [e.text for e in events if isinstance(e, TranscriptFinal)] == [TRANSCRIPT]
    assert stt.failures == []
    assert stt.started - started == 2  # the failed attempt and its retry
    assert error_deltas(before, await scrape(server.http)) == {}
    await wait_ready(server)


@pytest.mark.parametrize(
    ("failure", "category", "attempts"),
    [
        (STTError("model file vanished", transient=False), "permanent", 1),
        (RuntimeError("CUDA error: an illegal memory access"), "permanent", 1),
        (STTError("decoder busy"), "transient", 1 + RETRIES),
    ],
    ids=["permanent", "plain-exception", "transient-exhausted"],
)
async def test_a_failed_transcription_is_said_and_apologised_for(
    server: RunningServer,
    client: VoiceForgeClient,
    stt: ProbeSTT,
    question: np.ndarray,
    failure: Exception,
    category: str,
    attempts: int,
) -> None:
    before = await scrape(server.http)
    started = stt.started
    # One more failure than may be used: what is left shows how often it was tried.
    stt.failures.extend([failure] * (attempts + 1))
    sender = AudioSender(client)
    events = await _spoken_turn(sender, question)
    assert stt.started - started == attempts
    assert len(stt.failures) == 1
    stt.failures.clear()

    assert [(e.code, e.category, e.fatal) for e in errors(events)] == [
        ("stt_failed", category, False)
    ], errors(events)
    assert type(failure).__name__ in errors(events)[0].message or str(failure) in (
        errors(events)[0].message
    )
    ignored = [e for e in events if isinstance(e, TurnIgnored)]
    assert [e.reason for e in ignored] == ["stt_failed"]
    assert not [e for e in events if isinstance(e, TranscriptFinal)]
    apology = done(events)
    assert apology.status is ResponseStatus.COMPLETED
    assert apology.timings.get("apology") == 1.0
    assert apology.text == APOLOGY
    assert apology.text_heard == APOLOGY
    assert audio_of(events, apology.response_id)
    await _assert_failing(server, "stt", "stt_failed", category)
    assert error_deltas(before, await scrape(server.http)) == {("stt_failed", category): 1.0}

    # The same call goes on: the next turn is heard and answered, and /readyz recovers.
    _answered(await _spoken_turn(sender, question))
    await wait_ready(server)


# ------------------------------------------------------------------------- TTS


async def test_a_transient_tts_error_before_audio_is_retried(
    server: RunningServer, client: VoiceForgeClient, tts: ProbeTTS
) -> None:
    before = await scrape(server.http)
    calls = tts.calls
    tts.failures.extend([TTSError("voice busy")])
    events = await typed_turn(client, "Where is Paris?")
    _answered(events)
    assert tts.failures == []
    assert tts.calls - calls == 3  # first chunk twice (failed, retried), second chunk
    assert error_deltas(before, await scrape(server.http)) == {}
    await wait_ready(server)


async def test_a_permanent_tts_error_apologises_in_text_only(
    server: RunningServer, client: VoiceForgeClient, tts: ProbeTTS
) -> None:
    before = await scrape(server.http)
    calls = tts.calls
    tts.failures.extend([TTSError("voice model unloaded", transient=False)] * 2)
    events = await typed_turn(client, "Where is Paris?")
    failed = done(events)
    assert tts.calls - calls == 1  # not retried, and the apology is not synthesised
    assert len(tts.failures) == 1
    tts.failures.clear()

    assert [(e.code, e.category) for e in errors(events)] == [("tts_failed", "permanent")]
    assert errors(events)[0].response_id == failed.response_id
    assert failed.status is ResponseStatus.FAILED
    assert failed.reason == "tts_failed"
    assert not audio_of(events, failed.response_id)
    assert failed.audio_ms == 0 and failed.played_ms == 0
    assert failed.text_heard == ""
    assert failed.text.endswith(APOLOGY)
    assert text_of(events, failed.response_id).endswith(APOLOGY)
    await _assert_failing(server, "tts", "tts_failed", "permanent")
    assert error_deltas(before, await scrape(server.http)) == {("tts_failed", "permanent"): 1.0}

    _answered(await typed_turn(client, "Where is Paris, then?"))
    await wait_ready(server)


@pytest.mark.parametrize(
    ("failing_call", "heard"),
    [(1, ""), (2, FIRST_CHUNK)],
    ids=["in-the-first-chunk", "in-the-second-chunk"],
)
async def test_tts_failing_midway_ends_the_reply_with_what_was_heard(
    server: RunningServer, client: VoiceForgeClient, tts: ProbeTTS, failing_call: int, heard: str
) -> None:
    before = await scrape(server.http)
    calls = tts.calls
    # Transient, but audio of the chunk was already sent: a retry would repeat it.
    tts.fail_midway(failing_call, TTSError("synthesis crashed"))
    events = await typed_turn(client, "Where is Paris?")
    failed = done(events)
    assert tts.calls - calls == failing_call  # no retry, no apology synthesised

    assert [(e.code, e.category) for e in errors(events)] == [("tts_failed", "transient")]
    assert failed.status is ResponseStatus.FAILED
    assert failed.reason == "tts_failed"
    assert audio_of(events, failed.response_id)
    assert failed.played_ms == pytest.approx(failed.audio_ms)
    # Only chunks played whole count as heard: a chunk cut after its first audio
    # adds nothing (it is not known how much of it the cut-off audio said).
    assert failed.text_heard == heard
    assert APOLOGY not in failed.text
    assert "apology" not in failed.timings
    await _assert_failing(server, "tts", "tts_failed", "transient")
    assert error_deltas(before, await scrape(server.http)) == {("tts_failed", "transient"): 1.0}

    _answered(await typed_turn(client, "Where is Paris, then?"))
    await wait_ready(server)


# ------------------------------------------------------------------------- LLM


async def test_an_llm_engine_raising_mid_generation_fails_the_reply(
    server: RunningServer, client: VoiceForgeClient, llm: ProbeLLM
) -> None:
    before = await scrape(server.http)
    started = llm.started
    # Seven words: the first chunk is confirmed (by " It") and spoken, then the bug.
    llm.fail_after_words.append((7, 0.3, ValueError("logits contain NaN")))
    events = await typed_turn(client, "Where is Paris?")
    failed = done(events)
    assert llm.started - started == 1  # text came out: never retried

    assert [(e.code, e.category) for e in errors(events)] == [("llm_failed", "permanent")]
    assert "ValueError" in errors(events)[0].message
    assert failed.status is ResponseStatus.FAILED
    assert failed.reason == "llm_failed"
    assert failed.text == "The capital of France is Paris. It"
    assert failed.text_heard == FIRST_CHUNK
    assert APOLOGY not in text_of(events, failed.response_id)
    await _assert_failing(server, "llm", "llm_failed", "permanent")
    assert error_deltas(before, await scrape(server.http)) == {("llm_failed", "permanent"): 1.0}

    _answered(await typed_turn(client, "Where is Paris, then?"))
    await wait_ready(server)


async def test_an_llm_engine_raising_before_its_first_token_is_apologised_for(
    server: RunningServer, client: VoiceForgeClient, llm: ProbeLLM
) -> None:
    before = await scrape(server.http)
    started = llm.started
    llm.failures.extend([ValueError("bad tokenizer state")] * 2)
    events = await typed_turn(client, "Where is Paris?")
    failed = done(events)
    assert llm.started - started == 1  # a plain exception is permanent: not retried
    assert len(llm.failures) == 1
    llm.failures.clear()

    assert [(e.code, e.category) for e in errors(events)] == [("llm_failed", "permanent")]
    assert failed.status is ResponseStatus.FAILED
    assert failed.reason == "llm_failed"
    assert failed.text_heard == APOLOGY
    assert audio_of(events, failed.response_id)
    await _assert_failing(server, "llm", "llm_failed", "permanent")
    assert error_deltas(before, await scrape(server.http)) == {("llm_failed", "permanent"): 1.0}

    _answered(await typed_turn(client, "Where is Paris, then?"))
    await wait_ready(server)
