"""Several agent replicas behind a real load balancer (HAProxy), on this machine.

    python -m loadtest.balancer --replicas 3               # serve until Ctrl-C
    python -m loadtest.balancer --replicas 3 --rolling 2   # restart each replica in
                                                           # turn under callers, twice
    python -m loadtest --url ws://127.0.0.1:PORT/ws        # load through the proxy

HAProxy (Debian's ``haproxy``) listens on 127.0.0.1 and a free port, spreads calls
over ``voiceforge serve --profile bench`` child processes (least open connections:
calls are long), checks each on ``/readyz`` every 250 ms, and keeps a call's
WebSocket open for as long as the call lasts. A replica that drains stops listening
and fails its check; a call HAProxy tried on it before noticing is redispatched to
another. Its configuration is written to a temporary folder and removed afterwards.

``rolling_restart`` is the proof the issue asks for: callers keep talking through
the proxy while each replica in turn gets SIGTERM and is started again; it counts
failed turns, calls dropped mid-reply, and calls that landed on a replica that was
not ready (tests/deploy/test_balancer.py; the longer run with figures is the
``--rolling`` command above).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from loadtest.harness import CallClosed, ChildServer, RawCall

REPLICA_HEADER = "X-VoiceForge-Replica"
"""Set by HAProxy on every response (the WebSocket handshake's too): which replica."""
CHECK_INTERVAL_MS = 250

_CONFIG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A call's WebSocket, once upgraded, lives as long as the call.
    timeout tunnel 1h
    # A call refused by a replica that stopped listening, or answered 503 by one
    # that had accepted it just before it began to drain, goes to another.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend voice
    bind 127.0.0.1:{port}
    default_backend agents

backend agents
    balance leastconn
    option httpchk
    # The agent answers loopback Host names only when it has no key (bench).
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter {interval}ms fall 1 rise 2
    http-response set-header {header} %[srv_name]
{servers}
"""


def haproxy_path() -> str | None:
    """Debian installs it to /usr/sbin, which a user's PATH may lack."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1, picked by the kernel)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica_command(port: int) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "serve", "--profile", "bench",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


class LocalCluster:
    """N bench replicas on fixed free ports behind one HAProxy."""

    def __init__(self, replicas: int, env: dict[str, str] | None = None) -> None:
        haproxy = haproxy_path()
        if haproxy is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.haproxy = haproxy
        self.env = env or {}
        self.ports = [free_port() for _ in range(replicas)]
        self.names = [f"r{index}" for index in range(replicas)]
        self.replicas: list[ChildServer | None] = [None] * replicas
        self.folder = Path(tempfile.mkdtemp(prefix="voiceforge-haproxy-"))
        self.stats = self.folder / "stats.sock"
        self.port = free_port()
        self.proxy: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_replica(self, index: int) -> None:
        replica = ChildServer(replica_command(self.ports[index]), self.env)
        self.replicas[index] = replica
        replica.wait_ready()

    def stop_replica(self, index: int, timeout_s: float = 60.0) -> tuple[int, float, int]:
        """SIGTERM (it drains): its exit status once it is gone, when it stopped
        listening (``time.monotonic()``), which it does within its loop's next tick,
        and how many replies were in flight when its drain began (its log says)."""
        replica = self.replicas[index]
        assert replica is not None
        replica.signal(signal.SIGTERM)
        stopped_listening = float("nan")
        for _ in range(1000):  # bounded: 10 s
            try:
                with socket.create_connection(("127.0.0.1", self.ports[index]), timeout=1):
                    pass
            except OSError:
                stopped_listening = time.monotonic()
                break
            time.sleep(0.01)
        rc = replica.wait_exit(timeout_s)
        self.replicas[index] = None
        found = re.search(r"draining: \d+ calls, (\d+) with a reply in flight", replica.output())
        return rc, stopped_listening, int(found.group(1)) if found else 0

    def start(self) -> None:
        for index in range(len(self.ports)):
            self.start_replica(index)
        servers = "\n".join(f"    server {name} 127.0.0.1:{port} check"
                            for name, port in zip(self.names, self.ports, strict=True))
        config = self.folder / "haproxy.cfg"
        config.write_text(_CONFIG.format(stats=self.stats, port=self.port, servers=servers,
                                         interval=CHECK_INTERVAL_MS, header=REPLICA_HEADER))
        check = subprocess.run([self.haproxy, "-c", "-q", "-f", str(config)],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stderr}")
        self.proxy = subprocess.Popen([self.haproxy, "-db", "-f", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)

    def status(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it (``UP``, ``DOWN``, ``UP 1/2``…)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        rows = csv.DictReader(io.StringIO(b"".join(chunks).decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "agents"
                and row["svname"] in self.names}

    async def wait_status(self, name: str, wanted: str, timeout_s: float = 30.0) -> None:
        """Until HAProxy reports ``name`` as ``wanted`` (bounded)."""
        deadline = time.monotonic() + timeout_s
        seen = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                seen = (await asyncio.to_thread(self.status)).get(name, "")
                if seen == wanted:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"haproxy saw {name} as {seen!r}, not {wanted!r}, for {timeout_s} s")

    def close(self) -> None:
        for index, replica in enumerate(self.replicas):
            if replica is not None:
                replica.stop()
                self.replicas[index] = None
        if self.proxy is not None:
            self.proxy.terminate()
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait(timeout=10)
            if self.proxy.stderr is not None:
                self.proxy.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def local_cluster(replicas: int, env: dict[str, str] | None = None
                        ) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(replicas, env)
    try:
        await asyncio.to_thread(cluster.start)
        for name in cluster.names:
            await cluster.wait_status(name, "UP")
        yield cluster
    finally:
        await asyncio.to_thread(cluster.close)


# --------------------------------------------------------------------------- the proof


@dataclass
class RollingReport:
    turns_completed: int = 0
    turns_retried: int = 0
    """Not started because the replica was draining (ignored, or the call closed
    before a reply began): asked again on the next call, as a client does."""
    failed_turns: list[str] = field(default_factory=list)
    dropped_mid_reply: list[str] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)
    calls: list[tuple[float, str]] = field(default_factory=list)
    """When each call was asked for and which replica took it."""
    not_ready: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Each restarted replica: from when it stopped listening (draining) until it
    served again, ready (``voiceforge serve`` listens once its engines are loaded)."""
    restarts: int = 0
    replies_in_flight_at_sigterm: int = 0
    """Summed over the restarts: what each drain had to let finish."""
    replying: dict[str, int] = field(default_factory=dict)
    """Replies in flight now, by replica, as the callers see them."""

    def landed_on_unready(self) -> list[str]:
        wrong = []
        for at, replica in self.calls:
            window = self.not_ready.get(replica)
            if window is not None and window[0] < at < window[1]:
                wrong.append(f"{replica} at {at:.2f}")
        return wrong

    def summary(self) -> dict[str, Any]:
        per_replica: dict[str, int] = {}
        for _, replica in self.calls:
            per_replica[replica] = per_replica.get(replica, 0) + 1
        return {
            "restarts": self.restarts,
            "replies_in_flight_at_sigterm": self.replies_in_flight_at_sigterm,
            "turns_completed": self.turns_completed,
            "turns_retried": self.turns_retried, "failed_turns": len(self.failed_turns),
            "dropped_mid_reply": len(self.dropped_mid_reply),
            "connect_failures": len(self.connect_failures), "calls": len(self.calls),
            "calls_per_replica": per_replica,
            "calls_on_unready_replicas": len(self.landed_on_unready()),
        }


async def _one_turn(call: RawCall, replica: str, index: int, report: RollingReport) -> bool:
    """One typed turn; False when the call must be replaced (the turn is asked again)."""
    replying = [False]
    try:
        return await _turn(call, index, report, replying, replica)
    finally:
        if replying[0]:
            report.replying[replica] -= 1


async def _turn(call: RawCall, index: int, report: RollingReport, replying: list[bool],
                replica: str) -> bool:
    """``_one_turn``'s body; ``replying[0]`` says whether its reply has begun."""
    try:
        await call.send({"type": "conversation.text", "text": f"Caller {index}: how are you?"})
    except ConnectionClosed:  # the server ended the call between two turns (a drain)
        report.turns_retried += 1
        return False
    try:
        while True:
            message = await call.recv(30)
            kind = message["type"]
            if kind == "response.created":
                replying[0] = True
                report.replying[replica] = report.replying.get(replica, 0) + 1
            elif kind == "input_audio.turn_ignored":
                report.turns_retried += 1
                return False
            elif kind == "response.done":
                if message["status"] == "completed":
                    report.turns_completed += 1
                    return True
                report.failed_turns.append(f"caller {index}: {message}")
                return True
            elif kind == "error" and message.get("code") != "server_shutting_down":
                report.failed_turns.append(f"caller {index}: {message}")
    except CallClosed as closed:
        if replying[0]:
            report.dropped_mid_reply.append(f"caller {index}: closed {closed.code} mid-reply")
        else:
            report.turns_retried += 1
        return False
    except TimeoutError:
        report.failed_turns.append(f"caller {index}: no reply within 30 s")
        return False


PAUSE_S = 0.3
"""Between a reply and the next question, as a person pauses (back-to-back turns
with every reply's played reports exceed the server's frame-rate limit)."""


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), PAUSE_S)


