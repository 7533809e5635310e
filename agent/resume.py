"""Resuming a ``/ws`` call after its connection dropped (docs/calls.md, "Resume").

A ``/ws`` call that ends without the client closing it (a dropped network, a page
reload, a server drained for an upgrade) is *suspended* for
``VOICEFORGE_RESUME_WINDOW_S``: its ``pipeline.resume.ResumeSnapshot`` is kept in
this process's memory and, with a record database, saved there too, so that any
replica sharing it can take the call. A client that reconnects with the call's
resume token (subprotocol ``resume.<token>``) gets it back: same session id, history,
settings, client tools; the reply in flight is settled as cancelled with what the
client reports having played.

A suspended call holds no session slot and runs nothing (no engines, no task): the
reconnecting client is admitted like any new call. The suspensions kept in memory
are bounded; a snapshot is claimed once (a conditional update in the database, a
removal from memory on the loop), so a call cannot be resumed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.bridge import session_view, updated_config
from agent.config import Settings
from agent.protocol import OutputAudioPlayed, ProtocolError, encode_server_message
from agent.resume_tokens import ResumeClaims, issue_resume_token, read_resume_token
from pipeline.events import ErrorEvent, ResponseDone, ResponseStatus
from pipeline.history import History
from pipeline.reply_state import Response, ResponsePhase
from pipeline.resume import LOST_REPLY_REASON, LostReply, ResumeSnapshot

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from agent.records import CallRecords
    from agent.state import AppState
    from pipeline.conversation import Conversation, SessionConfig

logger = logging.getLogger("voiceforge.resume")

CLOSE_RESUME_INVALID = 4401
"""The token is not one of this server's (forged, malformed, another server's secret)."""
CLOSE_RESUME_UNKNOWN = 4404
CLOSE_RESUME_USED = 4409
CLOSE_RESUME_EXPIRED = 4410
CLOSE_TAKEN_OVER = 4000
"""The old connection of a call resumed on a new one."""
SNAPSHOT_WAIT_S = 3.0
"""How long a server waits for another replica's suspension of a call to reach the
database (a client may reconnect before the old server has written it)."""
SNAPSHOT_POLL_S = 0.1
SAVE_ATTEMPTS = 3


class ResumeRefused(Exception):
    """Why a resume token does not give the call back: the error to send and the
    close code."""

    def __init__(self, code: str, close_code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.message = message


@dataclass(slots=True)
class _Suspended:
    snapshot: ResumeSnapshot
    expires_at: float
    saved: asyncio.Task[bool] | None
    timer: asyncio.TimerHandle | None = None


class Resumer:
    """The server's suspended calls and its resume tokens."""

    def __init__(self, settings: Settings, records: CallRecords | None) -> None:
        self.window_s = settings.resume_window_s
        self.token_life_s = settings.max_call_s + settings.resume_window_s
        self.records = records
        self.max_suspended = max(64, 2 * settings.max_sessions)
        keyring = settings.keyring()
        self._secrets: dict[str, str]
        if keyring is not None:
            self._secrets = {key.key_id: key.secret for key in keyring.keys}
            self._signing = keyring.signing.key_id
        elif settings.resume_secret is not None:
            self._secrets, self._signing = {"resume": settings.resume_secret}, "resume"
        else:
            # Nothing shared with other replicas: this process's calls only.
            self._secrets, self._signing = {"local": secrets.token_urlsafe(32)}, "local"
        self._suspended: OrderedDict[str, _Suspended] = OrderedDict()
        self._saves: set[asyncio.Task[bool]] = set()
        self._watched: dict[str, asyncio.Event] = {}
        """Calls being taken over: set once suspended."""

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def token(self, session_id: str, epoch: int, started_at: float) -> str:
        """The resume token ``session.created`` hands out for this epoch of the call."""
        return issue_resume_token(self._secrets[self._signing], self._signing, session_id,
                                  epoch, started_at + self.token_life_s)

    def read(self, token: str) -> ResumeClaims | None:
        """The claims of a token this server signed (expired or not), else None."""
        return read_resume_token(token, self._secrets.get)

    def credential(self, token: str, now: float) -> bool:
        """A signed, unexpired token stands in for the caller's credential: it was
        handed to a caller admitted once, and it gives back only that call."""
        claims = self.read(token)
        return self.enabled and claims is not None and now < claims.expires_at

    # -------------------------------------------------------------- suspending

    def suspend(self, snapshot: ResumeSnapshot, now: float) -> None:
        """Keep a dropped call resumable for the window (and save it for the replicas)."""
        self._purge(now)
        while len(self._suspended) >= self.max_suspended:
            # The oldest gives way (its saved copy stays resumable on the replicas).
            self._ended(next(iter(self._suspended)))
        saved = None
        if self.records is not None:
            saved = asyncio.create_task(
                self._save(self.records, snapshot, now + self.window_s),
                name=f"{snapshot.session_id}-resume-save",
            )
            self._saves.add(saved)
            saved.add_done_callback(self._saves.discard)
        held = _Suspended(snapshot, now + self.window_s, saved)
        held.timer = asyncio.get_running_loop().call_later(
            self.window_s, self._ended, snapshot.session_id)
        self._suspended[snapshot.session_id] = held
        if (watched := self._watched.get(snapshot.session_id)) is not None:
            watched.set()

    def watch(self, session_id: str) -> asyncio.Event:
        """An event set when this call is next suspended."""
        return self._watched.setdefault(session_id, asyncio.Event())

    def unwatch(self, session_id: str) -> None:
        self._watched.pop(session_id, None)

    async def _save(self, records: CallRecords, snapshot: ResumeSnapshot,
                    expires_at: float) -> bool:
        # After the call's record (the writer migrates the schema first, too).
        await records.flushed(SNAPSHOT_WAIT_S)
        for attempt in range(SAVE_ATTEMPTS):
            try:
                await records.ensure_schema()
                await records.store.save_snapshot(
                    snapshot.session_id, snapshot.epoch, dt.datetime.fromtimestamp(
                        expires_at, dt.UTC), snapshot.to_json(), records.server)
                return True
            except Exception as exc:  # every driver failure looks different
                if attempt == SAVE_ATTEMPTS - 1:
                    logger.warning("session=%s: the resume snapshot was not saved (%s); "
                                   "only this server can resume the call",
                                   snapshot.session_id, type(exc).__name__)
                    return False
                await asyncio.sleep(0.2 * (attempt + 1))
        return False

    def _purge(self, now: float) -> None:
        for session_id in [sid for sid, held in self._suspended.items()
                           if held.expires_at <= now]:
            self._ended(session_id)

    def _ended(self, session_id: str) -> None:
        """The window passed (or memory ran out) with no resume here: the call's
        record is final, unless another replica resumed it."""
        held = self._suspended.pop(session_id, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        if self.records is None:
            return
        task = asyncio.create_task(self._final(self.records, held),
                                   name=f"{session_id}-resume-final")
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _final(self, records: CallRecords, held: _Suspended) -> bool:
        session_id = held.snapshot.session_id
        if held.saved is not None and await held.saved:
            try:
                resumed = await records.store.resumed_since(session_id, held.snapshot.epoch)
            except Exception as exc:  # every driver failure looks different
                logger.warning("session=%s: cannot tell whether the call was resumed "
                               "elsewhere (%s)", session_id, type(exc).__name__)
                resumed = False
            if resumed:
                return False  # its record goes on on the replica that has it
        records.release_webhook(session_id)
        return True

    def suspended(self) -> int:
        self._purge(time.time())
        return len(self._suspended)

    async def stop(self, timeout_s: float) -> None:
        """Let the snapshots being saved reach the database (a drained server's calls)."""
        for held in self._suspended.values():
            if held.timer is not None:
                held.timer.cancel()
        if self._saves:
            await asyncio.wait(set(self._saves), timeout=timeout_s)
        for task in list(self._saves):
            task.cancel()
        await asyncio.gather(*self._saves, return_exceptions=True)

    # --------------------------------------------------------------- claiming

    async def claim(self, token: str, *,
                    take_over: Callable[[str, int], Awaitable[bool]]) -> ResumeSnapshot:
        """The suspended call the token names, taken for resuming; raises
        ResumeRefused. ``take_over``: ends the call if it still runs on this server
        (its client's old connection not yet seen to be dead) and waits until it is
        suspended; False if it did not run here."""
        now = time.time()
        claims = self.read(token) if self.enabled else None
        if claims is None:
            raise ResumeRefused("resume_invalid", CLOSE_RESUME_INVALID,
                                "this resume token was not issued by this service")
        if now >= claims.expires_at:
            raise ResumeRefused("resume_expired", CLOSE_RESUME_EXPIRED,
                                "this resume token has expired")
        session_id = claims.session_id
        self._purge(now)
        held = self._suspended.get(session_id)
        if held is None and await take_over(session_id, claims.epoch):
            held = self._suspended.get(session_id)
        if held is not None and held.snapshot.epoch == claims.epoch:
            del self._suspended[session_id]  # on the loop, before any await: one winner
            if held.timer is not None:
                held.timer.cancel()
            if held.saved is not None and self.records is not None and await held.saved:
                # Saved, so another replica may have taken it meanwhile.
                outcome, _ = await self.records.store.claim_snapshot(
                    session_id, claims.epoch, dt.datetime.fromtimestamp(now, dt.UTC))
                if outcome != "claimed":
                    raise _refusal(outcome)
            return held.snapshot
        if held is not None and held.snapshot.epoch > claims.epoch:
            raise _refusal("used")
        if self.records is None:
            raise _refusal("missing")
        return await self._claim_saved(self.records, claims)

    async def _claim_saved(self, records: CallRecords, claims: ResumeClaims) -> ResumeSnapshot:
        outcome = "missing"
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        while True:
            try:
                await records.ensure_schema()
                outcome, body = await records.store.claim_snapshot(
                    claims.session_id, claims.epoch, dt.datetime.now(dt.UTC))
            except Exception as exc:
                logger.warning("session=%s: resume snapshots unavailable (%s)",
                               claims.session_id, type(exc).__name__)
                raise ResumeRefused("resume_unavailable", CLOSE_RESUME_UNKNOWN,
                                    "the call cannot be resumed now: its store is "
                                    "unavailable") from None
            if outcome == "claimed" and body is not None:
                try:
                    return ResumeSnapshot.from_json(body)
                except ValueError as exc:
                    logger.error("session=%s: %s", claims.session_id, exc)
                    raise _refusal("missing") from None
            if outcome != "missing" or time.monotonic() >= deadline:
                raise _refusal(outcome)
            await asyncio.sleep(SNAPSHOT_POLL_S)


def _refusal(outcome: str) -> ResumeRefused:
    if outcome == "expired":
        return ResumeRefused("resume_expired", CLOSE_RESUME_EXPIRED,
                             "the call's resume window has passed")
    if outcome == "used":
        return ResumeRefused("resume_used", CLOSE_RESUME_USED,
                             "this resume token was used already, or the call is "
                             "still connected")
    return ResumeRefused("resume_unknown", CLOSE_RESUME_UNKNOWN,
                         "no suspended call for this token (it ended, or the server "
                         "that carried it stopped without suspending it)")


# ------------------------------------------------------------- the call's side


def snapshot_of(conversation: Conversation, reply: Response | None, epoch: int,
                started_at: float, record_seq: int) -> ResumeSnapshot:
    """What a dropped call leaves; ``reply``: the one in flight when it dropped."""
    lost = None
    if reply is not None and not reply.held and reply.phase is not ResponsePhase.DONE:
        lost = LostReply.of(reply, time.monotonic())
    return ResumeSnapshot(
        conversation.session_id, epoch, session_view(conversation.config),
        tuple(conversation.history.messages()[1:]), lost, started_at, record_seq,
    )


def restored_config(state: AppState, snapshot: ResumeSnapshot) -> SessionConfig:
    """The call's settings, as its client last set them (checked again: this server's
    voices and limits may differ)."""
    fields = dict(snapshot.settings)
    return updated_config(state, state.session_config(), fields)


class LostReplySettler:
    """Ends the reply a dropped connection cut, once the resumed client says how much
    it played (its first ``output_audio.played`` for it), or at its first other
    message, or after ``timeout_s``: history keeps what was heard, and the client
    gets its ``response.done`` (cancelled, reason ``connection_lost``)."""

    def __init__(self, lost: LostReply, history: History, emit: Callable[[ResponseDone], None],
                 timeout_s: float) -> None:
        self.lost = lost
        self._history = history
        self._emit = emit
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self.settle, None)
        self.settled = False

    def settle(self, reported_ms: float | None) -> None:
        if self.settled:
            return
        self.settled = True
        self._timer.cancel()
        heard, played = self.lost.heard(reported_ms)
        self._history.add_assistant(heard)
        timings = {**self.lost.timings,
                   "played_source_client": 0.0 if reported_ms is None else 1.0}
        self._emit(ResponseDone(
            response_id=self.lost.response_id, status=ResponseStatus.CANCELLED,
            text=self.lost.text, text_heard=heard, audio_ms=self.lost.audio_ms,
            played_ms=played, timings=timings, reason=LOST_REPLY_REASON,
        ))

    def before(self, message: object) -> bool:
        """Settle before ``message`` is handled; True when the message was the
        played report it waited for (nothing else to do with it)."""
        if isinstance(message, OutputAudioPlayed) and (
            message.response_id == self.lost.response_id
        ):
            self.settle(message.played_ms)
            return True
        self.settle(None)
        return False

    def cancel(self) -> None:
        self._timer.cancel()


