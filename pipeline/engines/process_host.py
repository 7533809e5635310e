"""An engine in a process of its own, and the host that talks to it.

Chatterbox's worker thread and batched Whisper's decode thread hold the GIL for
every Python step of their models (a T3 step is a few hundred small kernel launches
and as many Python calls): in the server's process they take turns with the event
loop that moves every caller's audio. In a process of their own they take none of
its time, and CTranslate2 and torch no longer share a process either
(docs/decisions.md, "Speech engines in processes of their own").

`EngineProcess` starts a child (``spawn``: nothing of the parent's CUDA state or
threads is inherited), builds the engine there from an `EngineSpec` (an importable
factory and its keyword arguments, so nothing unpicklable crosses), warms it up if
it has a ``warm_up`` and reports ready. Requests then cross one duplex pipe:

- ``call``: an awaited method (``transcribe``, ``add_voice``), one result back;
- ``stream``: an async-generator method (``synthesize``, ``transcribe_segments``),
  each item sent as soon as the engine yields it;
- ``cancel``: the parent closed its stream or its task was cancelled (a barge-in):
  the child cancels that request's task, so the engine stops as it would in
  process (a cancelled Chatterbox utterance leaves the batch at the next step).

Each side has a reader thread; the parent's event loop only puts messages on a
queue that a sender thread writes, so a long upload never blocks the loop on the
pipe. An error in the child crosses as its class name, message and ``transient``
flag and is raised again as the same `pipeline.errors` class. If the child dies
(CUDA out of memory, a crash in native code), every request in flight fails with a
transient error of the engine's kind (the conversation retries those while nothing
of the reply was heard) and the host starts a new child at once; requests made while
it loads fail the same way, fast, instead of waiting minutes for the models.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib
import inspect
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from pipeline import errors
from pipeline.errors import EngineError, ModelLoadError, VoiceForgeError

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
Message = tuple[Any, ...]

STOP_TIMEOUT_S = 10.0
"""How long a child has to stop after being asked before it is killed."""
RESTART_DELAY_S = (1.0, 5.0, 30.0)
"""Waits before successive restarts of a child that keeps dying (then the last)."""


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How the child builds its engine: ``factory`` is ``"package.module:function"``
    (or a class), called with ``kwargs`` and, if it takes one, ``progress``."""

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = "engine"
    """Names the process in progress lines, errors and ``ps`` (voiceforge-<label>)."""

    def build(self, progress: Progress) -> Any:
        module, _, name = self.factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        kwargs = dict(self.kwargs)
        with contextlib.suppress(TypeError, ValueError):
            if "progress" in inspect.signature(factory).parameters:
                kwargs["progress"] = progress
        return factory(**kwargs)


def describe(engine: Any) -> dict[str, Any]:
    """What the parent's stand-in needs to answer without asking the child."""
    info: dict[str, Any] = {"name": getattr(engine, "name", type(engine).__name__)}
    for attribute in ("sample_rate", "default_voice", "multilingual"):
        if hasattr(engine, attribute):
            info[attribute] = getattr(engine, attribute)
    voices = getattr(engine, "voices", None)
    if callable(voices):
        info["voices"] = list(voices())
    info["methods"] = sorted(
        name
        for name in ("add_voice", "remove_voice", "transcribe_segments")
        if callable(getattr(engine, name, None))
    )
    return info


# --- the child ---------------------------------------------------------------------


