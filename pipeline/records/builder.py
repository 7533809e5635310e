"""A call's record built from its events: sans-I/O, fed by whatever carries the call.

``CallRecorder`` turns the events one conversation emits (the same ones every
transport sends its client) into entries of the call's timeline:

* ``turn``: one response, with the caller's words it answered (spoken or typed), the
  text generated and the text heard, how it ended (completed, cancelled by a barge-in,
  failed), the pauses the caller's voice caused, tool calls with their results, the
  errors tagged with it and the per-stage timings of ``response.done``;
* ``ignored``: caller input that got no reply (a backchannel, no words, a drain);
* ``error``: an error not tied to a response.

An entry is complete, and handed out to be written, the moment its last event
arrives: a process that dies loses at most the turn in flight. ``close`` hands out
that turn too, marked as cut off by the end of the call.

Every text is cut to ``RecordLimits`` and redacted before it is kept; a call yields
at most ``max_entries`` entries (the rest are counted in ``dropped``), so a hostile
caller's flood of typed turns or bad frames costs the store a bounded amount.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import (
    ErrorEvent,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseTextDelta,
    ResponseToolCall,
    ResponseToolResult,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.records.redact import Redaction


class EntryKind(enum.StrEnum):
    TURN = "turn"
    IGNORED = "ignored"
    ERROR = "error"


CUT_BY_CALL_END = "call_ended"
"""``reason`` of a turn still running when its call ended (its ``status`` is
``incomplete``)."""
INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class RecordLimits:
    max_text_chars: int = 8000
    """Any one stored text (a transcript, a reply, a tool result) is cut here."""
    max_entries: int = 2000
    """Entries one call may write; beyond it they are counted, not kept."""
    max_tool_calls: int = 32
    max_errors_per_turn: int = 16


@dataclass(slots=True)
class Entry:
    """One row of a call's timeline (``call_entries``)."""

    call_id: str
    seq: int
    kind: EntryKind
    started_at: float
    """Wall-clock seconds (Unix epoch) of the entry's first event."""
    ended_at: float
    user_text: str = ""
    """The caller's words this entry holds, inputs joined by a space."""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """Each input: ``text``, ``source`` (``speech`` or ``text``) and, for speech,
    ``audio_start_ms``/``audio_end_ms`` on the call's input-audio clock."""
    response_id: str | None = None
    status: str | None = None
    """A turn's ``completed``/``cancelled``/``failed``/``incomplete``; an ignored
    input's reason; an error's code."""
    reason: str | None = None
    reply_text: str = ""
    heard_text: str = ""
    audio_ms: float = 0.0
    played_ms: float = 0.0
    pauses: int = 0
    """Times the caller's voice paused the reply (a barge-in or a backchannel)."""
    resumes: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.status == "cancelled"


@dataclass(slots=True)
class _OpenTurn:
    entry: Entry
    generated: list[str] = field(default_factory=list)
    generated_chars: int = 0


