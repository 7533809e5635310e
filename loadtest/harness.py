"""Building blocks of the reliability measurement (``loadtest.reliability``).

* Servers on 127.0.0.1 and a free port: ``serving`` runs ``create_app`` under
  ``VoiceForgeServer`` in a thread of its own (the figures that need the server's
  internals), ``ChildServer`` in a child process (the figures that need the
  server's own CPU time and memory, or a signal): ``voiceforge serve``, or
  ``python -m loadtest.harness SPEC`` for scripted engines a spec describes.
* Engines: the fast deterministic ``bench`` ones with the real Silero VAD, and
  ``Probe*`` variants that count attempts and say what is running.
* Callers: ``RawCall`` (any msgpack frame over ``websockets``, every message
  logged with its arrival time) and ``StubbornClient`` (a caller that reads only
  when told to, so the server's writes block as with a client that hangs).
* ``scrape`` reads ``/metrics``; ``LogWatch`` keeps the log records that carry a
  traceback while a scenario runs.

Nothing here imports from tests/; the tests may import from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import msgpack
import numpy as np
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from agent.config import Settings
from agent.protocol import SUBPROTOCOL
from agent.server import AppState, create_app
from agent.serving import VoiceForgeServer, transport_limits
from pipeline.conversation import Engines
from pipeline.engines.base import ChatMessage, FloatAudio, LLMEngine, Transcript
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.vad import BatchedVADWorker, SileroVAD

Message = dict[str, Any]


# --------------------------------------------------------------------------- engines


def bench_engines(
    *, stt: ScriptedSTT | None = None, llm: LLMEngine | None = None, tts: ToneTTS | None = None
) -> Engines:
    """Scripted engines (or the ones given) and a fresh Silero VAD worker: each
    server's lifespan starts and stops its own."""
    return Engines(
        stt=stt if stt is not None else ScriptedSTT(),
        llm=llm if llm is not None else ScriptedLLM(tokens_per_second=200.0, first_token_ms=10.0),
        tts=tts if tts is not None else ToneTTS(ms_per_char=20.0),
        vad=BatchedVADWorker(SileroVAD()),
    )


class ProbeSTT(ScriptedSTT):
    """ScriptedSTT that counts attempts (failed ones too) and says when one runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.attempts = 0

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        self.active += 1
        self.attempts += 1
        try:
            return await super().transcribe(audio)
        finally:
            self.active -= 1


class ProbeLLM(ScriptedLLM):
    """ScriptedLLM that counts attempts and says when a stream is open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.attempts = 0

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.active += 1
        self.attempts += 1
        inner = super().stream(messages, max_tokens=max_tokens, temperature=temperature)
        try:
            async for delta in inner:
                yield delta
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            self.active -= 1


class ProbeTTS(ToneTTS):
    """ToneTTS that counts calls and says when a synthesis runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.calls = 0

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        self.active += 1
        self.calls += 1
        inner = super().synthesize(text, voice=voice)
        try:
            async for audio in inner:
                yield audio
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            self.active -= 1


# --------------------------------------------------------------------------- servers


@dataclass
class LocalServer:
    """A server running in a thread of this process."""

    url: str
    http: str
    app: Starlette
    settings: Settings

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.voiceforge
        return state


def start_in_thread(
    app: Starlette, settings: Settings
) -> tuple[VoiceForgeServer, threading.Thread, Any]:
    """Serve ``app`` on 127.0.0.1 and a free port in a thread and loop of its own;
    returns once it listens (stop it with ``stop_in_thread``)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        log_config=None,  # records go to the root logger (LogWatch sees them)
        **transport_limits(settings),
        ws_per_message_deflate=False,
        lifespan="on",
    )
    server = VoiceForgeServer(config, app)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(),), daemon=True,
        name="voiceforge-server",
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.02)
    return server, thread, loop


def stop_in_thread(server: VoiceForgeServer, thread: threading.Thread, loop: Any) -> None:
    """Drain and stop a server from ``start_in_thread`` (bounded: 30 s)."""
    server.should_exit = True
    thread.join(timeout=30)
    if thread.is_alive():
        raise RuntimeError("the server did not stop within 30 s")
    loop.close()