def _child_main(conn: Connection, spec: EngineSpec) -> None:
    """The child process: build, warm up, report ready, then serve until told to stop
    or the parent goes (the pipe closes)."""
    # The parent decides when we stop (a terminal's Ctrl-C reaches the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned child starts with no logging set up: its lines go to the parent's
    # stderr, named after the process.
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s voiceforge-{spec.label} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("voiceforge").setLevel(logging.INFO)
    send_lock = threading.Lock()

    def send(message: Message) -> None:
        with send_lock:
            conn.send(message)

    def progress(line: str) -> None:
        send(("progress", line))

    try:
        engine = spec.build(progress)
        warm_up = getattr(engine, "warm_up", None)
        warmed = None
        if callable(warm_up):
            warmed = warm_up()
            if inspect.isawaitable(warmed):
                warmed = asyncio.run(_awaited(warmed))
        send(("ready", describe(engine), warmed))
    except BaseException as exc:  # reported to the parent, then exit
        with contextlib.suppress(OSError):
            send(("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    try:
        asyncio.run(_serve(conn, engine, send))
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _serve(conn: Connection, engine: Any, send: Callable[[Message], None]) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Message] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                message: Message = conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "stop":
                return

    threading.Thread(target=read, name="voiceforge-host-read", daemon=True).start()
    tasks: dict[int, asyncio.Task[None]] = {}
    while True:
        message = await inbox.get()
        kind = message[0]
        if kind == "stop":
            break
        if kind == "cancel":
            if (task := tasks.get(message[1])) is not None:
                task.cancel()
            continue
        _, rid, method, args, kwargs = message
        run = _stream if kind == "stream" else _call
        task = asyncio.create_task(run(engine, send, rid, method, args, kwargs))
        tasks[rid] = task
        task.add_done_callback(functools.partial(_drop, tasks, rid))
    for task in list(tasks.values()):
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


def _drop(tasks: dict[int, asyncio.Task[None]], rid: int, _: asyncio.Task[None]) -> None:
    tasks.pop(rid, None)


async def _call(engine: Any, send: Callable[[Message], None], rid: int, method: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        result = await getattr(engine, method)(*args, **kwargs)
    except asyncio.CancelledError:
        return
    except Exception as exc:  # crosses to the parent
        send(_error(rid, exc))
        return
    send(("result", rid, result, describe(engine)))


async def _stream(engine: Any, send: Callable[[Message], None], rid: int, method: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        items = getattr(engine, method)(*args, **kwargs)
        try:
            async for item in items:
                send(("item", rid, item))
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
    except asyncio.CancelledError:
        return  # the parent has forgotten the request
    except Exception as exc:  # crosses to the parent
        send(_error(rid, exc))
        return
    send(("end", rid))


def _error(rid: int, exc: BaseException) -> Message:
    if isinstance(exc, VoiceForgeError):
        return ("error", rid, type(exc).__name__, str(exc), exc.transient)
    logger.error("engine raised", exc_info=exc)
    return ("error", rid, None, f"{type(exc).__name__}: {exc}", False)


# --- the parent --------------------------------------------------------------------


class _Request:
    """One request's inbox, on the event loop that made it."""

    __slots__ = ("inbox", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()

    def deliver(self, message: Message) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, message)


class EngineProcess:
    """One engine in one child process; `call` and `stream` reach its methods.

    ``error`` is the engine's kind (``TTSError``, ``STTError``): what a dead or
    restarting child makes every request raise, transient.
    """

    def __init__(self, spec: EngineSpec, *, error: type[EngineError],
                 progress: Progress = print, restart: bool = True) -> None:
        self.spec = spec
        self._error = error
        self._restart = restart
        self._context = multiprocessing.get_context("spawn")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Request] = {}
        self._outbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._closed = False
        self._ready = threading.Event()
        self.restarts = 0
        self.info: dict[str, Any] = {}
        self.warmed: Any = None
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._start(progress)
        atexit.register(self.close)

    # -- life cycle --

    @property
    def ready(self) -> bool:
        """A child is up and taking requests (False while one restarts)."""
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def _start(self, progress: Progress) -> None:
        """Start a child and wait until its engine is loaded and warm. Raises
        ModelLoadError when it fails or exits first."""
        label = self.spec.label
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, args=(child, self.spec), name=f"voiceforge-{label}"
        )
        process.start()
        child.close()
        while True:
            if not parent.poll(0.5):
                if not process.is_alive():
                    parent.close()
                    raise ModelLoadError(
                        f"the {label} process exited (code {process.exitcode}) while loading"
                    )
                continue
            try:
                message = parent.recv()
            except (EOFError, OSError):
                continue  # exited: the next poll says how
            if message[0] == "progress":
                progress(message[1])
            elif message[0] == "failed":
                process.join(STOP_TIMEOUT_S)
                parent.close()
                raise ModelLoadError(f"the {label} process could not load: {message[1]}")
            elif message[0] == "ready":
                _, self.info, self.warmed = message
                break
        self._process, self._conn = process, parent
        self._outbox = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(parent, process, self._outbox), daemon=True,
                         name=f"voiceforge-{label}-read").start()
        threading.Thread(target=self._write, args=(parent, self._outbox), daemon=True,
                         name=f"voiceforge-{label}-write").start()
        self._ready.set()

    def _read(self, conn: Connection, process: BaseProcess,
              outbox: queue.SimpleQueue[Message | None]) -> None:
        while True:
            try:
                message: Message = conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                final = message[0] in ("end", "error", "result")
                request = (self._pending.pop if final else self._pending.get)(message[1], None)
            if request is not None:
                request.deliver(message)
        self._ready.clear()
        outbox.put(None)  # this child's writer stops
        process.join(STOP_TIMEOUT_S)
        with self._lock:
            lost, self._pending = self._pending, {}
        reason = f"the {self.spec.label} process exited (code {process.exitcode})"
        for rid, request in lost.items():
            request.deliver(("error", rid, None, reason, True))
        if self._closed:
            return
        logger.error("%s; %s", reason, "starting another" if self._restart else "not restarted")
        if self._restart:
            self._restart_child()

    def _restart_child(self) -> None:
        for attempt in itertools.count():
            if self._closed:
                return
            time.sleep(RESTART_DELAY_S[min(attempt, len(RESTART_DELAY_S) - 1)])
            try:
                self._start(lambda line: logger.info("%s: %s", self.spec.label, line))
            except ModelLoadError:
                logger.exception("restarting the %s process failed", self.spec.label)
                continue
            self.restarts += 1
            if self._closed:  # closed while it loaded
                self._stop_child()
            return

    @staticmethod
    def _write(conn: Connection, outbox: queue.SimpleQueue[Message | None]) -> None:
        while (message := outbox.get()) is not None:
            try:
                conn.send(message)
            except (OSError, ValueError):
                return  # the reader sees the child go and fails what is pending

    def close(self) -> None:
        """Ask the child to stop; kill it if it has not within ``STOP_TIMEOUT_S``."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stop_child()

    def _stop_child(self) -> None:
        self._outbox.put(("stop",))
        self._outbox.put(None)
        process = self._process
        if process is not None:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(STOP_TIMEOUT_S)
        if self._conn is not None:
            self._conn.close()

    # -- requests --

    def _open(self, kind: str, method: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> tuple[int, _Request]:
        if self._closed or not self._ready.is_set():
            state = "closed" if self._closed else "restarting"
            raise self._error(f"the {self.spec.label} process is {state}", transient=True)
        rid, request = next(self._ids), _Request()
        with self._lock:
            self._pending[rid] = request
        self._outbox.put((kind, rid, method, args, kwargs))
        return rid, request

    def _forget(self, rid: int) -> None:
        with self._lock:
            if self._pending.pop(rid, None) is None:
                return  # answered already
        self._outbox.put(("cancel", rid))

    def _raise(self, message: Message) -> None:
        _, _, name, text, transient = message
        kind = getattr(errors, name, None) if name else None
        if not (isinstance(kind, type) and issubclass(kind, VoiceForgeError)):
            kind = self._error
        raise kind(text, transient=transient)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``await engine.method(*args, **kwargs)`` in the child."""
        rid, request = self._open("call", method, args, kwargs)
        try:
            message = await request.inbox.get()
        finally:
            self._forget(rid)
        if message[0] == "error":
            self._raise(message)
        self.info = message[3]
        return message[2]

    async def stream(self, method: str, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """``async for item in engine.method(*args, **kwargs)`` in the child; closing
        this generator (or cancelling its task) cancels it there."""
        rid, request = self._open("stream", method, args, kwargs)
        try:
            while True:
                message = await request.inbox.get()
                if message[0] == "item":
                    yield message[2]
                    continue
                if message[0] == "error":
                    self._raise(message)
                return
        finally:
            self._forget(rid)