class CallRecorder:
    """One call's record. Feed ``observe``/``text_input``; write what they return."""

    def __init__(
        self,
        call_id: str,
        *,
        redaction: Redaction | None = None,
        limits: RecordLimits | None = None,
        first_seq: int = 0,
    ) -> None:
        self.call_id = call_id
        self.redaction = redaction or Redaction()
        self.limits = limits or RecordLimits()
        self.dropped = 0
        """Entries not kept: over ``max_entries``."""
        self._seq = first_seq
        """Entries numbered so far (a resumed call's record numbers on)."""
        self._inputs: list[dict[str, Any]] = []
        """Caller input not yet answered: it belongs to the next response."""
        self._inputs_since: float | None = None
        self._open: dict[str, _OpenTurn] = {}
        """Responses created and not done (a cancelled one finishing while the next
        starts makes two)."""
        self.closed = False

    @property
    def seq(self) -> int:
        return self._seq

    # ------------------------------------------------------------------ inputs

    def text_input(self, text: str, now: float) -> None:
        """A typed turn (``conversation.text``): no event carries its words."""
        self._add_input({"text": self._text(text), "source": "text"}, now)

    def observe(self, event: object, now: float) -> list[Entry]:
        """Entries completed by ``event`` (most events complete none)."""
        if self.closed:
            return []
        if isinstance(event, TranscriptFinal):
            if event.text:
                self._add_input(
                    {"text": self._text(event.text), "source": "speech",
                     "audio_start_ms": event.audio_start_ms, "audio_end_ms": event.audio_end_ms},
                    now,
                )
        elif isinstance(event, TurnIgnored):
            return self._ignored(event, now)
        elif isinstance(event, ResponseCreated):
            self._created(event.response_id, now)
        elif isinstance(event, ResponseTextDelta):
            turn = self._open.get(event.response_id)
            if turn is not None and turn.generated_chars < self.limits.max_text_chars:
                turn.generated.append(event.delta)
                turn.generated_chars += len(event.delta)
        elif isinstance(event, ResponseAudioPause):
            if (turn := self._open.get(event.response_id)) is not None:
                turn.entry.pauses += 1
        elif isinstance(event, ResponseAudioResume):
            if (turn := self._open.get(event.response_id)) is not None:
                turn.entry.resumes += 1
        elif isinstance(event, ResponseToolCall):
            self._tool_call(event)
        elif isinstance(event, ResponseToolResult):
            self._tool_result(event)
        elif isinstance(event, ResponseDone):
            return self._done(event, now)
        elif isinstance(event, ErrorEvent):
            return self._error(event, now)
        return []

    def close(self, now: float) -> list[Entry]:
        """The call ended: what is still open is written as it stands."""
        if self.closed:
            return []
        self.closed = True
        out: list[Entry] = []
        for turn in list(self._open.values()):
            entry = turn.entry
            entry.status = INCOMPLETE
            entry.reason = CUT_BY_CALL_END
            entry.reply_text = self._text("".join(turn.generated))
            entry.ended_at = now
            out.extend(self._keep(entry))
        self._open.clear()
        if self._inputs:
            out.extend(self._keep(self._entry(EntryKind.IGNORED, now, status=CUT_BY_CALL_END,
                                              inputs=self._take_inputs())))
        return out

    # ------------------------------------------------------------------ helpers

    def _add_input(self, item: dict[str, Any], now: float) -> None:
        if self._inputs_since is None:
            self._inputs_since = now
        if len(self._inputs) < 16:  # turn taking joins at most a few inputs per reply
            self._inputs.append(item)

    def _take_inputs(self) -> list[dict[str, Any]]:
        inputs, self._inputs, self._inputs_since = self._inputs, [], None
        return inputs

    def _entry(
        self, kind: EntryKind, now: float, *, status: str | None = None,
        inputs: list[dict[str, Any]] | None = None, started_at: float | None = None,
    ) -> Entry:
        inputs = inputs or []
        entry = Entry(
            call_id=self.call_id, seq=0, kind=kind,
            started_at=started_at if started_at is not None else now, ended_at=now,
            user_text=" ".join(item["text"] for item in inputs), inputs=inputs, status=status,
        )
        return entry

    def _keep(self, entry: Entry) -> list[Entry]:
        if self._seq >= self.limits.max_entries:
            self.dropped += 1
            return []
        self._seq += 1
        entry.seq = self._seq
        return [entry]

    def _text(self, text: str) -> str:
        limit = self.limits.max_text_chars
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        return self.redaction(text) if self.redaction.active else text

    def _ignored(self, event: TurnIgnored, now: float) -> list[Entry]:
        span = (event.audio_start_ms, event.audio_end_ms)
        # The transcript of an ignored span (a backchannel) came just before: it is
        # this entry's, not the next reply's.
        ignored = [
            item for item in self._inputs
            # Typed input has no span: a drain's refusal of it names (0, 0).
            if (item.get("audio_start_ms", 0.0), item.get("audio_end_ms", 0.0)) == span
        ]
        if ignored:
            self._inputs = [item for item in self._inputs if item not in ignored]
            if not self._inputs:
                self._inputs_since = None
        return self._keep(self._entry(EntryKind.IGNORED, now, status=event.reason,
                                      inputs=ignored))

    def _created(self, response_id: str, now: float) -> None:
        started = self._inputs_since if self._inputs_since is not None else now
        entry = self._entry(EntryKind.TURN, now, inputs=self._take_inputs(), started_at=started)
        entry.response_id = response_id
        self._open[response_id] = _OpenTurn(entry)

    def _tool_call(self, event: ResponseToolCall) -> None:
        turn = self._open.get(event.response_id)
        if turn is None or len(turn.entry.tool_calls) >= self.limits.max_tool_calls:
            return
        turn.entry.tool_calls.append({
            "call_id": event.call_id, "name": self._text(event.name),
            "arguments": self._text(event.arguments), "executor": event.executor,
        })

    def _tool_result(self, event: ResponseToolResult) -> None:
        turn = self._open.get(event.response_id)
        if turn is None:
            return
        result = {"status": event.status, "output": self._text(event.output),
                  "elapsed_ms": event.elapsed_ms}
        for call in turn.entry.tool_calls:
            if call["call_id"] == event.call_id and "status" not in call:
                call.update(result)
                return
        if len(turn.entry.tool_calls) < self.limits.max_tool_calls:
            # A result the server settled without a call event (an unknown tool).
            turn.entry.tool_calls.append({"call_id": event.call_id,
                                          "name": self._text(event.name), **result})

    def _done(self, event: ResponseDone, now: float) -> list[Entry]:
        turn = self._open.pop(event.response_id, None)
        if turn is None:  # never created here (recorded from the middle of a call)
            turn = _OpenTurn(self._entry(EntryKind.TURN, now))
            turn.entry.response_id = event.response_id
        entry = turn.entry
        entry.status = event.status.value
        entry.reason = event.reason
        entry.reply_text = self._text(event.text)
        entry.heard_text = self._text(event.text_heard)
        entry.audio_ms = event.audio_ms
        entry.played_ms = event.played_ms
        entry.timings = dict(event.timings)
        entry.ended_at = now
        return self._keep(entry)

    def _error(self, event: ErrorEvent, now: float) -> list[Entry]:
        error = {"code": event.code, "message": self._text(event.message),
                 "category": event.category, "fatal": event.fatal}
        turn = self._open.get(event.response_id) if event.response_id is not None else None
        if turn is not None:
            if len(turn.entry.errors) < self.limits.max_errors_per_turn:
                turn.entry.errors.append(error)
            return []
        entry = self._entry(EntryKind.ERROR, now, status=event.code)
        entry.errors = [error]
        return self._keep(entry)
