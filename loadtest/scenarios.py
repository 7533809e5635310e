"""What one simulated caller does during one session, and what it measured.

Every scenario drives a ``loadtest.acoustic.TimedCaller`` (``agent.caller.Caller``,
an open microphone streaming 20 ms frames in real time, that remembers where each
utterance began so its acoustic end can be timed) on an ``agent.client.VoiceForgeClient`` (whose
``PlaybackClock`` plays the reply in real time and reports ``output_audio.played``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller, elapsed_ms
from loadtest.latency import client_latency_ms
from pipeline.events import (
    ErrorEvent,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
)

MULTI_TURNS = 3
BARGE_IN_AFTER_S = 0.6
"""How far into the reply's playback the caller interrupts."""


@dataclass
class TurnResult:
    scenario: str
    variant: str
    """``on``/``off`` in a ``--compare`` run, else ``""``."""
    status: str
    server_ms: float | None
    """end_of_speech_to_first_audio_ms as the server reports it."""
    overhead_ms: float | None
    """end_of_turn_to_first_audio_ms: the server's own share."""
    client_ms: float | None
    """Client: sending the audio of the VAD's end of speech → first audio received."""
    acoustic_ms: float | None = None
    """Client: sending the acoustic end of speech → first audio received (the headline)."""
    end_of_turn_wait_ms: float | None = None
    """Silence wait plus any lag of the input path: grows when the server falls behind."""
    input_lag_ms: float | None = None
    """``end_of_turn_wait_ms`` beyond the session's ``end_of_turn_silence_ms``."""
    at: float = field(default_factory=time.monotonic)
    """When the reply was done (``time.monotonic()``): which phase of a run it fell in."""


@dataclass
class Stats:
    """Everything every caller measured; one event loop, so no locking."""

    turns: list[TurnResult] = field(default_factory=list)
    barge_in_ms: list[tuple[str, float]] = field(default_factory=list)
    """(variant, speech_started's audio sent → clear received)."""
    barge_in_acoustic_ms: list[tuple[str, float]] = field(default_factory=list)
    """(variant, acoustic onset of the interruption sent → clear received)."""
    error_codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    """Caller-side failures: timeouts, refused connections, dropped sessions."""
    sessions: int = 0
    sessions_active: int = 0
    dropped_sessions: int = 0
    aborted_sessions: int = 0
    underruns: int = 0
    noise_false_turns: int = 0

    @property
    def errors(self) -> int:
        failed = sum(t.status == "failed" for t in self.turns)
        return sum(self.error_codes.values()) + len(self.failures) + failed


@dataclass
class Session:
    caller: TimedCaller
    client: VoiceForgeClient
    stats: Stats
    speech: list[np.ndarray]
    variant: str
    deadline: float
    turn_timeout_s: float
    turn_counter: int = 0

    def next_question(self) -> np.ndarray:
        self.turn_counter += 1
        return self.speech[self.turn_counter % len(self.speech)]

    def record(
        self,
        scenario: str,
        done: ResponseDone,
        after: int,
        until: int | None = None,
        *,
        spoken: int | None = None,
    ) -> None:
        """``spoken``: the caller's utterance this is the reply to (for the acoustic end)."""
        stops = [m for _, m in self.caller.log[after:until] if isinstance(m, SpeechStopped)]
        wait = done.timings.get("end_of_turn_wait_ms")
        silence_ms = float(self.client.session["turn"]["end_of_turn_silence_ms"])
        self.stats.turns.append(
            TurnResult(
                scenario=scenario,
                variant=self.variant,
                status=done.status.value,
                server_ms=done.timings.get("end_of_speech_to_first_audio_ms"),
                overhead_ms=done.timings.get("end_of_turn_to_first_audio_ms"),
                client_ms=client_latency_ms(self.client, stops, done.response_id),
                acoustic_ms=None
                if spoken is None
                else elapsed_ms(
                    self.caller.acoustic_end_sent_at(spoken),
                    self.client.first_audio_at.get(done.response_id),
                ),
                end_of_turn_wait_ms=wait,
                input_lag_ms=None if wait is None else wait - silence_ms,
            )
        )


