"""The WebRTC bridge (aiortc): ``POST /webrtc/offer``, one peer connection per call.

Glue only. The caller's audio track (Opus, 48 kHz) is resampled to 16 kHz mono and
fed to a ``Conversation``; the reply goes out through ``ReplyTrack``, which paces
20 ms frames in real time, sends silence when idle or while a response is paused
(protocol 1.1: caller speech over the reply, resumed if it was a backchannel),
drops what it holds of a response the moment it is cleared, and reports how much
of each response it has actually sent (``report_played``), so history truncation
after a barge-in is exact.
Every other event goes to the peer as JSON text on the data channel ``events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import av
import msgpack
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import bridge, intake
from agent.bridge import session_view
from agent.limits import AudioRateLimiter, FrameRateLimiter
from agent.protocol import (
    PROTOCOL_VERSION,
    ConversationText,
    ProtocolError,
    ResponseCancel,
    ServerMessage,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    ToolResult,
    decode_client_frame,
    shown,
)
from agent.state import AppState, Slot
from pipeline.conversation import Conversation
from pipeline.echo import EchoGuard
from pipeline.events import (
    ErrorEvent,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    SessionEnded,
)

logger = logging.getLogger("voiceforge.webrtc")

OUTPUT_RATE = 48000
INPUT_RATE = 16000
FRAME_SAMPLES = OUTPUT_RATE // 50
"""20 ms at 48 kHz: the Opus frame the track sends."""
MAX_BUFFERED_MS = 120_000.0
REPORT_EVERY_FRAMES = 5
CONNECT_TIMEOUT_S = 30.0
DATA_CHANNEL_LABEL = "events"
MAX_PENDING_EVENTS = 1000
MAX_OFFER_BYTES = 64 * 1024
MAX_CHANNEL_MESSAGE_CHARS = 40 * 1024
"""As ``/ws``'s control frames: a ``session.update`` with client tools can be large."""
BRIDGE_FIELDS = frozenset({"input_sample_rate", "output_sample_rate", "playback_pause"})
"""``session.update`` fields the bridge sets for a WebRTC call: its audio travels on
media tracks at the rates the peers negotiated, and its playback always pauses."""
AUDIO_CODECS = frozenset({"audio/opus", "audio/pcmu", "audio/pcma"})
"""What the call's one audio line may negotiate (aiortc would add G722)."""
MEDIA_FRAME_RATE = 100.0
"""Frames per second read from the caller's track: 50 of 20 ms is normal, and
Opus frames are never shorter than 10 ms (100/s). Beyond the burst, frames over
this rate are dropped; a second's worth of drops more closes the call."""
MEDIA_FRAME_BURST = 200.0
CHANNEL_MESSAGE_RATE = 20.0
"""Data channel messages per second (typed turns and cancels, not a stream)."""
OFFER_READ_TIMEOUT_S = 5.0
"""An offer is a few kB sent at once; a caller that trickles it holds a slot."""

Sent = Callable[[str | None, float, npt.NDArray[np.int16]], None]
"""(response id or None for silence, ms of that response sent so far, the samples)."""


class ReplyTrack(MediaStreamTrack):
    """The agent's voice: 20 ms frames paced in real time, silence when idle or
    paused (a paused response keeps its queue until resumed or cleared)."""

    kind = "audio"

    def __init__(self, on_sent: Sent) -> None:
        super().__init__()
        self._on_sent = on_sent
        self._queues: dict[str, deque[npt.NDArray[np.int16]]] = {}
        """Queued samples per response, responses in arrival order."""
        self._buffered: dict[str, int] = {}
        self._sent_ms: dict[str, float] = {}
        self._paused: set[str] = set()
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        """Frames handed to the encoder: the caller's n-th frame is our n-th."""

    @property
    def buffered_ms(self) -> float:
        return sum(self._buffered.values()) * 1000.0 / OUTPUT_RATE

    def buffered_ms_of(self, response_id: str) -> float:
        return self._buffered.get(response_id, 0) * 1000.0 / OUTPUT_RATE

    def push(self, response_id: str, pcm: bytes) -> bool:
        """Queue reply audio (PCM16 at 48 kHz); False when the buffer is full."""
        if self.buffered_ms >= MAX_BUFFERED_MS:
            return False
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        self._queues.setdefault(response_id, deque()).append(samples)
        self._buffered[response_id] = self._buffered.get(response_id, 0) + len(samples)
        self._sent_ms.setdefault(response_id, 0.0)
        return True

    def pause(self, response_id: str) -> float:
        """Stop sending ``response_id`` (silence instead), keep its queue; return the
        ms of it sent."""
        self._paused.add(response_id)
        return self._sent_ms.get(response_id, 0.0)

    def resume(self, response_id: str) -> None:
        self._paused.discard(response_id)

    def clear(self, response_id: str) -> float:
        """Drop every queued sample of ``response_id``; return the ms of it sent."""
        self._queues.pop(response_id, None)
        self._buffered.pop(response_id, None)
        self._paused.discard(response_id)
        return self._sent_ms.pop(response_id, 0.0)

    def _take(self) -> tuple[str | None, npt.NDArray[np.int16]]:
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        # One frame never mixes two responses: the next one starts on a fresh frame.
        response_id = next(
            (rid for rid, queue in self._queues.items() if queue and rid not in self._paused),
            None,
        )
        if response_id is None:
            return None, frame
        queue = self._queues[response_id]
        filled = 0
        while filled < FRAME_SAMPLES and queue:
            samples = queue[0]
            n = min(FRAME_SAMPLES - filled, len(samples))
            frame[filled : filled + n] = samples[:n]
            filled += n
            if n == len(samples):
                queue.popleft()
            else:
                queue[0] = samples[n:]
        self._buffered[response_id] -= filled
        if not queue:
            del self._queues[response_id]
            del self._buffered[response_id]
        self._sent_ms[response_id] += filled * 1000.0 / OUTPUT_RATE
        return response_id, frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / OUTPUT_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        response_id, samples = self._take()
        self.frames_sent += 1
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUTPUT_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OUTPUT_RATE)
        sent = self._sent_ms.get(response_id, 0.0) if response_id is not None else 0.0
        self._on_sent(response_id, sent, samples)
        return frame


