"""Abusive clients: each as costly to the server as its limits let it be without
being cut off, for measuring what one costs everybody else.

    python -m loadtest.abusers --url ws://HOST:PORT/ws

runs them in this process, driven over stdin one line at a time: ``start NAME[,NAME]``
starts those abusers (answered ``started`` once each has a call open), ``stop`` stops
them (answered ``stats {JSON}``: what each one sent and got back); end of input
ends it all. ``AbuserProcess`` is that process seen from a measuring one
(``loadtest.reliability.abuse_impact``, ``python -m loadtest.soak --abuse``): a
process of its own, so that its CPU time is not taken from the measured callers'
event loop (on one machine both still share the cores).

The abusers (``ABUSERS``), each reconnecting at once if the server ends its call:

* ``costly_control``: the largest legal ``session.update`` (every field, 8000
  four-byte characters of instructions, ~32 KB) at the frame rate limit, or at the
  highest rate the decoding budget takes without closing the call if that is lower
  (the frame's decoding cost is measured here first; the rate drops by a fifth each
  time the server says ``decode_budget_exceeded``);
* ``text_turns``: the largest legal ``conversation.text`` (4000 four-byte
  characters) at the same rate: each one a new turn superseding the last;
* ``text_frames``: WebSocket text frames of ``max_frame_bytes`` at the frame rate;
* ``error_frames``: frames each provoking an error reply, rotating over seven error
  codes (each code has its own per-second allowance of error replies), ~40 KB each
  (the control-frame limit; the ``frame_too_large`` one is ``max_frame_bytes``);
* ``audio_2x``: speech (espeak-ng, else noise bursts) in 20 ms frames at the audio
  rate limit: the 2 s burst, then twice real time; every utterance a turn;
* ``long_replies``: instructions of ``max_instructions_chars`` and the largest
  ``max_response_tokens``, then the longest question, again as soon as each reply
  is done;
* ``slow_reader``: asks for a reply twice a second and never reads a byte; the
  server closes such a call once a frame has waited ``slow_client_timeout_s`` for
  it (by design: it is the one abuser that may be cut off), and it reconnects; it
  also starts a new call after ``SLOW_READER_HOLD_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from agent.config import Settings
from agent.limits import FrameRateLimiter
from agent.protocol import MAX_CONTROL_FRAME_BYTES, MAX_TEXT_CHARS, SUBPROTOCOL, decode_client_frame
from loadtest.decode_cost import LARGEST_CONVERSATION_TEXT, LARGEST_SESSION_UPDATE, cpu_ms

DEFAULTS = Settings()
FRAME_RATE = FrameRateLimiter().rate
"""Frames a second the server takes from one client (agent.limits.FrameRateLimiter)."""
RATE_CUT = 0.8
"""Rate kept after each ``decode_budget_exceeded``: the abuser backs off, not out."""
CONNECT_TIMEOUT_S = 10.0
SLOW_READER_HOLD_S = 120.0
"""How long the slow reader keeps one call unless the server ends it first: long
enough for the kernel's socket buffers to fill and the server's own queue to
matter (a reply is short with the bench engines), short enough to come back."""


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


@dataclass
class AbuserStats:
    """What one abuser did over one ``start``…``stop``."""

    name: str
    target_per_s: float = 0.0
    """Frames a second it aims at (0: paced by replies, not by a rate)."""
    connections: int = 0
    refused: int = 0
    """Connection attempts the server did not take (HTTP status or reset)."""
    frames_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    replies_done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Error events received, by code."""
    closes: Counter[str] = field(default_factory=Counter)
    """Calls the server ended, by close code."""
    rate_cuts: int = 0
    tried: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at its first connection attempt, taken or not."""
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at each ``response.done`` (cleared by whoever waits for the next)."""
    started_at: float = field(default_factory=time.monotonic)
    stopped_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        seconds = (self.stopped_at or time.monotonic()) - self.started_at
        return {
            "target_frames_per_s": round(self.target_per_s, 1),
            "seconds": round(seconds, 2),
            "connections": self.connections,
            "refused_connections": self.refused,
            "frames_sent": self.frames_sent,
            "frames_per_s": round(self.frames_sent / seconds, 1) if seconds > 0 else None,
            "mb_sent_per_s": round(self.bytes_sent / seconds / 1e6, 3) if seconds > 0 else None,
            "messages_received": self.messages_received,
            "mb_received_per_s": round(self.bytes_received / seconds / 1e6, 3)
            if seconds > 0 else None,
            "replies_done": self.replies_done,
            "errors_received": dict(sorted(self.errors.items())),
            "closed_by_server": dict(sorted(self.closes.items())),
            "rate_cuts": self.rate_cuts,
        }