TAKEN_OVER = "taken_over"
"""The end of a connection whose call a resume took over (the client reconnected
before this server saw the old connection die)."""
RESUMABLE_ENDS = frozenset({"client_closed", "server_shutdown", TAKEN_OVER})
"""How a ``/ws`` call may end and stay resumable: the connection went away (unless
the client closed it with 1000), a draining server closed it, or a resume took it."""
TAKE_OVER_WAIT_S = 3.0


def resumable(state: AppState, ended_by: str, client_close_code: int | None) -> bool:
    resumer = state.resumer
    if resumer is None or not resumer.enabled or ended_by not in RESUMABLE_ENDS:
        return False
    return ended_by != "client_closed" or client_close_code not in (None, 1000)


def suspend(state: AppState, conversation: Conversation, epoch: int,
            reply: Response | None, started_at: float) -> None:
    """Keep a dropped call for its client to resume. Call after the record of the
    call was closed, before the conversation is forgotten; ``started_at``: the
    call's start (Unix time): its time limit counts from there across resumes."""
    assert state.resumer is not None
    record_seq = 0
    if state.records is not None:
        point = state.records.resume_point(conversation.session_id)
        record_seq = 0 if point is None else point[1]
        # Not posted as ended while it may come back: at the window's end, if it did not.
        state.records.hold_webhook(conversation.session_id)
    snapshot = snapshot_of(conversation, reply, epoch, started_at, record_seq)
    state.resumer.suspend(snapshot, time.time())
    logger.info("session=%s suspended for %g s", conversation.session_id,
                state.resumer.window_s, extra={"session_id": conversation.session_id})