@contextlib.asynccontextmanager
async def serving_app(app: Starlette, settings: Settings) -> AsyncIterator[LocalServer]:
    """Serve ``app`` in a thread until the block ends (started and stopped off
    this loop, so the callers' close handshakes are answered meanwhile)."""
    server, thread, loop = await asyncio.to_thread(start_in_thread, app, settings)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LocalServer(
            url=f"ws://127.0.0.1:{port}/ws", http=f"http://127.0.0.1:{port}", app=app,
            settings=settings,
        )
    finally:
        await asyncio.to_thread(stop_in_thread, server, thread, loop)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, engines: Engines, *, admission: bool = False
) -> AsyncIterator[LocalServer]:
    """``create_app(settings, engines)`` in a thread. The measuring process shares
    two cores with the server, so admission control is off unless asked for."""
    if not admission:
        settings = replace(settings, latency_budget_ms=0.0)
    async with serving_app(create_app(settings, engines), settings) as server:
        yield server


class ChildServer:
    """A server in a child process: its URL, its output so far, and the process."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # The server's settings are the ones given here, not whatever VOICEFORGE_*
            # variables the measuring shell happens to have.
            env={**{k: v for k, v in os.environ.items() if not k.startswith("VOICEFORGE_")},
                 **(env or {})},
        )
        self.lines: list[str] = []
        self.url = ""
        self._reader: threading.Thread | None = None

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").removesuffix("/ws")

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if match := re.search(r"ready: connect to (ws://\S+)", line):
                self.url = match.group(1)
                self._reader = threading.Thread(target=self._read, args=(stdout,), daemon=True)
                self._reader.start()
                return
        raise RuntimeError("the child server did not get ready:\n" + "".join(self.lines[-20:]))

    def _read(self, stdout: Any) -> None:
        with stdout:
            for line in stdout:
                self.lines.append(line)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float) -> int:
        rc = self.process.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return rc

    def output(self) -> str:
        return "".join(self.lines)

    def tracebacks(self) -> list[str]:
        """The child's log lines that carry a traceback (and the line after)."""
        found = []
        for index, line in enumerate(self.lines):
            if "Traceback" in line:
                found.append("".join(self.lines[max(0, index - 1) : index + 12]).strip())
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self._reader is not None:
            self._reader.join(timeout=10)
        elif self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.asynccontextmanager
async def child_server(
    command: Sequence[str], env: dict[str, str] | None = None
) -> AsyncIterator[ChildServer]:
    child = ChildServer(command, env)
    try:
        await asyncio.to_thread(child.wait_ready)
        yield child
    finally:
        await asyncio.to_thread(child.stop)