async def _ask(session: Session, scenario: str) -> None:
    """One question; returns once the caller has heard the whole reply."""
    start = len(session.caller.log)
    spoken = session.caller.utter(session.next_question())
    done = await session.caller.wait_done(session.turn_timeout_s, after=start)
    session.record(scenario, done, start, spoken=spoken)


async def plain_qa(session: Session) -> None:
    await _ask(session, "qa")


async def multi_turn(session: Session) -> None:
    for _ in range(MULTI_TURNS):
        if time.monotonic() > session.deadline:
            return
        await _ask(session, "multi")
        await asyncio.sleep(0.3)


async def barge_in(session: Session) -> None:
    caller = session.caller
    start = len(caller.log)
    question = caller.utter(session.next_question())
    created = await caller.wait_for(
        lambda m: isinstance(m, ResponseCreated), session.turn_timeout_s, after=start
    )
    assert isinstance(created, ResponseCreated)
    await caller.wait_for(
        lambda m: isinstance(m, ResponseAudioDelta) and m.response_id == created.response_id,
        session.turn_timeout_s,
        after=start,
    )
    await asyncio.sleep(BARGE_IN_AFTER_S)
    interrupt_at = len(caller.log)
    interruption = caller.utter(session.next_question())
    done = await caller.wait_done(session.turn_timeout_s, after=start)
    session.record("barge_in", done, start, until=interrupt_at, spoken=question)
    if done.status.value == "cancelled" and done.reason == "barge_in":
        clear_at = next(
            (t for t, m in caller.log[interrupt_at:] if isinstance(m, ResponseAudioClear)), None
        )
        started = caller.messages(SpeechStarted, after=interrupt_at)
        if clear_at is not None and started:
            first = started[0]
            assert isinstance(first, SpeechStarted)
            sent = session.client.sent_at(first.audio_start_ms)
            if sent is not None:
                session.stats.barge_in_ms.append((session.variant, (clear_at - sent) * 1000))
        onset = elapsed_ms(caller.acoustic_onset_sent_at(interruption), clear_at)
        if onset is not None:
            session.stats.barge_in_acoustic_ms.append((session.variant, onset))
    # The interruption is a turn of its own (or, if the reply ended before it
    # landed, a plain new question): its reply is measured like any other.
    second = await caller.wait_for(
        lambda m: isinstance(m, ResponseDone) and m.response_id != created.response_id,
        session.turn_timeout_s,
        after=interrupt_at,
    )
    assert isinstance(second, ResponseDone)
    session.record("barge_in", second, interrupt_at, spoken=interruption)


async def noise_only(session: Session) -> None:
    """Low-level noise, then silence: nothing here is a turn."""
    caller = session.caller
    start = len(caller.log)
    noise = np.random.default_rng(session.turn_counter).normal(0.0, 0.005, 16000 * 4)
    caller.say(noise.astype(np.float32))
    await asyncio.sleep(6.0)
    session.stats.noise_false_turns += len(caller.messages(ResponseCreated, after=start))


async def abrupt_disconnect(session: Session) -> None:
    """Hang up with no close handshake while the reply is being sent."""
    caller = session.caller
    start = len(caller.log)
    caller.say(session.next_question())
    await caller.wait_for(
        lambda m: isinstance(m, ResponseAudioDelta), session.turn_timeout_s, after=start
    )
    await asyncio.sleep(0.2)
    session.client.abort()
    session.stats.aborted_sessions += 1


SCENARIOS: dict[str, Callable[[Session], Awaitable[None]]] = {
    "qa": plain_qa,
    "multi": multi_turn,
    "barge_in": barge_in,
    "noise": noise_only,
    "disconnect": abrupt_disconnect,
}


def collect_session_errors(session: Session) -> None:
    """Server ``error`` events and playback underruns of a finished session."""
    for _, message in session.caller.log:
        if isinstance(message, ErrorEvent):
            session.stats.error_codes[message.code] += 1
    session.stats.underruns += session.client.playback.underruns
