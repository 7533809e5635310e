"""What one server process knows about itself: settings, engines, metrics, the calls
it carries and the session slots they hold.

Every transport (``/ws``, WebRTC, telephony) and the lifecycle (sweeper, drain) work
on this object; none of them needs the app module that wires them together.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent.admission import LatencyAdmission
from agent.config import Settings
from agent.health import EngineHealth
from agent.metrics import Metrics
from agent.protocol import SessionCaps
from agent.records import CallRecords
from agent.voice_library import VoiceLibrary
from pipeline.chunker import ChunkerConfig
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.read_ahead import DEFAULT_READ_AHEAD_INTERVAL_MS

if TYPE_CHECKING:
    from agent.resume import Resumer


class Call(Protocol):
    """One call on any transport, as the server's lifecycle sees it."""

    conversation: Conversation
    started_at: float


class WebSocketCall(Call, Protocol):
    """A ``/ws`` call: told why and closed by the drain, limited by the sweeper."""

    epoch: int
    """Times the call was resumed (agent.resume)."""

    def error(
        self, code: str, message: str, *, fatal: bool = False, category: str = "client",
        throttled: bool = True,
    ) -> None: ...

    def finish(self, code: int, reason: str, *, flush: bool) -> None: ...

    def check_limits(self, now: float) -> None: ...


class BridgeCall(Call, Protocol):
    """A WebRTC or telephony call: hung up by the sweeper and at shutdown."""

    last_input_at: float
    """When the caller's media (or a message) last arrived: the idle timer's clock."""

    async def close(self) -> None: ...


class SampledLog:
    """At most ``burst`` lines per key per ``window_s``; the rest are counted and
    summed up in the next line of that key. Refusals and junk from one hostile
    client cost a log line a few times a window, not one per attempt."""

    def __init__(self, *, burst: int = 10, window_s: float = 10.0) -> None:
        self.burst = burst
        self.window_s = window_s
        self._windows: dict[str, tuple[float, int, int]] = {}
        """key → (window start, lines logged, lines suppressed)."""

    def log(
        self, target: logging.Logger, level: int, key: str, message: str, *args: object,
        **extra: Any,
    ) -> bool:
        now = time.monotonic()
        start, logged, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, suppressed + 1)
            return False
        if suppressed:
            message += " (and %d more like it before)"
            args = (*args, suppressed)
        self._windows[key] = (start, logged + 1, 0)
        if len(self._windows) > 1024:  # keys name reasons, not callers: never many
            self._windows = {key: self._windows[key]}
        target.log(level, message, *args, extra=extra or None, stacklevel=2)
        return True


HangUp = Callable[[], Awaitable[None]]

_slot_ids = itertools.count(1)


class Slot:
    """One of ``Settings.max_sessions`` places, held from the moment a caller is
    admitted (before its body is read or its media stream starts) until its call
    ends. Taken only by ``agent.intake``; ``release`` is idempotent, so every
    exit path may call it."""

    def __init__(self, state: AppState, transport: str) -> None:
        self.state = state
        self.transport = transport
        self.id = next(_slot_ids)
        self.hang_up: HangUp | None = None
        """How the drain ends this call while it is still being set up (a media
        stream waiting for ``start``); a running call is hung up as a call."""
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state.slots.discard(self)

    def __repr__(self) -> str:
        return f"Slot({self.transport}#{self.id}{', released' if self.released else ''})"