def voiceforge_serve(profile: str = "bench", workers: int = 1) -> list[str]:
    """``voiceforge serve --profile PROFILE --workers N`` on 127.0.0.1, a free port."""
    return [sys.executable, "-m", "agent.cli", "serve", "--profile", profile,
            "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]


def spec_serve(spec: dict[str, Any]) -> list[str]:
    """A child server with the scripted engines and settings ``spec`` describes:
    ``{"settings": {...Settings fields}, "llm": {...ScriptedLLM}, "tts": {...ToneTTS},
    "stt": {...ScriptedSTT}}``."""
    return [sys.executable, "-m", "loadtest.harness", json.dumps(spec)]


def _serve_spec(spec: dict[str, Any]) -> int:
    """The child side of ``spec_serve``: like ``voiceforge serve``, scripted engines."""
    from agent.serving import configure_logging

    settings = Settings(**spec.get("settings", {}))
    settings.validate()
    configure_logging("text", [settings.api_key], logging.INFO)
    engines = bench_engines(
        stt=ScriptedSTT(**spec.get("stt", {})),
        llm=ScriptedLLM(**spec.get("llm", {})),
        tts=ToneTTS(**spec.get("tts", {})),
    )
    app = create_app(settings, engines)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"ready: connect to ws://127.0.0.1:{sock.getsockname()[1]}/ws", flush=True)
    config = uvicorn.Config(
        app,
        **transport_limits(settings),
        ws_per_message_deflate=False,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    VoiceForgeServer(config, app).run(sockets=[sock])
    return 0


# --------------------------------------------------------------------------- metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient, base: str) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    response = await http.get(f"{base}/metrics")
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --------------------------------------------------------------------------- callers


def subprotocols(*extra: str) -> list[Subprotocol]:
    return [Subprotocol(name) for name in (SUBPROTOCOL, *extra)]


def pack(message: Message) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


class CallClosed(Exception):
    """The server closed the call: its close code (None: no close frame)."""

    def __init__(self, code: int | None, at: float) -> None:
        super().__init__(f"closed with {code}")
        self.code = code
        self.at = at


@dataclass
class RawCall:
    """A caller on a raw WebSocket: any frame, msgpack maps back, each logged with
    its arrival time (``time.monotonic()``)."""

    ws: ClientConnection
    created: Message
    opened_at: float
    log: list[tuple[float, Message]] = field(default_factory=list)
    report_played: bool = True
    """Report ``output_audio.played`` as soon as reply audio arrives (a client that
    plays at once), so a reply is done when its audio is in, not seconds later."""
    _played: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def open(
        cls, url: str, *, extra_subprotocols: Sequence[str] = (), timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> RawCall:
        ws = await connect(
            url, subprotocols=subprotocols(*extra_subprotocols), open_timeout=timeout_s,
            max_size=None, compression=None, **kwargs,
        )
        try:
            first = msgpack.unpackb(await asyncio.wait_for(ws.recv(decode=False), timeout_s))
        except BaseException:
            ws.transport.abort()
            raise
        if first.get("type") != "session.created":
            await ws.close()
            raise RuntimeError(f"expected session.created, got {first}")
        return cls(ws, first, time.monotonic())

    async def send(self, message: Message) -> None:
        await self.ws.send(pack(message))

    async def recv(self, timeout_s: float) -> Message:
        """The next message (logged); ``CallClosed`` when the server closed the call."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(decode=False), timeout_s)
        except ConnectionClosed as closed:
            raise CallClosed(
                closed.rcvd.code if closed.rcvd is not None else None, time.monotonic()
            ) from None
        message: Message = msgpack.unpackb(frame)
        self.log.append((time.monotonic(), message))
        if self.report_played and message.get("type") == "response.audio.delta":
            rid = message["response_id"]
            self._played[rid] = self._played.get(rid, 0.0) + float(message["duration_ms"])
            with contextlib.suppress(ConnectionClosed):
                await self.send({"type": "output_audio.played", "response_id": rid,
                                 "played_ms": self._played[rid]})
        return message

    async def wait_for(self, predicate: Callable[[Message], bool], timeout_s: float) -> Message:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await self.recv(left)
            except TimeoutError:
                break
            if predicate(message):
                return message
        seen = [m["type"] for _, m in self.log[-8:]]
        raise TimeoutError(f"no matching message within {timeout_s} s; last seen {seen}")

    async def wait_type(self, kind: str, timeout_s: float = 20.0) -> Message:
        return await self.wait_for(lambda m: m["type"] == kind, timeout_s)

    async def until_closed(self, timeout_s: float) -> CallClosed:
        """Read until the server closes the call (bounded)."""
        try:
            await self.wait_for(lambda m: False, timeout_s)
        except CallClosed as closed:
            return closed
        raise TimeoutError(f"not closed within {timeout_s} s")

    async def typed_turn(self, text: str, timeout_s: float = 30.0) -> Turn:
        """Send ``conversation.text``; every message up to its ``response.done``."""
        start = len(self.log)
        sent = time.monotonic()
        await self.send({"type": "conversation.text", "text": text})
        done = await self.wait_type("response.done", timeout_s)
        return Turn.of(self.log[start:], sent, done)

    def errors(self, after: int = 0) -> list[Message]:
        return [m for _, m in self.log[after:] if m["type"] == "error"]

    def abort(self) -> None:
        """Drop the TCP connection: no close frame, no goodbye."""
        self.ws.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


@dataclass
class Turn:
    """One reply as a caller saw it."""

    done: Message
    sent_at: float
    done_at: float
    first_audio_at: float | None
    errors: list[Message]
    messages: list[Message]

    @classmethod
    def of(cls, log: list[tuple[float, Message]], sent_at: float, done: Message) -> Turn:
        rid = done["response_id"]
        audio = [t for t, m in log if m["type"] == "response.audio.delta"
                 and m["response_id"] == rid]
        done_at = next(t for t, m in reversed(log) if m is done)
        return cls(done, sent_at, done_at, audio[0] if audio else None,
                   [m for _, m in log if m["type"] == "error"], [m for _, m in log])

    @property
    def client_first_audio_ms(self) -> float | None:
        """Sending the turn → its first audio, as the caller measures it."""
        return None if self.first_audio_at is None else (self.first_audio_at - self.sent_at) * 1e3

    @property
    def to_done_ms(self) -> float:
        return (self.done_at - self.sent_at) * 1e3

    def audio_frames(self) -> int:
        rid = self.done["response_id"]
        return sum(1 for m in self.messages
                   if m["type"] == "response.audio.delta" and m["response_id"] == rid)


class StubbornClient:
    """A WebSocket caller over a plain blocking socket with a small receive buffer,
    driven by websockets' sans-I/O protocol: it reads only when told to, so the
    server's writes block after kilobytes, as with a real client that hangs."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url), subprotocols=subprotocols())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.messages: list[Message] = []
        self.last_read_at = time.monotonic()
        self.eof = False
        while not self.messages:  # the handshake, then session.created
            if not self.read_some():
                raise ConnectionError("closed during the handshake")

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, message: Message) -> None:
        self.protocol.send_binary(pack(message))
        self._flush()

    def read_some(self, timeout_s: float = 10.0) -> bool:
        """Read what has arrived (blocking up to ``timeout_s``); False at EOF."""
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        self.last_read_at = time.monotonic()
        if not data:
            self.protocol.receive_eof()
            self.eof = True
            return False
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                self.messages.append(msgpack.unpackb(event.data))
        with contextlib.suppress(OSError):
            self._flush()
        return True

    def read_until(self, predicate: Callable[[Message], bool], timeout_s: float) -> Message:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if not self.read_some(min(1.0, max(0.01, deadline - time.monotonic()))):
                break
        kinds = [m["type"] for m in self.messages[-5:]]
        raise TimeoutError(f"not seen within {timeout_s} s; last messages {kinds}")

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- audio


class AudioSender:
    """Streams 16 kHz audio on one call as fast as the server's input rate limit
    allows (its defaults, with a margin: a 1 s burst, then 1.5x real time)."""

    FRAME = 320  # 20 ms

    def __init__(self, call: RawCall, *, burst_ms: float = 1000.0, factor: float = 1.5) -> None:
        self.call = call
        self.burst_ms = burst_ms
        self.factor = factor
        self.started: float | None = None
        self.sent_ms = 0.0
        self.last_sent_at = 0.0

    async def send(self, audio: FloatAudio, *, stop_after_ms: float | None = None) -> None:
        sent_here = 0.0
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        for start in range(0, len(audio), self.FRAME):
            if stop_after_ms is not None and sent_here >= stop_after_ms:
                return
            frame = pcm[start * 2 : (start + self.FRAME) * 2]
            frame_ms = len(frame) / 32.0
            if self.started is None:
                self.started = time.monotonic()
            allowed_at = self.started + max(
                0.0, (self.sent_ms + frame_ms - self.burst_ms) / self.factor / 1000.0
            )
            if (delay := allowed_at - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await self.call.send({"type": "input_audio.append", "audio": frame})
            self.last_sent_at = time.monotonic()
            self.sent_ms += frame_ms
            sent_here += frame_ms


def silence(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * sample_rate), dtype=np.float32)


# --------------------------------------------------------------------------- logs


class LogWatch(logging.Handler):
    """Log records at WARNING and above from any thread while installed; the ones
    with a traceback are what a scenario must not produce."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()}" + (f" [{r.exc_info[0].__name__}: {r.exc_info[1]}]"
                                             if r.exc_info and r.exc_info[0] else "")
            for r in self.records
            if r.exc_info or "Traceback" in r.getMessage()
        ]

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records]


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    """A ``LogWatch`` on the root logger (uvicorn's loggers propagate to it when
    the server runs with ``log_config=None``, as ``serving`` does)."""
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


if __name__ == "__main__":
    sys.exit(_serve_spec(json.loads(sys.argv[1])))
