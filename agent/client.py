"""The Python SDK: a caller on the VoiceForge protocol.

    async with await VoiceForgeClient.connect("ws://127.0.0.1:8000/ws") as client:
        await client.update_session(output_sample_rate=24000)
        streamer = asyncio.create_task(client.stream_audio(samples, 16000))
        async for event in client.events():
            ...

``PlaybackClock`` plays reply audio at real-time pace (without a speaker), drops
audio of cleared responses, pauses and resumes playback when told to, and reports
``output_audio.played``, as a real client must for history to match what was heard.
``update_session(playback_pause=True)`` asks the server for pauses (protocol 1.1).

Client tools (protocol 1.2, docs/tools.md): the model may call functions that run
here, in the caller's program::

    async def lookup_order(order_id: str) -> dict[str, str]:
        return {"status": "shipped"}

    await client.add_tool(
        "lookup_order", "Look up an order by its number.",
        {"type": "object", "properties": {"order_id": {"type": "string"}},
         "required": ["order_id"]},
        lookup_order,
    )

Each ``response.tool_call`` for one of them runs its handler (sync handlers in a
worker thread) in a task of its own, so events keep flowing meanwhile, and sends its
``tool.result``; what the handler raises is sent as an error result, and a handler
still running when the server settles its call without it (``tool_timeout_ms``
passed, a barge-in cancelled it) is cancelled.
``end_reason`` says why the server ended the call (``session.ended``: the agent hung up).
Used by ``voiceforge talk``, the tests and the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from agent.protocol import (
    MAX_CLIENT_TOOLS,
    SUBPROTOCOL,
    ConversationText,
    InputAudioAppend,
    OutputAudioPlayed,
    ProtocolError,
    ResponseCancel,
    ServerMessage,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    ToolResult,
    decode_server_frame,
    encode_client_message,
)
from pipeline.audio import float_to_pcm16, read_wav_mono
from pipeline.engines.base import FloatAudio
from pipeline.errors import VoiceForgeError
from pipeline.events import (
    ErrorEvent,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseDone,
    ResponseToolCall,
    ResponseToolResult,
    SessionEnded,
    SpeechStopped,
)
from pipeline.tools.executor import MAX_CLIENT_OUTPUT_CHARS
from pipeline.tools.spec import Executor, ToolError, ToolSpec

__all__ = ["ClientError", "ClientTool", "PlaybackClock", "VoiceForgeClient"]

logger = logging.getLogger("voiceforge.client")

TOOLS_MINOR = 2
"""The protocol minor version that brought client tools."""
DEFAULT_TOOL_TIMEOUT_MS = 10_000.0
"""``session.tool_timeout_ms`` when the server did not say (it always does from 1.2)."""
TOOL_TIMEOUT_GRACE_S = 1.0
"""A handler's own bound is the server's plus this: the server decides when a call
has timed out (its ``response.tool_result`` stops the handler); this only catches a
result that never arrives."""
EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}

ToolHandler = Callable[..., Any]
"""A client tool's function: called with the call's arguments as keyword arguments;
sync (run in a worker thread) or async. Its return value is the result (a str as it
is, anything else as JSON); what it raises is sent as an error result."""


class ClientError(VoiceForgeError):
    """The server refused something the client asked for."""


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A tool this client runs for the model (protocol 1.2)."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    """JSON schema of the arguments object (no ``pattern``, ``patternProperties``,
    ``$ref`` or ``$dynamicRef``: the server refuses them)."""
    handler: ToolHandler

    def __post_init__(self) -> None:
        try:  # the server's own checks, so a bad tool fails here, not in session.update
            ToolSpec(self.name, self.description, self.parameters, executor=Executor.CLIENT)
        except ToolError as error:
            raise ClientError(str(error)) from None
        if not callable(self.handler):
            raise ClientError(f"tool {self.name}: the handler must be callable")

    def definition(self) -> dict[str, Any]:
        """The ``session.tools`` entry (OpenAI Realtime's flat function format)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }

    async def run(self, arguments: dict[str, Any]) -> str:
        """Call the handler; its result as the ``tool.result`` output."""
        if inspect.iscoroutinefunction(self.handler):
            result = await self.handler(**arguments)
        else:
            # A blocking handler must not stall the connection's reader.
            result = await asyncio.to_thread(functools.partial(self.handler, **arguments))
            if inspect.isawaitable(result):
                result = await result
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        return text[:MAX_CLIENT_OUTPUT_CHARS]


@dataclass(slots=True)
class _ResponsePlayback:
    received_ms: float = 0.0
    buffer_end: float | None = None
    """Wall time at which the audio received so far will have finished playing."""
    frozen_played_ms: float | None = None
    """Set by a clear: playback stopped there."""
    paused_played_ms: float | None = None
    """Set by a pause: playback holds there, the buffer kept, until a resume."""


@dataclass(slots=True)
class PlaybackClock:
    """Plays responses in real time on the wall clock, with no speaker.

    A delta that arrives after the buffer ran dry restarts playback and counts
    as an underrun (the caller would have heard a gap). A paused response keeps
    its buffer and takes more audio; a resume plays on from where it stopped.
    """

    responses: dict[str, _ResponsePlayback] = field(default_factory=dict)
    underruns: int = 0
    dropped_after_clear: int = 0

    def receive(self, response_id: str, duration_ms: float, now: float) -> bool:
        """Queue a delta; False when its response was cleared (the audio is dropped)."""
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        if state.frozen_played_ms is not None:
            self.dropped_after_clear += 1
            return False
        if state.paused_played_ms is not None:
            state.received_ms += duration_ms
            return True
        if state.buffer_end is None:
            state.buffer_end = now
        elif state.buffer_end < now:
            self.underruns += 1
            state.buffer_end = now
        state.buffer_end += duration_ms / 1000.0
        state.received_ms += duration_ms
        return True

    def played_ms(self, response_id: str, now: float) -> float:
        state = self.responses.get(response_id)
        if state is None:
            return 0.0
        if state.frozen_played_ms is not None:
            return state.frozen_played_ms
        if state.paused_played_ms is not None:
            return state.paused_played_ms
        if state.buffer_end is None:
            return 0.0
        return state.received_ms - max(0.0, state.buffer_end - now) * 1000.0

    def clear(self, response_id: str, now: float) -> float:
        """Flush the buffer of ``response_id``; returns what had been played."""
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        played = self.played_ms(response_id, now)
        state.frozen_played_ms = played
        state.paused_played_ms = None
        return played

    def pause(self, response_id: str, now: float) -> float:
        """Hold playback of ``response_id`` where it is; returns what had been played.

        Pausing a cleared or already paused response changes nothing.
        """
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        played = self.played_ms(response_id, now)
        if state.frozen_played_ms is None and state.paused_played_ms is None:
            state.paused_played_ms = played
        return played

    def resume(self, response_id: str, now: float) -> None:
        """Play on from the pause: the rest of the buffer plays from ``now``."""
        state = self.responses.get(response_id)
        if state is None or state.paused_played_ms is None:
            return
        remaining_ms = state.received_ms - state.paused_played_ms
        state.paused_played_ms = None
        state.buffer_end = now + remaining_ms / 1000.0 if state.received_ms > 0 else None

    def is_paused(self, response_id: str) -> bool:
        state = self.responses.get(response_id)
        return state is not None and state.paused_played_ms is not None

    def is_playing(self, response_id: str, now: float) -> bool:
        state = self.responses.get(response_id)
        return (
            state is not None
            and state.frozen_played_ms is None
            and state.paused_played_ms is None
            and state.buffer_end is not None
            and state.buffer_end > now
        )


class VoiceForgeClient:
    """An async connection to ``/ws``."""

    def __init__(self, connection: ClientConnection, created: SessionCreated) -> None:
        self._ws = connection
        self.created = created
        self.session: dict[str, Any] = dict(created.session)
        self.playback = PlaybackClock()
        self._events: asyncio.Queue[ServerMessage | None] = asyncio.Queue(maxsize=10_000)
        self._waiters: list[asyncio.Future[ServerMessage]] = []
        self._reader = asyncio.create_task(self._read())
        self._reporter: asyncio.Task[None] | None = None
        self._sent_audio_ms = 0.0
        self._send_times: list[tuple[float, float]] = []
        self.first_audio_at: dict[str, float] = {}
        self.speech_end_sent_at: float | None = None
        self.tools: dict[str, ClientTool] = {}
        """The client tools declared with ``set_tools`` / ``add_tool``, by name."""
        self._tool_runs: dict[str, asyncio.Task[None]] = {}
        """Handlers running, by call id (a call id runs once; a cancel stops it)."""
        self.end_reason: str | None = None
        """Why the server ended the call (``session.ended``), e.g. ``end_call``."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        open_timeout: float = 30.0,
        max_size: int | None = 16 * 1024 * 1024,
    ) -> VoiceForgeClient:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        connection = await websockets.connect(
            url,
            additional_headers=headers,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=open_timeout,
            max_size=max_size,
            compression=None,  # PCM barely compresses; deflate only costs CPU
        )
        first = decode_server_frame(await connection.recv(decode=False))
        if not isinstance(first, SessionCreated):
            await connection.close()
            raise ClientError(f"expected session.created, got {type(first).__name__}")
        return cls(connection, first)

    async def __aenter__(self) -> VoiceForgeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def session_id(self) -> str:
        return self.created.session_id

    # ------------------------------------------------------------------ sending

    async def _send(self, message: Any) -> None:
        await self._ws.send(encode_client_message(message))

    async def update_session(self, **fields: Any) -> dict[str, Any]:
        """Send ``session.update`` and wait for the server's answer."""
        waiter = self._wait_for((SessionUpdated, ErrorEvent))
        await self._send(SessionUpdate(fields))
        answer = await asyncio.wait_for(waiter, 30)
        if isinstance(answer, ErrorEvent):
            raise ClientError(f"{answer.code}: {answer.message}")
        assert isinstance(answer, SessionUpdated)
        self.session = dict(answer.session)
        return self.session

    async def send_audio(self, audio: FloatAudio | bytes, sample_rate: int | None = None) -> None:
        """Send one chunk of PCM (float32 samples or PCM16 bytes) at the session's input rate."""
        rate = sample_rate or int(self.session["input_sample_rate"])
        pcm = audio if isinstance(audio, bytes) else float_to_pcm16(audio)
        self._sent_audio_ms += len(pcm) / 2 * 1000.0 / rate
        self._send_times.append((self._sent_audio_ms, time.monotonic()))
        await self._send(InputAudioAppend(pcm))

    async def stream_audio(
        self,
        source: FloatAudio | str | Path | AsyncIterator[FloatAudio] | Iterable[FloatAudio],
        sample_rate: int | None = None,
        *,
        frame_ms: float = 20.0,
        realtime: bool = True,
    ) -> None:
        """Stream audio as a microphone would: ``frame_ms`` frames, paced in real time.

        ``source`` is an array at ``sample_rate`` (the session's input rate by
        default), a WAV path (resampled to the session's input rate), or an (async)
        iterator of arrays already at the session rate.
        """
        rate = int(self.session["input_sample_rate"])
        if isinstance(source, str | Path):
            audio, file_rate = read_wav_mono(source)
            if file_rate != rate:
                from pipeline.audio import resample

                audio = resample(audio, file_rate, rate)
            source = audio
        if isinstance(source, np.ndarray):
            if sample_rate is not None and sample_rate != rate:
                from pipeline.audio import resample

                source = resample(source, sample_rate, rate)
            samples_per_frame = int(rate * frame_ms / 1000)
            frames: Iterable[FloatAudio] = (
                source[i : i + samples_per_frame] for i in range(0, len(source), samples_per_frame)
            )
            await self._pace(frames, rate, realtime)
            return
        if isinstance(source, AsyncIterator):
            async for chunk in source:
                await self.send_audio(chunk)
            return
        await self._pace(source, rate, realtime)

    async def _pace(self, frames: Iterable[FloatAudio], rate: int, realtime: bool) -> None:
        started = time.monotonic()
        sent_ms = 0.0
        for frame in frames:
            if realtime:
                delay = started + sent_ms / 1000.0 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_audio(frame, rate)
            sent_ms += len(frame) * 1000.0 / rate

    # -------------------------------------------------------------------- tools

    async def set_tools(self, tools: Iterable[ClientTool]) -> dict[str, Any]:
        """Declare this client's tools (replacing any declared before) and wait for the
        server's ``session.updated``; calls of them are answered from now on."""
        declared = list(tools)
        if self.created.protocol_minor < TOOLS_MINOR:
            raise ClientError(
                f"this server speaks protocol 1.{self.created.protocol_minor}; "
                f"client tools need 1.{TOOLS_MINOR}"
            )
        names = [each.name for each in declared]
        if len(set(names)) != len(names):
            raise ClientError("two client tools have the same name")
        limit = int(self.created.limits.get("max_client_tools", MAX_CLIENT_TOOLS))
        if len(declared) > limit:
            raise ClientError(f"at most {limit} client tools, not {len(declared)}")
        # In place before the update is sent: the reader may meet a call of a new tool
        # before this coroutine resumes after session.updated.
        previous, self.tools = self.tools, {each.name: each for each in declared}
        try:
            return await self.update_session(tools=[each.definition() for each in declared])
        except BaseException:
            self.tools = previous
            raise

    async def add_tool(
        self,
        name: str,
        description: str,
        parameters: Mapping[str, Any] | None,
        handler: ToolHandler,
    ) -> dict[str, Any]:
        """Declare one more client tool (one of the same name is replaced)."""
        tool = ClientTool(name, description, parameters or EMPTY_PARAMETERS, handler)
        kept = [each for each in self.tools.values() if each.name != name]
        return await self.set_tools([*kept, tool])

    async def remove_tool(self, name: str) -> dict[str, Any]:
        return await self.set_tools(each for each in self.tools.values() if each.name != name)

    async def send_tool_result(self, call_id: str, output: str, *, is_error: bool = False) -> None:
        """Answer a ``response.tool_call`` by hand (a tool declared without a handler,
        through ``update_session(tools=...)``)."""
        await self._send(ToolResult(call_id, output[:MAX_CLIENT_OUTPUT_CHARS], is_error))

    def _start_tool(self, call: ResponseToolCall) -> None:
        tool = self.tools.get(call.name)
        if call.executor != Executor.CLIENT.value or tool is None:
            return  # a server tool, or one this program answers itself
        if call.call_id in self._tool_runs:
            return
        self._tool_runs[call.call_id] = asyncio.create_task(
            self._answer(tool, call), name=f"{self.session_id}-tool-{call.name}"
        )

    async def _answer(self, tool: ClientTool, call: ResponseToolCall) -> None:
        timeout_ms = float(self.session.get("tool_timeout_ms") or DEFAULT_TOOL_TIMEOUT_MS)
        timeout_s = timeout_ms / 1000 + TOOL_TIMEOUT_GRACE_S
        deadline = asyncio.timeout(timeout_s)
        try:
            try:
                arguments = json.loads(call.arguments) if call.arguments.strip() else {}
                if not isinstance(arguments, dict):
                    raise ValueError("the arguments are not a JSON object")
                async with deadline:
                    output, is_error = await tool.run(arguments), False
            except Exception as error:
                if isinstance(error, TimeoutError) and deadline.expired():
                    # The server stopped waiting before this (its clock started first)
                    # and its timeout result never came: a late answer would be refused.
                    logger.warning(
                        "session=%s tool %s still running after %g s: cancelled",
                        self.session_id, tool.name, timeout_s,
                    )
                    return
                output, is_error = f"{type(error).__name__}: {error}", True
            # Answered: the server's result for this call must not cancel the send.
            self._tool_runs.pop(call.call_id, None)
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.send_tool_result(call.call_id, output, is_error=is_error)
        finally:
            self._tool_runs.pop(call.call_id, None)

    async def send_text(self, text: str) -> None:
        await self._send(ConversationText(text))

    async def cancel(self, response_id: str | None = None) -> None:
        await self._send(ResponseCancel(response_id))

    async def report_played(self, response_id: str, played_ms: float) -> None:
        await self._send(OutputAudioPlayed(response_id, played_ms))

    # ---------------------------------------------------------------- receiving

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if isinstance(frame, str):
                    continue
                try:
                    message = decode_server_frame(frame)
                except ProtocolError as error:
                    if error.code != "unknown_type":
                        raise
                    continue  # a newer minor version's addition: ignored, as §1 says
                await self._on_message(message)
                for waiter in list(self._waiters):
                    if not waiter.done() and isinstance(message, waiter.kinds):  # type: ignore[attr-defined]
                        waiter.set_result(message)
                        self._waiters.remove(waiter)
                await self._events.put(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(ClientError("connection closed"))
            await self._events.put(None)

    async def _on_message(self, message: ServerMessage) -> None:
        now = time.monotonic()
        if isinstance(message, SpeechStopped):
            self.speech_end_sent_at = self.sent_at(message.audio_end_ms)
        elif isinstance(message, ResponseAudioDelta):
            self.first_audio_at.setdefault(message.response_id, now)
            self.playback.receive(message.response_id, message.duration_ms, now)
        elif isinstance(message, ResponseAudioClear):
            played = self.playback.clear(message.response_id, now)
            # Right after a clear the server waits for this to truncate history.
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.report_played(message.response_id, played)
        elif isinstance(message, ResponseAudioPause):
            played = self.playback.pause(message.response_id, now)
            # Where it stopped: what the caller heard if the pause becomes a cancel.
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.report_played(message.response_id, played)
        elif isinstance(message, ResponseAudioResume):
            self.playback.resume(message.response_id, now)
        elif isinstance(message, ResponseToolCall):
            self._start_tool(message)
        elif isinstance(message, ResponseToolResult):
            if run := self._tool_runs.get(message.call_id):
                # The server has settled the call without this handler (a barge-in
                # cancelled it, it timed out): nobody waits for its result any more.
                run.cancel()
        elif isinstance(message, SessionEnded):
            self.end_reason = message.reason  # the server closes the WebSocket next

    def sent_at(self, audio_ms: float) -> float | None:
        """Wall time at which the input audio up to ``audio_ms`` had been sent."""
        for end_ms, sent in self._send_times:
            if end_ms >= audio_ms:
                return sent
        return None

    def _wait_for(self, kinds: tuple[type, ...]) -> asyncio.Future[ServerMessage]:
        future: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        future.kinds = kinds  # type: ignore[attr-defined]
        self._waiters.append(future)
        return future

    async def events(self) -> AsyncIterator[ServerMessage]:
        """Every server message, in order, until the connection closes."""
        while (message := await self._events.get()) is not None:
            yield message

    async def next_event(self, wait_s: float) -> ServerMessage | None:
        """The next message, or None when the connection closed. Raises TimeoutError."""
        return await asyncio.wait_for(self._events.get(), wait_s)

    def start_reporting(self, interval_s: float = 0.25) -> None:
        """Report ``output_audio.played`` periodically for the responses being played."""
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_loop(interval_s))

    async def _report_loop(self, interval_s: float) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.sleep(interval_s)
                now = time.monotonic()
                for response_id, state in list(self.playback.responses.items()):
                    if (
                        state.frozen_played_ms is not None
                        or state.paused_played_ms is not None
                        or state.buffer_end is None
                    ):
                        continue  # cleared or paused: reported when it happened
                    if state.buffer_end + interval_s < now:
                        continue  # finished and already reported
                    await self.report_played(response_id, self.playback.played_ms(response_id, now))

    @property
    def closed(self) -> bool:
        """True once the connection is gone: closed by either side, or dropped."""
        return self._reader.done()

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once closed (1000 after ``session.ended``)."""
        return self._ws.close_code

    def abort(self) -> None:
        """Drop the connection with no close handshake, as a caller losing signal would."""
        self._ws.transport.abort()

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
        runs = list(self._tool_runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await self._ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


def is_final(message: ServerMessage) -> bool:
    return isinstance(message, ResponseDone)