Abuser = Callable[[str, asyncio.Event, AbuserStats, str | None], Coroutine[Any, Any, None]]


async def _open(url: str, api_key: str | None, stats: AbuserStats) -> ClientConnection | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        ws = await connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)],
                           additional_headers=headers, max_size=None, compression=None,
                           open_timeout=CONNECT_TIMEOUT_S)
    except (OSError, InvalidHandshake, TimeoutError):
        stats.refused += 1
        stats.tried.set()
        await asyncio.sleep(0.5)  # a refusing server is not hammered with handshakes
        return None
    stats.connections += 1
    stats.tried.set()
    return ws


async def _read(ws: ClientConnection, stats: AbuserStats, *, play: bool) -> None:
    """Read everything (a client that keeps up); ``play``: report reply audio as
    played at once, as a client with no playback buffer would."""
    played: dict[str, float] = {}
    try:
        async for frame in ws:
            data = frame if isinstance(frame, bytes) else frame.encode()
            stats.messages_received += 1
            stats.bytes_received += len(data)
            message = msgpack.unpackb(data)
            kind = message.get("type")
            if kind == "error":
                stats.errors[str(message.get("code"))] += 1
            elif kind == "response.done":
                stats.replies_done += 1
                stats.replied.set()
            elif kind == "response.audio.delta" and play:
                rid = message["response_id"]
                played[rid] = played.get(rid, 0.0) + float(message["duration_ms"])
                await ws.send(_pack({"type": "output_audio.played", "response_id": rid,
                                     "played_ms": played[rid]}))
                stats.frames_sent += 1
    except ConnectionClosed:
        pass
    protocol = ws.protocol
    if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent:
        stats.closes[str(protocol.close_rcvd.code)] += 1  # the server ended the call
    elif protocol.close_rcvd is None and protocol.close_sent is None:
        stats.closes["dropped"] += 1  # no close frame either way: the connection was cut


class _Pacer:
    """How many frames are due at ``rate`` a second since it started (or was slowed)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.sent = 0

    async def due(self) -> int:
        elapsed = time.monotonic() - self.started
        due = int(elapsed * self.rate) - self.sent
        if due <= 0:
            await asyncio.sleep(max(0.001, (self.sent + 1) / self.rate - elapsed))
            return 0
        return due

    def slow(self, factor: float) -> None:
        self.rate *= factor
        self.started, self.sent = time.monotonic(), 0


async def _stream_frames(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None,
    frames: Sequence[bytes | str], rate: float,
) -> None:
    """Send ``frames`` in turn at ``rate`` a second, one call after another."""
    stats.target_per_s = rate
    index = 0
    while not stop.is_set():
        ws = await _open(url, api_key, stats)
        if ws is None:
            continue
        reader = asyncio.create_task(_read(ws, stats, play=False))
        pacer = _Pacer(stats.target_per_s)
        cuts_seen = stats.errors["decode_budget_exceeded"]
        try:
            while not stop.is_set() and not reader.done():
                for _ in range(await pacer.due()):
                    frame = frames[index % len(frames)]
                    index += 1
                    await ws.send(frame)
                    pacer.sent += 1
                    stats.frames_sent += 1
                    stats.bytes_sent += len(frame)
                if stats.errors["decode_budget_exceeded"] > cuts_seen:
                    cuts_seen = stats.errors["decode_budget_exceeded"]
                    pacer.slow(RATE_CUT)
                    stats.target_per_s = pacer.rate
                    stats.rate_cuts += 1
        except ConnectionClosed:
            pass
        finally:
            await _close(ws, reader)


async def _close(ws: ClientConnection, reader: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader, 5.0)
    if not reader.done():
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def decode_rate(frame: bytes) -> float:
    """The highest frame rate (at most the frame rate limit) at which ``frame``'s
    decoding cost stays within a fifth under the server's decoding budget."""
    cost_ms = max(cpu_ms(decode_client_frame, frame, 5), 1e-3)
    return min(FRAME_RATE, RATE_CUT * DEFAULTS.decode_budget_ms_per_s / cost_ms)


