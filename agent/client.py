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

Resume (protocol 1.3, docs/calls.md): when the connection drops (anything but a close
with 1000 or a 4xxx code), the client reconnects with the call's resume token within
the server's ``limits.resume_window_s``, backing off between tries; the new
``session.created`` (``resumed: true``) comes through ``events()``, the reply that
was playing is cut where it was and reported played, and what is sent meanwhile
waits for the new connection. ``connect(..., auto_resume=False)`` turns it off;
``resumes`` counts the resumes.
Used by ``voiceforge talk``, the tests and the load generator.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from agent.playback import PlaybackClock
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

__all__ = ["ClientError", "ClientTool", "PlaybackClock", "VoiceForgeClient", "encode_audio"]

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
RESUME_FIRST_DELAY_S = 0.1
RESUME_MAX_DELAY_S = 2.0
RESUME_OPEN_TIMEOUT_S = 10.0
NOWAIT_BUFFER_BYTES = 32 * 1024
"""``send_encoded_audio_nowait`` writes only below this much unsent data (websockets'
default ``write_limit``, where ``send()`` starts waiting), so a peer that stops reading
is waited for."""


def encode_audio(pcm: bytes) -> bytes:
    """An ``input_audio.append`` of PCM16 ``pcm`` as it goes on the wire."""
    return encode_client_message(InputAudioAppend(pcm))


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
        self.auto_resume = False
        """Reconnect with the resume token when the connection drops (set by ``connect``)."""
        self.resumes = 0
        self._url: str | None = None
        self._api_key: str | None = None
        self._max_size: int | None = None
        self._closing = False
        self._lost: ClientConnection | None = None
        """A connection known to be dead (``drop``): nothing is sent on it."""
        self._playing: str | None = None
        """The response whose audio plays now: cut and reported when resuming."""
        self._swapped = asyncio.Event()
        """Set (and replaced) when the connection is replaced or the reader ends."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        open_timeout: float = 30.0,
        max_size: int | None = 16 * 1024 * 1024,
        auto_resume: bool = True,
        resume_token: str | None = None,
    ) -> VoiceForgeClient:
        """Open a call; with ``resume_token``, get a dropped call back instead."""
        connection, first = await _open(url, api_key, open_timeout, max_size, resume_token)
        if not isinstance(first, SessionCreated):
            await connection.close()
            raise ClientError(f"expected session.created, got {type(first).__name__}"
                              + (f" ({first.code}: {first.message})"
                                 if isinstance(first, ErrorEvent) else ""))
        client = cls(connection, first)
        client._url, client._api_key, client._max_size = url, api_key, max_size
        client.auto_resume = auto_resume
        return client

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
        await self._send_bytes(encode_client_message(message))

    async def _send_bytes(self, data: bytes) -> None:
        while True:
            connection = self._ws
            try:
                if connection is self._lost:  # known dead: writes would vanish
                    raise websockets.ConnectionClosed(None, None)
                await connection.send(data)
                return
            except websockets.ConnectionClosed:
                # Dropped: sent on the resumed connection, if the call comes back.
                while self._ws is connection:
                    if not self.auto_resume or self._closing or self._reader.done():
                        raise
                    await self._swapped.wait()

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
        await self.send_encoded_audio(encode_audio(pcm), len(pcm) // 2, rate)

    async def send_encoded_audio(self, data: bytes, samples: int, rate: int) -> None:
        """Send an ``input_audio.append`` made once by ``encode_audio`` (a microphone
        sends the same silence frame, and a script the same utterance, many times)."""
        if not self.send_encoded_audio_nowait(data, samples, rate):
            self._count_sent(samples, rate)
            await self._send_bytes(data)

    def send_encoded_audio_nowait(self, data: bytes, samples: int, rate: int) -> bool:
        """Write an encoded frame now, without a task switch, when the connection is
        open and its write buffer is below ``NOWAIT_BUFFER_BYTES``; False, with nothing
        sent, otherwise (closed, dropped, or the peer not reading: then
        ``send_encoded_audio`` waits, resumes and raises as ``send`` does).

        This is websockets' own sans-I/O framing and the connection's transport,
        without ``send()``'s flow-control coroutine: what lets one process drive
        hundreds of real-time microphones (``agent.caller.FrameClock``)."""
        connection = self._ws
        if (
            connection is self._lost
            or connection.protocol.state is not State.OPEN
            or connection.transport.get_write_buffer_size() > NOWAIT_BUFFER_BYTES
        ):
            return False
        connection.protocol.send_binary(data)
        for chunk in connection.protocol.data_to_send():
            connection.transport.write(chunk)
        self._count_sent(samples, rate)
        return True

    def _count_sent(self, samples: int, rate: int) -> None:
        self._sent_audio_ms += samples * 1000.0 / rate
        self._send_times.append((self._sent_audio_ms, time.monotonic()))

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
            while True:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for frame in self._ws:
                        await self._take(frame)
                if not await self._resume():
                    break
        finally:
            self._swap()
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(ClientError("connection closed"))
            await self._events.put(None)

    async def _take(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            return
        try:
            message = decode_server_frame(frame)
        except ProtocolError as error:
            if error.code != "unknown_type":
                raise
            return  # a newer minor version's addition: ignored, as §1 says
        await self._on_message(message)
        for waiter in list(self._waiters):
            if not waiter.done() and isinstance(message, waiter.kinds):  # type: ignore[attr-defined]
                waiter.set_result(message)
                self._waiters.remove(waiter)
        await self._events.put(message)

    def _swap(self) -> None:
        swapped, self._swapped = self._swapped, asyncio.Event()
        swapped.set()

    def _resumable(self) -> bool:
        code = self._ws.close_code
        return (self.auto_resume and not self._closing and self._url is not None
                and self.created.resume_token is not None and self.end_reason is None
                and code not in (1000, 1008) and not (code is not None and 4000 <= code < 5000))

    async def _resume(self) -> bool:
        """Get the call back on a new connection after a drop (bounded by the window)."""
        if not self._resumable():
            return False
        url, token = self._url, self.created.resume_token
        assert url is not None and token is not None
        deadline = time.monotonic() + float(self.created.limits.get("resume_window_s") or 0.0)
        delay = RESUME_FIRST_DELAY_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                connection, first = await _open(url, self._api_key, min(
                    left, RESUME_OPEN_TIMEOUT_S), self._max_size, token)
            except (OSError, TimeoutError, websockets.InvalidHandshake) as error:
                logger.info("session=%s: reconnecting failed (%s); retrying", self.session_id,
                            type(error).__name__)
            else:
                if isinstance(first, SessionCreated):
                    await self._resumed(connection, first)
                    return True
                await connection.close()
                if isinstance(first, ErrorEvent):
                    await self._events.put(first)  # why the call did not come back
                    if first.code != "resume_busy":
                        return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, RESUME_MAX_DELAY_S)
        return False

    async def _resumed(self, connection: ClientConnection, created: SessionCreated) -> None:
        self._ws, self.created = connection, created
        self.session = dict(created.session)
        self.resumes += 1
        cut, self._playing = self._playing, None
        if cut is not None:
            # Playback stops here: what played is what the caller heard of it.
            played = self.playback.clear(cut, time.monotonic())
            with contextlib.suppress(websockets.ConnectionClosed):
                await connection.send(encode_client_message(OutputAudioPlayed(cut, played)))
        self._swap()
        await self._events.put(created)

    async def _on_message(self, message: ServerMessage) -> None:
        now = time.monotonic()
        if isinstance(message, SpeechStopped):
            self.speech_end_sent_at = self.sent_at(message.audio_end_ms)
        elif isinstance(message, ResponseAudioDelta):
            self._playing = message.response_id
            self.first_audio_at.setdefault(message.response_id, now)
            self.playback.receive(message.response_id, message.duration_ms, now)
        elif isinstance(message, ResponseDone) and message.response_id == self._playing:
            self._playing = None
        elif isinstance(message, ResponseAudioClear):
            if message.response_id == self._playing:
                self._playing = None
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
        index = bisect.bisect_left(self._send_times, audio_ms, key=lambda sent: sent[0])
        return self._send_times[index][1] if index < len(self._send_times) else None

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
        """Hang up with no close handshake, as a caller who is gone: never resumed."""
        self._closing = True
        self._ws.transport.abort()

    def drop(self) -> None:
        """Lose the connection with no close handshake, as a caller losing signal
        would: with ``auto_resume`` the client reconnects and resumes the call."""
        self._lost = self._ws
        self._ws.transport.abort()

    async def close(self) -> None:
        self._closing = True
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
        runs = list(self._tool_runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await self._ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def _open(url: str, api_key: str | None, open_timeout: float, max_size: int | None,
                resume_token: str | None = None) -> tuple[ClientConnection, ServerMessage]:
    """A connection to ``/ws`` and its first message (``session.created``, or the
    error of a refused resume)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    offered = [SUBPROTOCOL] + ([f"resume.{resume_token}"] if resume_token else [])
    connection = await websockets.connect(
        url,
        additional_headers=headers,
        subprotocols=offered,  # type: ignore[arg-type]
        open_timeout=open_timeout,
        max_size=max_size,
        compression=None,  # PCM barely compresses; deflate only costs CPU
    )
    try:
        first = decode_server_frame(await asyncio.wait_for(connection.recv(decode=False),
                                                           open_timeout))
    except BaseException:
        await connection.close()
        raise
    return connection, first


def is_final(message: ServerMessage) -> bool:
    return isinstance(message, ResponseDone)
