"""``voiceforge serve --workers N``: N server processes sharing one port.

One server's event loop saturates one core (docs/benchmarks.md), so a host with more
cores runs more processes. Each worker is a whole ``voiceforge serve``: its own
engines, admission, ``/readyz``, sweeper and drain (agent/lifecycle.py); nothing is
shared between them but the port and the metrics files (agent/metrics.py).

The port is shared with ``SO_REUSEPORT`` (Linux): each worker binds and listens on a
socket of its own and the kernel spreads new connections over the listening ones by
a hash of the connection, so a worker that stops listening (draining, restarting)
gets none and the others take them. The supervisor holds the port with a socket that
is bound but never listens (it receives nothing): ``--port 0`` is resolved once, the
address printed is the one every worker uses, and a restarted worker binds it again.

SIGTERM or SIGINT to the supervisor sends SIGTERM to every worker; each drains as a
single server does and the supervisor exits once all have (0 when all exited
cleanly). A worker that dies on its own is restarted, up to ``MAX_RESTARTS`` within
``RESTART_WINDOW_S``; beyond that the supervisor stops them all and fails, which is
the orchestrator's cue that restarting will not fix it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from agent.config import Settings
from agent.metrics import MULTIPROCESS_DIR_ENV, WORKER_ENV
from pipeline.errors import VoiceForgeError

logger = logging.getLogger("voiceforge.workers")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_MARGIN_S = 15.0
"""Beyond the drain timeout, what a worker may take to stop: the cancelled replies'
last words (2 s), the close handshakes (2 s), uvicorn's own graceful stop (5 s)."""
POLL_S = 0.5
"""How often the supervisor looks up from waiting (to act on a signal)."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(profile: str) -> int:
    """The bench profile's engines are nearly free, so its limit is the event loop:
    one worker per usable core. The model profiles load their models once per worker
    and their inference already uses every core (or the GPU's memory), so one;
    docs/deploy-k8s.md says when to raise it."""
    return usable_cores() if profile == "bench" else 1


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: Connection
    """Reads the worker's one message: it listens and its engines are loaded."""
    is_ready: bool = False


def _worker_main(settings: Settings, port: int, index: int, log_format: str,
                 ready: Connection) -> None:
    """A worker process: as ``voiceforge serve`` on the shared port."""
    # Until uvicorn installs its handlers, a terminal's Ctrl-C is the supervisor's to
    # handle: it answers with SIGTERM, which stops a worker that is still loading.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[WORKER_ENV] = str(index)  # before any metric exists: its label
    from agent.profiles import build_engines
    from agent.server import create_app
    from agent.serving import (
        VoiceForgeServer,
        configure_logging,
        listening_socket,
        server_config,
        server_secrets,
    )

    configure_logging(log_format, server_secrets(settings), logging.INFO)

    def progress(line: str) -> None:
        print(f"[voiceforge] worker {index}: {line}", flush=True)

    try:
        engines = build_engines(settings, progress)
        sock = listening_socket(settings.host, port, reuse_port=True)
    except (VoiceForgeError, OSError) as exc:
        print(f"voiceforge worker {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    app = create_app(settings, engines, own_engines=True)

    def started() -> None:
        ready.send(index)
        ready.close()

    VoiceForgeServer(server_config(app, settings), app, on_started=started).run(sockets=[sock])


class Supervisor:
    """Starts the workers, restarts one that dies, and stops them all on a signal."""

    def __init__(self, settings: Settings, workers: int, log_format: str) -> None:
        if workers < 2:
            raise ValueError(f"a supervisor runs at least 2 workers, got {workers}")
        self.settings = settings
        self.count = workers
        self.log_format = log_format
        self.phase = Phase.STARTING
        self.port = 0
        self.workers: dict[int, _Worker] = {}
        self._restarts: deque[float] = deque()
        self._context = multiprocessing.get_context("spawn")
        self._metrics_dir = ""
        self.failed = False
        """A worker never got ready, restarted too often, or did not stop cleanly."""

    def run(self) -> int:
        if not sys.platform.startswith("linux"):
            raise VoiceForgeError(
                "--workers above 1 needs Linux (SO_REUSEPORT spreads the calls over the "
                "workers); elsewhere run one server per core behind a load balancer"
            )
        hold = _hold_port(self.settings.host, self.settings.port)
        self.port = hold.getsockname()[1]
        self._metrics_dir = tempfile.mkdtemp(prefix="voiceforge-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = self._metrics_dir  # the workers inherit it
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._supervise()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            hold.close()
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.phase is not Phase.STOPPING:
            logger.info("%s: stopping %d workers (each drains its calls)",
                        signal.Signals(signum).name, len(self.workers))
            self.phase = Phase.STOPPING
            self._signal_all()

    def _supervise(self) -> None:
        print(f"[voiceforge] profile {self.settings.profile}: starting {self.count} workers "
              f"on port {self.port}", flush=True)
        for index in range(self.count):
            self._start(index)
        while self.phase is not Phase.STOPPING:
            self._watch()
            if self.phase is Phase.STARTING and all(w.is_ready for w in self.workers.values()):
                self.phase = Phase.SERVING
                from agent.serving import show_ready

                show_ready(lambda line: print(f"[voiceforge] {line}", flush=True),
                           self.settings.host, self.port)

    def _start(self, index: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, name=f"voiceforge-worker-{index}",
            args=(self.settings, self.port, index, self.log_format, writer),
        )
        process.start()
        writer.close()  # the worker holds the other copy; EOF here when it is gone
        self.workers[index] = _Worker(index, process, reader)

    def _watch(self) -> None:
        """Wait up to ``POLL_S`` for a worker to get ready or to end, and act on it."""
        waiting = [w.ready for w in self.workers.values() if not w.is_ready]
        sentinels = {w.process.sentinel: w for w in self.workers.values()}
        for ready in wait([*waiting, *sentinels], timeout=POLL_S):
            if isinstance(ready, int):
                self._ended(sentinels[ready])
                continue
            worker = next(w for w in self.workers.values() if w.ready is ready)
            with contextlib.suppress(EOFError, OSError):
                worker.ready.recv()
                worker.is_ready = True
                if self.phase is Phase.SERVING:
                    logger.info("worker %d is serving again", worker.index)

    def _ended(self, worker: _Worker) -> None:
        worker.process.join()
        worker.ready.close()
        _forget(worker.process.pid, self._metrics_dir)
        if self.phase is Phase.STOPPING:
            return
        logger.error("worker %d (pid %s) exited with %s", worker.index, worker.process.pid,
                     worker.process.exitcode)
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW_S:
            self._restarts.popleft()
        if self.phase is Phase.STARTING or len(self._restarts) >= MAX_RESTARTS:
            logger.error("not restarting it: %s", "it never got ready" if self.phase is
                         Phase.STARTING else f"{MAX_RESTARTS} restarts within "
                         f"{RESTART_WINDOW_S:.0f} s")
            self.failed = True
            self.phase = Phase.STOPPING
            self._signal_all()
            return
        self._restarts.append(now)
        self._start(worker.index)

    def _signal_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        """SIGTERM every worker (again: one started after the signal), wait for their
        drains, kill what outlives them."""
        self.phase = Phase.STOPPING
        self._signal_all()
        deadline = time.monotonic() + self.settings.drain_timeout_s + STOP_MARGIN_S
        for worker in self.workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                logger.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.join(5)
                self.failed = True
            elif worker.process.exitcode not in (0, -signal.SIGTERM):
                # (uvicorn re-raises the SIGTERM once drained: that is a clean stop)
                self.failed = True
            worker.ready.close()
            _forget(worker.process.pid, self._metrics_dir)
        logger.info("all workers stopped")


def _hold_port(host: str, port: int) -> socket.socket:
    """A socket on ``host:port`` (port 0: a free one) that holds it for the workers
    but never listens, so it never takes a connection."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _forget(pid: int | None, metrics_dir: str) -> None:
    """A gone worker's live gauges (its open calls) leave the sum."""
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