async def _take_over(state: AppState, session_id: str, epoch: int) -> bool:
    """End this server's connection of the call (its client has a new one), then
    wait, bounded, for the call to be suspended. Only for the token of the call's
    current epoch: an older one takes nothing."""
    old = next((call for call in state.sessions
                if call.conversation.session_id == session_id), None)
    if old is None:
        return False
    if old.epoch != epoch:
        raise _refusal("used")
    assert state.resumer is not None
    arrived = state.resumer.watch(session_id)
    try:
        old.finish(CLOSE_TAKEN_OVER, TAKEN_OVER, flush=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), TAKE_OVER_WAIT_S)
    finally:
        state.resumer.unwatch(session_id)
    if arrived.is_set():
        return True
    if old in state.sessions:
        raise ResumeRefused("resume_busy", CLOSE_RESUME_USED,
                            "the call is still connected; try again shortly")
    raise _refusal("missing")  # it was ending by itself, and not resumably


async def claim_for(websocket: WebSocket, state: AppState,
                    token: str) -> tuple[ResumeSnapshot, SessionConfig] | None:
    """The call a connection's resume token gives back, with its settings; None
    when refused (the client got an ``error`` saying why, and the close code)."""
    try:
        if state.resumer is None:
            raise ResumeRefused("resume_invalid", CLOSE_RESUME_INVALID,
                                "this server resumes no calls")
        snapshot = await state.resumer.claim(
            token, take_over=lambda session_id, epoch: _take_over(state, session_id, epoch))
        try:
            return snapshot, restored_config(state, snapshot)
        except ProtocolError as exc:
            raise ResumeRefused("resume_failed", CLOSE_RESUME_UNKNOWN,
                                f"the call's settings do not fit this server: {exc}") from None
    except ResumeRefused as refused:
        state.metrics.errors.labels(refused.code, "client").inc()
        state.sampled_log.log(logger, logging.WARNING, f"resume:{refused.code}",
                              "resume refused: %s", refused.code)
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.send_bytes(encode_server_message(
                ErrorEvent(refused.code, refused.message, fatal=True, category="client")))
            await asyncio.wait_for(websocket.close(refused.close_code, refused.code), 2.0)
        return None