class WebRTCSession:
    """One call over one peer connection."""

    def __init__(self, state: AppState, slot: Slot, *, echo_cancelled: bool) -> None:
        self.state = state
        self.slot = slot
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        config = replace(
            state.session_config(),
            input_sample_rate=INPUT_RATE,
            output_sample_rate=OUTPUT_RATE,
            playback_pause=True,
        )
        self.conversation = Conversation(state.engines, self.emit, config)
        self.started_at = time.monotonic()
        self.last_input_at = self.started_at
        self.track = ReplyTrack(self._on_sent)
        self.guard: EchoGuard | None = bridge.echo_guard(
            state, OUTPUT_RATE, echo_cancelled=echo_cancelled
        )
        self.channel: RTCDataChannel | None = None
        self.audio: RTCRtpTransceiver | None = None
        """The one audio line of the offer this call takes; any other is inactive."""
        self.media_frames = FrameRateLimiter(MEDIA_FRAME_RATE, MEDIA_FRAME_BURST, flood_factor=1.0)
        self.audio_rate = AudioRateLimiter(
            state.settings.max_audio_realtime_factor, state.settings.audio_burst_ms
        )
        self.channel_messages = FrameRateLimiter(
            CHANNEL_MESSAGE_RATE, 2 * CHANNEL_MESSAGE_RATE, flood_factor=5.0
        )
        self.ended_by: str | None = None
        """Why the server hung up (a metric label), if it did."""
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._cleared: set[str] = set()
        self._frames_since_report = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None
        self._closed = False
        self._opened = False

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------- signalling

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        # Ours before the offer is read: its first audio line takes this
        # transceiver, and with it the codec preferences.
        audio = pc.addTransceiver(self.track, direction="sendrecv")
        audio.setCodecPreferences([
            codec for codec in RTCRtpSender.getCapabilities("audio").codecs
            if codec.mimeType.lower() in AUDIO_CODECS
        ])
        self.audio = audio
        await pc.setRemoteDescription(offer)
        if audio.mid is None:
            raise ValueError("the offer has no audio track")
        for other in pc.getTransceivers():
            if other is not audio:
                # Video, or a second audio line: answered inactive, so nothing of
                # it is received, decoded or buffered.
                other.direction = "inactive"
        # aiortc's setLocalDescription gathers every candidate before returning.
        await pc.setLocalDescription(await pc.createAnswer())
        if self._closed:  # hung up (the server drains) while the answer was made
            raise ConnectionAbortedError("the call was ended while it was set up")
        self._opened = True
        bridge.session_opened(self.state, self.conversation, "webrtc")
        self.emit(
            SessionCreated(
                session_id=self.session_id,
                protocol_version=PROTOCOL_VERSION,
                session=session_view(self.conversation.config),
                limits={"voices": list(self.state.engines.tts.voices())},
            )
        )
        self.conversation.start()
        self._spawn(self._watch_connect())
        return pc.localDescription

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.audio is not None and track is self.audio.receiver.track:
            self._spawn(self._read_input(track))
        else:
            # Its line is inactive; should frames reach it anyway, they are read
            # and dropped here rather than pile up in aiortc's queue.
            self._spawn(self._discard(track))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL or self.channel is not None:
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_channel_message)
        if channel.readyState == "open":
            self._flush_pending()
        else:
            channel.on("open", self._flush_pending)

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close_soon()

    async def _watch_connect(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.pc.connectionState != "connected":
            logger.info("session=%s: no connection after %ss", self.session_id, CONNECT_TIMEOUT_S)
            self.close_soon()

    # ------------------------------------------------------------------ audio

    async def _read_input(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=INPUT_RATE)
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if not self._media_frame_ok(now):
                    return
                assert isinstance(frame, av.AudioFrame)
                self.last_input_at = now
                if not self.audio_rate.accept(frame.samples * 1000.0 / frame.sample_rate, now):
                    continue  # faster than real time allows: dropped, as on /ws
                for out in resampler.resample(frame):
                    audio = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    if self.guard is not None:
                        audio = self.guard.filter(audio, now)
                    if not self.conversation.feed_audio(audio):
                        logger.debug(
                            "session=%s: input queue full, frame dropped", self.session_id
                        )
        except MediaStreamError:
            logger.info("session=%s: caller's track ended", self.session_id)
            self.close_soon()

    async def _discard(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while self._media_frame_ok(time.monotonic()):
                await track.recv()

    def _media_frame_ok(self, now: float) -> bool:
        """False once the peer sends frames far faster than any caller does: the
        call is closed (a flood costs decoding and memory before it costs us)."""
        if self.media_frames.accept(now) or not self.media_frames.flooding:
            return True
        logger.warning("session=%s: media floods (> %g frames/s); closing the call",
                       self.session_id, MEDIA_FRAME_RATE)
        self.emit(ErrorEvent("too_many_frames", "media frames arrive far faster than real "
                             "time; closing the call", fatal=True))
        self.close_soon("media_flood")
        return False

    def _on_sent(
        self, response_id: str | None, sent_ms: float, samples: npt.NDArray[np.int16]
    ) -> None:
        now = time.monotonic()
        if self.guard is not None:
            self.guard.played(samples.astype(np.float32) / 32768.0, now)
        if response_id is None:
            return
        self._frames_since_report += 1
        drained = self.track.buffered_ms_of(response_id) == 0.0
        if drained or self._frames_since_report >= REPORT_EVERY_FRAMES:
            self._frames_since_report = 0
            self.conversation.report_played(response_id, sent_ms)

    # ----------------------------------------------------------------- events

    def emit(self, event: ServerMessage) -> None:
        bridge.observe(self.state, self.session_id, event)
        if isinstance(event, ResponseAudioDelta):
            if event.response_id not in self._cleared and not self.track.push(
                event.response_id, event.audio
            ):
                logger.warning("session=%s: reply buffer full, audio dropped", self.session_id)
            return
        if isinstance(event, ResponseAudioPause) and event.response_id not in self._cleared:
            # Silence from the next frame on; the echo guard hears that silence as
            # it is sent. What went out before the pause is what was heard.
            self.conversation.report_played(
                event.response_id, self.track.pause(event.response_id)
            )
        elif isinstance(event, ResponseAudioResume):
            self.track.resume(event.response_id)
        elif isinstance(event, ResponseAudioClear):
            self._cleared.add(event.response_id)
            sent_ms = self.track.clear(event.response_id)
            if self.guard is not None:
                self.guard.flushed(time.monotonic())
            # The track knows exactly what went out: the history is cut there.
            self.conversation.report_played(event.response_id, sent_ms)
        text = bridge.event_json(event)
        if text is not None:
            self._send_text(text)
        if isinstance(event, SessionEnded):
            self.close_soon(event.reason)  # the goodbye was heard: hang up

    def _send_text(self, text: str) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        else:
            self._pending.append(text)

    def _flush_pending(self) -> None:
        while self._pending and self.channel is not None:
            self.channel.send(self._pending.popleft())

    def _on_channel_message(self, data: str | bytes) -> None:
        if not self.channel_messages.accept(time.monotonic()):
            if self.channel_messages.flooding:
                self.emit(ErrorEvent("too_many_frames", "data channel flood; closing the call",
                                     fatal=True))
                self.close_soon("flood")
            return
        if len(data) > MAX_CHANNEL_MESSAGE_CHARS:
            self.emit(ErrorEvent("frame_too_large", "data channel messages are at most "
                                 f"{MAX_CHANNEL_MESSAGE_CHARS} characters"))
            return
        try:
            raw = msgpack.packb(json.loads(data), use_bin_type=True)
            message = decode_client_frame(raw)
        except ProtocolError as exc:
            self.emit(ErrorEvent(exc.code, str(exc)))
            return
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            # Too deep, a number msgpack cannot hold, not JSON: the call goes on.
            self.emit(ErrorEvent("malformed_frame", "data channel messages are JSON maps "
                                 f"({type(exc).__name__})"))
            return
        if isinstance(message, ResponseCancel):
            self.conversation.cancel_response(message.response_id)
        elif isinstance(message, ConversationText):
            self.conversation.send_text(message.text)
        elif isinstance(message, SessionUpdate):
            self._update_session(message.session)
        elif isinstance(message, ToolResult):
            if not self.conversation.tool_result(
                message.call_id, message.output, message.is_error
            ):
                self.emit(ErrorEvent(
                    "unknown_tool_call",
                    f"no client tool call {shown(message.call_id)} is waiting for a result "
                    "(answered already, timed out, or never made)",
                ))
        else:
            self.emit(
                ErrorEvent(
                    "unknown_type",
                    "the data channel takes session.update, conversation.text, "
                    "response.cancel and tool.result; audio and its playback travel on "
                    "the media tracks",
                )
            )

    def _update_session(self, fields: dict[str, Any]) -> None:
        """A ``session.update`` from the data channel, as ``/ws`` applies it, less the
        fields the bridge sets (``BRIDGE_FIELDS``)."""
        fixed = sorted(BRIDGE_FIELDS.intersection(fields))
        if fixed:
            self.emit(ErrorEvent(
                "invalid_session",
                f"{', '.join(fixed)}: set by the WebRTC bridge (the media tracks' rates; "
                "playback always pauses)",
            ))
            return
        try:
            updated = bridge.updated_config(self.state, self.conversation.config, fields)
        except ProtocolError as exc:
            self.emit(ErrorEvent(exc.code, str(exc)))
            return
        self.conversation.update(updated)
        self.emit(SessionUpdated(session_view(updated)))

    # -------------------------------------------------------------- lifecycle

    def close_soon(self, reason: str | None = None) -> None:
        if self._closer is None and not self._closed:
            if reason is not None and self.ended_by is None:
                self.ended_by = reason
                self.state.metrics.disconnects.labels(reason).inc()
            self._closer = asyncio.create_task(self.close())

    async def close(self) -> None:
        """Stop every task and track of this call; safe to call more than once.
        Whatever fails on the way is logged, and the call still leaves the
        server's books and frees its slot."""
        if self._closed:
            return
        self._closed = True
        try:
            current = asyncio.current_task()
            tasks = [task for task in self._tasks if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self.conversation.close()
            finally:
                self.track.stop()
                await self.pc.close()
        except Exception:
            logger.exception("session=%s: closing the call failed", self.session_id)
        finally:
            self.state.bridge_sessions.discard(self)
            self.slot.release()
            if self._opened:
                bridge.session_closed(self.state, self.conversation, self.ended_by or "peer_closed")
            logger.info("session=%s: WebRTC call closed", self.session_id)


async def _offer(request: Request) -> Response:
    admitted = intake.admit_request(request, intake.Transport.WEBRTC)
    if isinstance(admitted, Response):
        return admitted
    slot = admitted
    try:
        return await _answer_offer(request, slot)
    finally:
        if slot.hang_up is None:  # no call came of it
            slot.release()


async def _answer_offer(request: Request, slot: Slot) -> Response:
    state: AppState = request.app.state.voiceforge
    try:
        body = await intake.read_body(
            request, max_bytes=MAX_OFFER_BYTES, timeout_s=OFFER_READ_TIMEOUT_S
        )
    except intake.BodyRefused as refused:
        return JSONResponse({"error": "bad_offer", "message": refused.message},
                            status_code=refused.status)
    try:
        offer = json.loads(body)
        sdp, kind = offer["sdp"], offer["type"]
        if not isinstance(sdp, str) or kind != "offer":
            raise ValueError("expected {'sdp': str, 'type': 'offer'}")
        echo_cancelled = offer.get("echo_cancelled", False) is True
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return JSONResponse({"error": "bad_offer", "message": f"bad offer: {exc}"},
                            status_code=400)
    session = WebRTCSession(state, slot, echo_cancelled=echo_cancelled)
    slot.hang_up = session.close
    try:
        answer = await session.answer(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # aiortc raises many kinds on a hostile SDP
        hung_up = session.closed
        await session.close()
        if hung_up:
            return JSONResponse({"error": "draining", "message": str(exc)}, status_code=503)
        return JSONResponse(
            {"error": "bad_offer", "message": f"cannot answer the offer: {exc}"}, status_code=400
        )
    state.bridge_sessions.add(session)
    return JSONResponse({"sdp": answer.sdp, "type": answer.type, "session_id": session.session_id})


routes = [Route("/webrtc/offer", _offer, methods=["POST"])]

__all__ = ["ReplyTrack", "WebRTCSession", "routes"]