class AppState:
    def __init__(self, settings: Settings, engines: Engines | None) -> None:
        self.settings = settings
        self._engines = engines
        self.metrics = Metrics()
        self.sessions: set[WebSocketCall] = set()
        """``/ws`` calls."""
        self.bridge_sessions: set[BridgeCall] = set()
        """WebRTC and telephony calls: hung up at shutdown."""
        self.slots: set[Slot] = set()
        """Every admitted call of every transport, set up or running: what the
        session limit counts."""
        self.admission = (
            LatencyAdmission(
                settings.latency_budget_ms,
                window_s=settings.admission_window_s,
                min_samples=settings.admission_min_samples,
                min_calls=settings.admission_min_calls,
                retry_after_s=settings.retry_after_s,
            )
            if settings.latency_budget_ms > 0
            else None
        )
        self.draining = False
        self.load_error: str | None = None
        """Why the engines failed to load (permanent: /healthz fails)."""
        self.engine_health = EngineHealth(
            min_sessions=settings.engine_failure_sessions,
            window_s=settings.engine_failure_window_s,
        )
        """Engines failing across calls: /readyz is not ready while any is."""
        self.background: set[asyncio.Task[None]] = set()
        self.sampled_log = SampledLog()
        """Lines one hostile client could repeat (refusals, junk messages)."""
        self.records: CallRecords | None = None
        """Call records (docs/calls.md), when a database is configured."""
        self.voice_library = VoiceLibrary(settings.voices_dir)
        """The voices added through ``/v1/voices`` (agent.voices)."""
        self.resumer: Resumer | None = None
        """Dropped ``/ws`` calls waiting to be resumed (agent.resume), once started."""

    @property
    def loaded(self) -> bool:
        return self._engines is not None

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            raise RuntimeError("engines are not loaded")
        return self._engines

    def set_engines(self, engines: Engines) -> None:
        self._engines = engines
        if engines.smart_turn is not None:
            engines.smart_turn.add_observer(self.metrics.observe_smart_turn_batch)

    def unobserve_engines(self) -> None:
        """Stop feeding this app's metrics: the engines may outlive it (tests share them)."""
        if self._engines is not None and self._engines.smart_turn is not None:
            self._engines.smart_turn.remove_observer(self.metrics.observe_smart_turn_batch)

    def open_calls(self) -> int:
        """Calls holding a slot, whatever their transport and however far set up."""
        return len(self.slots)

    def calls(self) -> list[Call]:
        """Every running call (set up, with a conversation)."""
        return [*self.sessions, *self.bridge_sessions]

    def session_config(self) -> SessionConfig:
        """A new call's settings under this server's limits."""
        settings = self.settings
        return SessionConfig(
            max_history_turns=settings.max_history_turns,
            max_history_chars=settings.max_history_chars,
            engine_retries=settings.engine_retries,
            record_audio=settings.recordings == "all",
            chunker=ChunkerConfig(first_chunk_max_words=self.first_chunk_max_words()),
            read_ahead_interval_ms=self.read_ahead_interval_ms(),
            max_response_tokens=min(
                SessionConfig().max_response_tokens, settings.max_response_tokens
            ),
        )

    def first_chunk_max_words(self) -> int:
        """A new call's first-chunk cut: the operator's setting, else what the engines
        serving it ask for (the embedded tier's), else none."""
        if self.settings.first_chunk_max_words is not None:
            return self.settings.first_chunk_max_words
        return self._engines.first_chunk_max_words if self._engines is not None else 0

    def read_ahead_interval_ms(self) -> float:
        """A new call's reading of the caller's words ahead (pipeline/read_ahead.py): the
        operator's setting, else the default where the LLM can read ahead, else off; never
        under the floor of partial transcripts, which it makes."""
        interval = self.settings.read_ahead_interval_ms
        if interval is None:
            llm = self._engines.llm if self._engines is not None else None
            interval = DEFAULT_READ_AHEAD_INTERVAL_MS if hasattr(llm, "read_words") else 0.0
        return max(interval, self.settings.min_partial_transcript_interval_ms) if interval else 0.0

    def session_caps(self) -> SessionCaps:
        """What ``session.update`` may ask of the shared engines on this server."""
        settings = self.settings
        return SessionCaps(
            max_instructions_chars=settings.max_instructions_chars,
            max_response_tokens=settings.max_response_tokens,
            min_partial_transcript_interval_ms=settings.min_partial_transcript_interval_ms,
        )

    def spawn(self, coro: Awaitable[None]) -> None:
        """A fire-and-forget job of the server (a hang-up), kept referenced until done."""

        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
