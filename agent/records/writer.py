"""Call records from every transport, written off the audio path.

``CallRecords`` is fed synchronously from ``agent.bridge`` (the one place the events
of ``/ws``, WebRTC and telephony calls pass): a call's ``CallRecorder`` turns events
into entries, which go to a bounded buffer. One writer task empties it into the store
in batches. A slow or unreachable database never slows a call: entries wait in the
buffer (``voiceforge_records_buffered``), the writer retries with backoff
(``voiceforge_record_write_errors_total``), and what does not fit is dropped and
counted (``voiceforge_records_dropped_total``) instead of growing without bound.
When the database returns, everything still buffered is written, oldest first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import itertools
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.records import recording
from agent.records.recording import Batch, CallRecording
from agent.records.store import RecordStore, redacted_url
from agent.records.webhook import CallWebhook
from pipeline.engines.base import FloatAudio
from pipeline.events import ResponseAudioDelta, ResponseDone
from pipeline.records import CallRecorder, Entry, RecordLimits, Redaction
from pipeline.records.audio import RATE, Piece, RecordingTimeline

logger = logging.getLogger("voiceforge.records")

BATCH_ENTRIES = 200
WRITE_INTERVAL_S = 0.5
"""Least time from one write's start to the next: under load entries arrive all the
time, and a transaction each time they did cost a connection (on SQLite a thread,
three files and two PRAGMAs) per few entries — ~10 % of a bench server's CPU at 140
callers (105 → 96 %, docs/benchmarks.md). An entry that arrives after a quiet spell
is still written at once."""
WRITE_TIMEOUT_S = 20.0
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0
FAILURE_LOG_EVERY_S = 30.0
EXPIRY_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class RecordingPolicy:
    directory: Path
    retention_s: float


class RecordMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.buffered = Gauge(
            "voiceforge_records_buffered",
            "Call record entries waiting for the database", registry=registry,
        )
        self.written = Counter(
            "voiceforge_records_written", "Call record entries written", registry=registry
        )
        self.dropped = Counter(
            "voiceforge_records_dropped",
            "Call record entries (or whole calls) not kept: buffer_full (the database "
            "was away too long), call_limit (a call past its entry limit), calls (too "
            "many calls waiting to be written), recording_backlog (a second of call "
            "audio the disk was too far behind to take)",
            ["reason"], registry=registry,
        )
        self.write_errors = Counter(
            "voiceforge_record_write_errors",
            "Failed attempts to write call records (each is retried)", registry=registry,
        )
        self.store_up = Gauge(
            "voiceforge_records_store_up",
            "1 while the last write to the record database succeeded", registry=registry,
        )


def _utc(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC)


@dataclass(slots=True)
class _Call:
    recorder: CallRecorder
    transport: str
    started_at: float
    settings: dict[str, Any]
    ended_at: float | None = None
    end_reason: str | None = None
    buffer_dropped: int = 0
    version: int = 1
    written_version: int = 0
    pending: int = 0
    """This call's entries still in the buffer."""
    closed: bool = False
    pending_reason: str | None = field(default=None)
    """Why the call is ending, known before the transport closes it (a hang-up)."""
    counted_drops: int = 0
    """The recorder's ``dropped`` already counted in the metric."""
    timeline: RecordingTimeline | None = None
    """The call's clock and reply placement, with recordings on (whether or not this
    call records)."""
    recording: CallRecording | None = None
    recording_info: dict[str, Any] | None = None
    encoding: bool = False
    hold_webhook: bool = False
    """Suspended (agent.resume): posted only if its window passes with no resume."""