async def _caller(url: str, index: int, stop: asyncio.Event, report: RollingReport) -> None:
    """Talk until ``stop``; a call the server ends is replaced by a new one."""
    while not stop.is_set():
        asked_at = time.monotonic()
        try:
            call = await RawCall.open(url)
        except Exception as exc:  # refused, reset, 503: each one a failure to report
            report.connect_failures.append(f"caller {index}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2)
            continue
        response = call.ws.response
        replica = response.headers.get(REPLICA_HEADER, "?") if response is not None else "?"
        # From when it was asked for: a call asked for once a replica had stopped
        # listening, and taken by it before it served again, went to one not ready.
        report.calls.append((asked_at, replica))
        try:
            while not stop.is_set() and await _one_turn(call, replica, index, report):
                await _pause(stop)
        finally:
            await call.close()


async def rolling_restart(cluster: LocalCluster, callers: int, rounds: int = 1,
                          settle_turns: int = 0) -> RollingReport:
    """Callers talk through the proxy while each replica in turn is SIGTERMed (it
    drains), started again, and waited for until HAProxy has it UP."""
    report = RollingReport()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_caller(cluster.url, i, stop, report), name=f"caller-{i}")
             for i in range(callers)]
    try:
        for _ in range(rounds):
            for index, name in enumerate(cluster.names):
                # Let the callers finish a few turns, then strike while the replica
                # has a reply in flight: that is what the drain must not cut.
                target = report.turns_completed + settle_turns
                for _ in range(6000):  # bounded: 60 s
                    if all(t.done() for t in tasks) or (
                        report.turns_completed >= target and report.replying.get(name, 0)
                    ):
                        break
                    await asyncio.sleep(0.01)
                rc, stopped_listening, in_flight = await asyncio.to_thread(
                    cluster.stop_replica, index)
                report.replies_in_flight_at_sigterm += in_flight
                if rc not in (0, -signal.SIGTERM):
                    report.failed_turns.append(f"{name} exited with {rc}")
                await asyncio.to_thread(cluster.start_replica, index)
                report.not_ready[name] = (stopped_listening, time.monotonic())
                await cluster.wait_status(name, "UP")
                report.restarts += 1
    finally:
        stop.set()
        _, late = await asyncio.wait(tasks, timeout=60)
        for task in late:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):  # a caller that stopped talking
                report.failed_turns.append(f"caller died: {outcome!r}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.balancer",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rolling", type=int, default=0, metavar="ROUNDS",
                        help="restart every replica in turn under callers, ROUNDS times, "
                        "print the figures and exit (default: serve until Ctrl-C)")
    parser.add_argument("--callers", type=int, default=12, help="callers for --rolling")
    parser.add_argument("--settle-turns", type=int, default=50,
                        help="turns completed between two restarts (--rolling)")
    parser.add_argument("--tokens-per-second", type=float, default=20.0,
                        help="the replicas' scripted LLM speed: slower replies are in "
                        "flight when a drain begins")
    args = parser.parse_args(argv)
    env = {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": str(args.tokens_per_second)}

    async def run() -> int:
        async with local_cluster(args.replicas, env) as cluster:
            print(f"haproxy at {cluster.url} in front of {args.replicas} replicas "
                  f"(ports {', '.join(map(str, cluster.ports))})", flush=True)
            if not args.rolling:
                print(f"load it: python -m loadtest --url {cluster.url}", flush=True)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
                return 0
            started = time.monotonic()
            report = await rolling_restart(cluster, args.callers, args.rolling,
                                           args.settle_turns)
            summary = report.summary()
            summary["wall_s"] = round(time.monotonic() - started, 1)
            for key, value in summary.items():
                print(f"  {key}: {value}")
            for line in [*report.failed_turns, *report.dropped_mid_reply,
                         *report.connect_failures][:10]:
                print(f"  ! {line}")
            clean = not (report.failed_turns or report.dropped_mid_reply
                         or report.connect_failures or report.landed_on_unready())
            return 0 if clean else 1

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