async def costly_control(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    frame = _pack(LARGEST_SESSION_UPDATE)
    await _stream_frames(url, stop, stats, api_key, [frame], decode_rate(frame))


async def text_turns(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    frame = _pack(LARGEST_CONVERSATION_TEXT)
    await _stream_frames(url, stop, stats, api_key, [frame], decode_rate(frame))


async def text_frames(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    await _stream_frames(url, stop, stats, api_key, ["a" * DEFAULTS.max_frame_bytes], FRAME_RATE)


def error_provoking_frames() -> dict[str, bytes]:
    """One frame per error code it provokes, each as large as that code allows."""
    fill = MAX_CONTROL_FRAME_BYTES - 64
    return {
        "malformed_frame": _pack({"x": "a" * fill}),  # no 'type'
        "unknown_type": _pack({"type": "a" * fill}),
        "invalid_message": _pack({"type": "output_audio.played", "response_id": "a" * fill,
                                  "played_ms": -1.0}),
        "invalid_session": _pack({"type": "session.update",
                                  "session": {"instructions": "a" * fill, "temperature": "hot"}}),
        "unsupported_sample_rate": _pack({"type": "session.update",
                                          "session": {"input_sample_rate": 12345}}),
        "invalid_audio": _pack({"type": "input_audio.append", "audio": bytes(fill | 1)}),
        "frame_too_large": _pack({"type": "conversation.text",
                                  "text": "a" * (DEFAULTS.max_frame_bytes - 64)}),
    }


async def error_frames(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    frames = list(error_provoking_frames().values())
    rate = min(decode_rate(frame) for frame in frames)
    await _stream_frames(url, stop, stats, api_key, frames, rate)


def _utterances() -> np.ndarray:
    """A few seconds of speech with pauses long enough to end each turn (16 kHz)."""
    pause = np.zeros(int(0.9 * 16000), dtype=np.float32)
    try:
        from loadtest.speech import speak

        spoken = [speak(text) for text in ("Tell me about the weather tomorrow.",
                                           "What is the capital of France?")]
    except (RuntimeError, OSError):
        rng = np.random.default_rng(0)
        spoken = [rng.normal(0.0, 0.2, 16000).astype(np.float32)]
    return np.concatenate([part for s in spoken for part in (s, pause)])


async def audio_2x(url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None) -> None:
    audio = await asyncio.to_thread(_utterances)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    frame_bytes, frame_ms = 640, 20.0
    factor, burst_ms = DEFAULTS.max_audio_realtime_factor, DEFAULTS.audio_burst_ms
    stats.target_per_s = factor * 1000.0 / frame_ms
    offset = 0
    while not stop.is_set():
        ws = await _open(url, api_key, stats)
        if ws is None:
            continue
        reader = asyncio.create_task(_read(ws, stats, play=True))
        started, sent_ms = time.monotonic(), 0.0
        try:
            await ws.send(_pack({"type": "session.update",
                                 "session": {"input_sample_rate": 16000}}))
            stats.frames_sent += 1
            while not stop.is_set() and not reader.done():
                # The bucket: burst_ms at once, then factor x real time; a margin of
                # a frame and 2 % so the abuser stays just inside it.
                allowed = burst_ms - frame_ms + 0.98 * factor * (time.monotonic() - started) * 1e3
                if sent_ms + frame_ms > allowed:
                    await asyncio.sleep(frame_ms / factor / 1000.0)
                    continue
                frame = pcm[offset : offset + frame_bytes]
                offset = (offset + frame_bytes) % (len(pcm) - frame_bytes)
                await ws.send(_pack({"type": "input_audio.append", "audio": frame}))
                sent_ms += frame_ms
                stats.frames_sent += 1
                stats.bytes_sent += frame_bytes
        except ConnectionClosed:
            pass
        finally:
            await _close(ws, reader)


LONG_QUESTION = ("Tell me the longest story you know, with every detail. " * 80)[:MAX_TEXT_CHARS]


async def long_replies(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    instructions = ("You always answer at great length, in many sentences. " * 200)[
        : DEFAULTS.max_instructions_chars]
    while not stop.is_set():
        ws = await _open(url, api_key, stats)
        if ws is None:
            continue
        reader = asyncio.create_task(_read(ws, stats, play=True))
        try:
            await ws.send(_pack({"type": "session.update", "session": {
                "instructions": instructions, "max_response_tokens": 2048}}))
            stats.frames_sent += 1
            while not stop.is_set() and not reader.done():
                stats.replied.clear()
                await ws.send(_pack({"type": "conversation.text", "text": LONG_QUESTION}))
                stats.frames_sent += 1
                stats.bytes_sent += len(LONG_QUESTION)
                await _first_of(stats.replied, stop, reader)
        except ConnectionClosed:
            pass
        finally:
            await _close(ws, reader)


async def _first_of(reply: asyncio.Event, stop: asyncio.Event, reader: asyncio.Task[None]) -> None:
    """Wait for the reply, the stop, or the end of the call, whichever comes first."""
    waits = [asyncio.create_task(reply.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait([*waits, reader], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


class _Deaf:
    """A WebSocket client on a blocking socket with a small receive buffer that never
    reads after the handshake (websockets' sans-I/O protocol for the framing)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.protocol = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol(SUBPROTOCOL)])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        host, port = url.removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
        self.sock.connect((host, int(port)))
        request = self.protocol.connect()
        if api_key:
            request.headers["Authorization"] = f"Bearer {api_key}"
        self.protocol.send_request(request)
        self._flush()
        answered = False
        while not answered:  # the answer to the handshake, then never another read
            data = self.sock.recv(4096)
            if not data:
                break
            self.protocol.receive_data(data)
            answered = bool(self.protocol.events_received())
        if not answered or self.protocol.handshake_exc is not None:
            self.sock.close()
            raise ConnectionError(f"handshake refused: {self.protocol.handshake_exc}")

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, message: dict[str, Any]) -> int:
        frame = _pack(message)
        self.protocol.send_binary(frame)
        self._flush()
        return len(frame)

    def close(self) -> None:
        self.sock.close()


async def slow_reader(
    url: str, stop: asyncio.Event, stats: AbuserStats, api_key: str | None
) -> None:
    hold_s = SLOW_READER_HOLD_S
    ask = {"type": "conversation.text", "text": "Tell me a long story, please."}
    while not stop.is_set():
        try:
            deaf = await asyncio.to_thread(_Deaf, url, api_key)
        except (OSError, ConnectionError):
            stats.refused += 1
            stats.tried.set()
            await asyncio.sleep(0.5)
            continue
        stats.connections += 1
        stats.tried.set()
        opened = time.monotonic()
        try:
            while not stop.is_set() and time.monotonic() - opened < hold_s:
                stats.bytes_sent += await asyncio.to_thread(deaf.send, ask)
                stats.frames_sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        except OSError:
            stats.closes["reset"] += 1  # the server gave up on it
        finally:
            deaf.close()


ABUSERS: dict[str, Abuser] = {
    "costly_control": costly_control,
    "text_turns": text_turns,
    "text_frames": text_frames,
    "error_frames": error_frames,
    "audio_2x": audio_2x,
    "long_replies": long_replies,
    "slow_reader": slow_reader,
}
EXPECTED_CLOSES: dict[str, set[str]] = {"slow_reader": {"reset"}}
"""Server closes an abuser may meet by design; any other is a cut-off."""
UNREAD_ERRORS: dict[str, set[str]] = {"slow_reader": {"client_too_slow"}}
"""Error codes the server counts for an abuser that never reads them."""


# --------------------------------------------------------------------------- the process


class _Running:
    def __init__(self, url: str, api_key: str | None, names: Sequence[str]) -> None:
        self.stop = asyncio.Event()
        self.cpu_started = time.process_time()
        self.stats = {name: AbuserStats(name) for name in names}
        self.tasks = [asyncio.create_task(ABUSERS[name](url, self.stop, self.stats[name],
                                                        api_key), name=f"abuser {name}")
                      for name in names]

    async def connected(self, timeout_s: float) -> None:
        """Until every abuser has tried its first call (bounded)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.tried.wait() for s in self.stats.values())), timeout_s)

    async def finish(self) -> dict[str, Any]:
        self.stop.set()
        _, late = await asyncio.wait(self.tasks, timeout=20.0)
        for task in late:
            task.cancel()
        outcomes = await asyncio.gather(*self.tasks, return_exceptions=True)
        now = time.monotonic()
        report: dict[str, Any] = {}
        for (name, stats), outcome in zip(self.stats.items(), outcomes, strict=True):
            stats.stopped_at = now
            report[name] = stats.to_json()
            # The abusers' own CPU (all of this process's), on the cores the server shares
            # when both run on one machine.
            report[name]["process_cpu_per_s"] = round(
                (time.process_time() - self.cpu_started) / max(now - stats.started_at, 1e-3), 3)
            if isinstance(outcome, BaseException):
                report[name]["crashed"] = f"{type(outcome).__name__}: {outcome}"
        return report


async def _serve(url: str, api_key: str | None) -> None:
    running: _Running | None = None
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command, _, argument = line.strip().partition(" ")
        if command == "start" and running is None:
            names = [n for n in argument.split(",") if n]
            unknown = set(names) - set(ABUSERS)
            if unknown or not names:
                print(f"error unknown abusers {sorted(unknown)}", flush=True)
                continue
            running = _Running(url, api_key, names)
            await running.connected(15.0)
            print("started", flush=True)
        elif command == "stop" and running is not None:
            print("stats " + json.dumps(await running.finish()), flush=True)
            running = None
        elif not line:
            if running is not None:
                await running.finish()
            return
        else:
            print(f"error unexpected {line.strip()!r}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.abusers",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    asyncio.run(_serve(args.url, args.api_key))
    return 0


class AbuserProcess:
    """``python -m loadtest.abusers`` in a child process: ``start``, then ``stop``
    (what each abuser did), as often as needed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr: list[str] = []
        self._stderr_task = asyncio.create_task(self._collect_stderr())

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, url: str, api_key: str | None = None, *, nice: int = 0
    ) -> AsyncIterator[AbuserProcess]:
        """``nice``: on one machine with the server, a niced abuser takes the cores only
        when they are idle, as a remote one would not take them at all."""
        command = [sys.executable, "-m", "loadtest.abusers", "--url", url, "--nice", str(nice)]
        if api_key:
            command += ["--api-key", api_key]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        abusers = cls(process)
        try:
            yield abusers
        finally:
            await abusers._end()

    async def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def _command(self, line: str, answer: str, timeout_s: float) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()
        reply = (await asyncio.wait_for(self.process.stdout.readline(), timeout_s)).decode()
        if not reply.startswith(answer):
            tail = "\n".join(self.stderr[-10:])
            raise RuntimeError(f"abusers answered {reply.strip()!r} to {line!r}\n{tail}")
        return reply[len(answer):].strip()

    async def start(self, names: Sequence[str]) -> None:
        await self._command("start " + ",".join(names), "started", 60.0)

    async def stop(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(await self._command("stop", "stats ", 60.0))
        return stats

    async def _end(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30.0)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(self._stderr_task, return_exceptions=True)

    def tracebacks(self) -> list[str]:
        return ["\n".join(self.stderr[i : i + 12]) for i, line in enumerate(self.stderr)
                if "Traceback" in line]


if __name__ == "__main__":
    raise SystemExit(main())