class CallRecords:
    """The server's call records: fed on the loop, written by one task."""

    def __init__(
        self,
        store: RecordStore,
        registry: CollectorRegistry,
        *,
        redaction: Redaction | None = None,
        limits: RecordLimits | None = None,
        max_buffered_entries: int = 10_000,
        max_unwritten_calls: int = 1_000,
        recordings: RecordingPolicy | None = None,
        webhook: CallWebhook | None = None,
    ) -> None:
        self.store = store
        self.metrics = RecordMetrics(registry)
        self.redaction = redaction or Redaction()
        self.limits = limits or RecordLimits()
        self.max_buffered_entries = max_buffered_entries
        self.max_unwritten_calls = max_unwritten_calls
        self.server = f"{socket.gethostname()}:{os.getpid()}"
        self._calls: dict[str, _Call] = {}
        self._entries: deque[Entry] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        """Set by ``stop``: the writer ends at its next check even if the cancel that
        follows is lost (Python 3.11's ``wait_for`` can swallow a cancellation that
        lands as the write it waits for fails, and the writer would retry forever)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.recordings = recordings
        self.webhook = webhook
        self._encoders: set[asyncio.Task[None]] = set()
        self._disk = (None if recordings is None else concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="voiceforge-recordings"))
        """Every file operation of recordings, in order: batches, then the encoding."""
        self._disk_jobs: set[asyncio.Future[int]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self._migrated = False
        self.available = False
        """The database answered the last time it was asked."""

    # ------------------------------------------------------------ the feed (sync)

    def open(self, call_id: str, transport: str, settings: dict[str, Any], *,
             resumed_from: tuple[float, int] | None = None) -> None:
        """A call goes live; ``resumed_from``: a resumed call's (start time, entries
        so far), its record reopened and numbered on."""
        existing = self._calls.get(call_id)
        if existing is not None:
            if resumed_from is not None and existing.closed:
                self._reopen(call_id, existing, settings)
            return
        if len(self._calls) >= self.max_unwritten_calls:
            self.metrics.dropped.labels("calls").inc()
            return
        started_at, first_seq = resumed_from or (time.time(), 0)
        recorder = CallRecorder(call_id, redaction=self.redaction, limits=self.limits,
                                first_seq=first_seq)
        call = _Call(recorder, transport, started_at, self._settings(settings))
        self._calls[call_id] = call
        if self.recordings is not None:
            call.timeline = RecordingTimeline()
            self._record_audio(call_id, call, settings.get("record_audio") is True)
        self._kick()

    def _reopen(self, call_id: str, call: _Call, settings: dict[str, Any]) -> None:
        # Resumed on the server whose record of it is still being written. Its
        # recording, finished at the drop, is not started again.
        call.buffer_dropped += call.recorder.dropped  # still counted in the row
        call.recorder = CallRecorder(call_id, redaction=self.redaction, limits=self.limits,
                                     first_seq=call.recorder.seq)
        call.counted_drops = 0
        call.closed = call.hold_webhook = False
        call.ended_at = call.end_reason = call.pending_reason = None
        call.settings = self._settings(settings)
        call.version += 1
        self._kick()

    def hold_webhook(self, call_id: str) -> None:
        """The call was suspended: its end is not posted until ``release_webhook``."""
        call = self._calls.get(call_id)
        if call is not None:
            call.hold_webhook = True

    def release_webhook(self, call_id: str) -> None:
        """A suspended call was not resumed: post its record (now, or once written)."""
        call = self._calls.get(call_id)
        if call is not None:
            call.hold_webhook = False
            self._kick()  # written already: the next pass posts it
        elif self.webhook is not None:
            self.webhook.call_written(call_id)

    def resume_point(self, call_id: str) -> tuple[float, int] | None:
        """(start time, entries numbered so far) of a call this server records."""
        call = self._calls.get(call_id)
        return None if call is None else (call.started_at, call.recorder.seq)

    def _record_audio(self, call_id: str, call: _Call, wanted: bool) -> None:
        """Start (or stop) recording this call's audio, as its settings ask."""
        if self.recordings is None or call.closed:
            return
        # One recording per call: once stopped, it is not started again.
        if wanted and call.recording is None and not call.encoding and not call.recording_info:
            try:
                call.recording = CallRecording(self.recordings.directory, call_id)
            except OSError as exc:
                logger.error("recordings: cannot record call %s: %s", call_id, exc)
        elif not wanted and call.recording is not None:
            # Asked to stop: what was recorded so far is kept.
            self._finish_recording(call_id, call)

    def caller_audio(self, call_id: str, frame: FloatAudio) -> None:
        call = self._calls.get(call_id)
        if call is None or call.timeline is None:
            return
        piece = call.timeline.caller(frame)
        if call.recording is not None:
            self._record(call.recording, piece)

    def _record(self, recording: CallRecording, piece: Piece) -> None:
        before = recording.dropped_bytes
        batch = recording.add(piece)
        if recording.dropped_bytes != before:
            self.metrics.dropped.labels("recording_backlog").inc()
        self._to_disk(recording, batch)

    def _to_disk(self, recording: CallRecording, batch: Batch | None) -> None:
        if batch is None or self._disk is None:
            return
        job = asyncio.get_running_loop().run_in_executor(
            self._disk, recording.write_batch, batch
        )
        self._disk_jobs.add(job)
        size = sum(len(data) for _, _, data in batch)

        def written(job: asyncio.Future[int]) -> None:
            self._disk_jobs.discard(job)
            recording.queued_bytes -= size
            if not job.cancelled() and (exc := job.exception()) is not None:
                logger.error("recordings: writing %s failed: %s", recording.path.name, exc)

        job.add_done_callback(written)

    def settings_changed(self, call_id: str, settings: dict[str, Any]) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.closed:
            call.settings = self._settings(settings)
            call.version += 1
            self._record_audio(call_id, call, settings.get("record_audio") is True)
            self._kick()

    def text_input(self, call_id: str, text: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.recorder.text_input(text, time.time())

    def observe(self, call_id: str, event: object) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        if call.timeline is not None:
            if isinstance(event, ResponseAudioDelta):
                call.timeline.reply_audio(event)
                return
            if isinstance(event, ResponseDone):
                piece = call.timeline.reply_done(event)
                if piece is not None and call.recording is not None:
                    self._record(call.recording, piece)
        elif isinstance(event, ResponseAudioDelta):
            return
        self._buffer(call, call.recorder.observe(event, time.time()))

    def ending(self, call_id: str, reason: str) -> None:
        """Why the call is about to end, when whoever ends it knows better than the
        transport that closes it (the sweeper's idle or time limit)."""
        call = self._calls.get(call_id)
        if call is not None and call.pending_reason is None:
            call.pending_reason = reason

    def close(self, call_id: str, reason: str) -> None:
        call = self._calls.get(call_id)
        if call is None or call.closed:
            return
        now = time.time()
        self._buffer(call, call.recorder.close(now))
        if call.recording is not None:
            self._finish_recording(call_id, call)
        call.closed = True
        call.timeline = None
        call.ended_at = now
        call.end_reason = call.pending_reason or reason
        call.version += 1
        self._kick()

    def _finish_recording(self, call_id: str, call: _Call) -> None:
        """Encode the recording off the loop; its row says so once it is done."""
        taken, call.recording = call.recording, None
        if taken is None or self._disk is None:
            return
        before = taken.dropped_bytes
        last = taken.take()
        if taken.dropped_bytes != before:
            self.metrics.dropped.labels("recording_backlog").inc()
        self._to_disk(taken, last)
        call.encoding = True
        disk = self._disk

        async def encode() -> None:
            try:
                # The same one thread: every batch of the call is written first.
                duration_ms = await asyncio.get_running_loop().run_in_executor(
                    disk, taken.encode)
            except Exception:
                logger.exception("recordings: encoding call %s failed", call_id)
            else:
                call.recording_info = {
                    "format": "ogg/opus", "sample_rate": RATE,
                    "channels": ["caller", "agent"], "duration_ms": round(duration_ms, 1),
                }
                call.version += 1
            finally:
                call.encoding = False
                self._kick()

        task = asyncio.create_task(encode(), name=f"{call_id}-recording")
        self._encoders.add(task)
        task.add_done_callback(self._encoders.discard)

    def is_open(self, call_id: str) -> bool:
        """The call runs on this server, or its record is still being written."""
        return call_id in self._calls

    def _settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        instructions = settings.get("instructions")
        if isinstance(instructions, str) and self.redaction.active:
            settings = {**settings, "instructions": self.redaction(instructions)}
        return settings

    def _buffer(self, call: _Call, entries: list[Entry]) -> None:
        if call.recorder.dropped != call.counted_drops:
            self.metrics.dropped.labels("call_limit").inc(
                call.recorder.dropped - call.counted_drops
            )
            call.counted_drops = call.recorder.dropped
            call.version += 1
            self._kick()
        if not entries:
            return
        for entry in entries:
            if len(self._entries) >= self.max_buffered_entries:
                self.metrics.dropped.labels("buffer_full").inc()
                call.buffer_dropped += 1
                call.version += 1
                continue
            self._entries.append(entry)
            call.pending += 1
        self.metrics.buffered.set(len(self._entries))
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    # ------------------------------------------------------------- the writer

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="voiceforge-records")
        if self.webhook is not None:
            self.webhook.start()
        if self.recordings is not None:
            self._expiry = asyncio.create_task(
                self._expire(self.recordings), name="voiceforge-recording-expiry"
            )

    async def _expire(self, policy: RecordingPolicy) -> None:
        while True:
            try:
                await asyncio.to_thread(recording.expire, policy.directory, policy.retention_s)
            except OSError as exc:
                logger.warning("recordings: expiring old ones failed: %s", exc)
            await asyncio.sleep(min(EXPIRY_EVERY_S, policy.retention_s))

    async def stop(self, flush_timeout_s: float) -> None:
        """Write what is buffered (within ``flush_timeout_s``), then stop."""
        for call_id, call in list(self._calls.items()):
            if not call.closed:
                self.close(call_id, "server_stopped")
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        # Recordings being encoded get the same time; a cancelled one is not kept.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._encoders, return_exceptions=True), flush_timeout_s
            )
        if self._disk is not None:
            self._disk.shutdown(wait=False, cancel_futures=True)
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), flush_timeout_s)
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._entries:
            logger.error("call records: %d entries could not be written before stopping",
                         len(self._entries))
        if self.webhook is not None:
            await self.webhook.stop(flush_timeout_s)
        await self.store.close()

    async def flushed(self, timeout_s: float) -> bool:
        """Wait until everything fed so far is written (False on timeout)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        retry_s = RETRY_FIRST_S
        failing_since: float | None = None
        last_logged = 0.0
        last_write = -WRITE_INTERVAL_S
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self._has_work() and not self._stopping:
                if len(self._entries) < BATCH_ENTRIES:
                    wait_s = last_write + WRITE_INTERVAL_S - time.monotonic()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)  # gather what else arrives
                last_write = time.monotonic()
                try:
                    await asyncio.wait_for(self._write_once(), WRITE_TIMEOUT_S)
                except Exception as exc:  # every driver and network failure looks different
                    self.available = False
                    self.metrics.store_up.set(0)
                    self.metrics.write_errors.inc()
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                    if now - last_logged >= FAILURE_LOG_EVERY_S:
                        last_logged = now
                        logger.warning(
                            "call records: cannot write to %s (%s: %s); %d entries wait",
                            redacted_url(self.store.url), type(exc).__name__, exc,
                            len(self._entries),
                        )
                    if self._stopping:
                        return
                    await asyncio.sleep(retry_s)
                    retry_s = min(retry_s * 2, RETRY_MAX_S)
                    continue
                if failing_since is not None:
                    logger.info("call records: %s is back after %.1f s; writing what waited",
                                redacted_url(self.store.url), time.monotonic() - failing_since)
                    failing_since, last_logged = None, 0.0
                retry_s = RETRY_FIRST_S
                self.available = True
                self.metrics.store_up.set(1)
            self._idle.set()

    def _has_work(self) -> bool:
        return bool(self._entries) or any(
            call.version != call.written_version for call in self._calls.values()
        )

    async def ensure_schema(self) -> None:
        """Bring the database to the newest schema, once per process (the writer's
        first write does it too; resume snapshots may be read before any write)."""
        if not self._migrated:
            await self.store.migrate()
            self._migrated = True

    async def _write_once(self) -> None:
        await self.ensure_schema()
        entries = list(itertools.islice(self._entries, BATCH_ENTRIES))
        ids = {entry.call_id for entry in entries} | {
            call_id for call_id, call in self._calls.items()
            if call.version != call.written_version
        }
        versions = {call_id: self._calls[call_id].version for call_id in ids}
        call_rows = [self._call_row(call_id, self._calls[call_id]) for call_id in sorted(ids)]
        await self.store.write(call_rows, [_entry_row(entry) for entry in entries])
        # Only this task removes from the left, and the feed only appends: the first
        # len(entries) are still the ones written.
        for entry in entries:
            self._entries.popleft()
            self._calls[entry.call_id].pending -= 1
        self.metrics.written.inc(len(entries))
        self.metrics.buffered.set(len(self._entries))
        for call_id, version in versions.items():
            call = self._calls[call_id]
            call.written_version = max(call.written_version, version)
            if (call.closed and not call.encoding and call.pending == 0
                    and call.written_version == call.version):
                del self._calls[call_id]
                if self.webhook is not None and not call.hold_webhook:
                    self.webhook.call_written(call_id)

    def _call_row(self, call_id: str, call: _Call) -> dict[str, Any]:
        voice = call.settings.get("voice")
        return {
            "id": call_id,
            "transport": call.transport,
            "started_at": _utc(call.started_at),
            "ended_at": None if call.ended_at is None else _utc(call.ended_at),
            "end_reason": call.end_reason,
            "voice": voice if isinstance(voice, str) else None,
            "settings": call.settings,
            "server": self.server,
            "entries_dropped": call.recorder.dropped + call.buffer_dropped,
            "recording": call.recording_info,
        }


def _entry_row(entry: Entry) -> dict[str, Any]:
    return {
        "call_id": entry.call_id,
        "seq": entry.seq,
        "kind": entry.kind.value,
        "started_at": _utc(entry.started_at),
        "ended_at": _utc(entry.ended_at),
        "user_text": entry.user_text,
        "inputs": entry.inputs,
        "response_id": entry.response_id,
        "status": entry.status,
        "reason": entry.reason,
        "reply_text": entry.reply_text,
        "heard_text": entry.heard_text,
        "audio_ms": entry.audio_ms,
        "played_ms": entry.played_ms,
        "pauses": entry.pauses,
        "resumes": entry.resumes,
        "timings": entry.timings,
        "tool_calls": entry.tool_calls,
        "errors": entry.errors,
    }
