"""N concurrent callers against one server for a bounded time.

Callers start evenly over ``ramp_s``; each runs sessions of its scenario back to
back until the duration is over, and every session still running ``grace_s``
after that is cancelled (and counted as a failure), so a run always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from agent.caller import FrameClock
from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller
from loadtest.latency import QUESTIONS, percentile
from loadtest.scenarios import SCENARIOS, Session, Stats, collect_session_errors
from loadtest.speech import speak

CONNECT_TIMEOUT_S = 30.0


def compare_values(spec: str) -> tuple[str, Any, Any]:
    """``--compare``'s field and its on and off values: ``FIELD`` or ``FIELD=ON,OFF``."""
    name, sep, values = spec.partition("=")
    if not sep:
        return name, True, False
    on, comma, off = values.partition(",")
    if not name or not comma:
        raise ValueError(f"--compare takes FIELD or FIELD=ON,OFF, got {spec!r}")
    try:
        return name, json.loads(on), json.loads(off)
    except json.JSONDecodeError as error:
        raise ValueError(f"--compare {spec!r}: the values must be JSON ({error})") from None


@dataclass
class LoadConfig:
    url: str
    callers: int
    duration_s: float
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    ramp_s: float = 0.0
    grace_s: float = 60.0
    turn_timeout_s: float = 60.0
    compare: str | None = None
    """A session field alternated on/off between sessions (``--compare``): ``FIELD``
    (a boolean, true/false) or ``FIELD=ON,OFF`` (two JSON values, e.g.
    ``first_chunk_max_words=4,0``)."""
    progress_s: float = 2.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"--url must be ws://HOST:PORT/ws or wss://..., got {self.url!r}")
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {list(SCENARIOS)}")
        if self.callers < 1 or self.duration_s <= 0:
            raise ValueError("--callers must be >= 1 and --duration > 0")
        if self.compare is not None:
            compare_values(self.compare)  # refuses a malformed spec before the run

    @property
    def http_base(self) -> str:
        parts = urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}"


def prepare_speech(count: int = 8) -> list[np.ndarray]:
    """The questions callers ask, spoken once by espeak-ng and shared by every caller."""
    return [speak(question) for question in QUESTIONS[:count]]


def scrape_server(http_base: str) -> dict[str, float]:
    """Process CPU seconds, resident memory and open sessions from ``/metrics``."""
    wanted = {
        "process_cpu_seconds_total": "cpu_s",
        "process_resident_memory_bytes": "rss_bytes",
        "voiceforge_sessions_active": "sessions_active",
    }
    values: dict[str, float] = {}
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                values[wanted[name]] = float(value)
    return values


class _Run:
    def __init__(self, config: LoadConfig, speech: list[np.ndarray]) -> None:
        self.config = config
        self.speech = speech
        self.stats = Stats()
        self.started = time.monotonic()
        self.deadline = self.started + config.ramp_s + config.duration_s
        self.session_counter = 0
        self.rss_max = 0.0
        self.clock = FrameClock()
        """Every caller's microphone on one timer (agent.caller.FrameClock)."""

    def _variant(self) -> tuple[str, dict[str, Any]]:
        self.session_counter += 1
        if self.config.compare is None:
            return "", {}
        on = self.session_counter % 2 == 1
        field_name, on_value, off_value = compare_values(self.config.compare)
        return ("on" if on else "off"), {field_name: on_value if on else off_value}

    async def caller(self, index: int) -> None:
        config = self.config
        scenario = config.scenarios[index % len(config.scenarios)]
        await asyncio.sleep(config.ramp_s * index / config.callers)
        while time.monotonic() < self.deadline:
            await self.session(scenario)

    async def session(self, scenario: str) -> None:
        config, stats = self.config, self.stats
        variant, fields = self._variant()
        try:
            client = await asyncio.wait_for(
                VoiceForgeClient.connect(config.url, api_key=config.api_key), CONNECT_TIMEOUT_S
            )
        except Exception as exc:  # refused, reset, timed out, handshake failure
            stats.failures.append(f"connect: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)  # do not spin on a server that refuses
            return
        stats.sessions += 1
        stats.sessions_active += 1
        caller = TimedCaller(client, clock=self.clock)
        session = Session(
            caller, client, stats, self.speech, variant, self.deadline, config.turn_timeout_s
        )
        try:
            await client.update_session(input_sample_rate=16000, **fields)
            caller.start()
            await SCENARIOS[scenario](session)
            if client.closed and scenario != "disconnect":
                stats.dropped_sessions += 1
                stats.failures.append(f"{scenario}: the server closed the session")
        except TimeoutError as exc:
            if client.closed:
                stats.dropped_sessions += 1
            stats.failures.append(f"{scenario}: {exc}")
        except Exception as exc:
            stats.failures.append(f"{scenario}: {type(exc).__name__}: {exc}")
        finally:
            stats.sessions_active -= 1
            collect_session_errors(session)
            await caller.stop()
            with contextlib.suppress(Exception):
                await client.close()

    async def progress(self) -> None:
        config = self.config
        while True:
            await asyncio.sleep(config.progress_s)
            with contextlib.suppress(OSError):
                server = await asyncio.to_thread(scrape_server, config.http_base)
                self.rss_max = max(self.rss_max, server.get("rss_bytes", 0.0))
            overhead = [t.overhead_ms for t in self.stats.turns if t.overhead_ms is not None]
            latency = [t.acoustic_ms for t in self.stats.turns if t.acoustic_ms is not None]
            print(
                f"  [{time.monotonic() - self.started:5.0f}s]"
                f"  sessions {self.stats.sessions_active:4d}"
                f"  turns {len(self.stats.turns):5d}  errors {self.stats.errors:3d}"
                f"  latency p95 {percentile(latency, 95):6.0f} ms (acoustic end, client)"
                f"  overhead p95 {percentile(overhead, 95):6.0f} ms",
                file=sys.stderr,
                flush=True,
            )


async def _stop_when(stop: asyncio.Event, run: _Run) -> None:
    await stop.wait()
    run.deadline = min(run.deadline, time.monotonic())


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def run_load(
    config: LoadConfig, speech: list[np.ndarray], *, stats: Stats | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run the callers; returns the raw figures ``loadtest.report.summarize`` reads.

    ``stats``: where the callers record (to read it while they run); ``stop``: once
    set, callers start no new session (as at the end of the duration).
    """
    run = _Run(config, speech)
    if stats is not None:
        run.stats = stats
    stopper = asyncio.create_task(_stop_when(stop, run)) if stop is not None else None
    before = await asyncio.to_thread(scrape_server, config.http_base)
    wall_start, cpu_start = time.monotonic(), _cpu_seconds()
    progress = asyncio.create_task(run.progress())
    callers = [asyncio.create_task(run.caller(i)) for i in range(config.callers)]
    hard_stop = config.ramp_s + config.duration_s + config.grace_s
    _, late = await asyncio.wait(callers, timeout=hard_stop)
    for task in late:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    if late:
        run.stats.failures.extend(["session still running at the hard stop"] * len(late))
    progress.cancel()
    if stopper is not None:
        stopper.cancel()
    await asyncio.gather(progress, *([stopper] if stopper else []), return_exceptions=True)
    wall_s = time.monotonic() - wall_start
    # The server notices aborted connections on its own; give it a moment.
    after = await asyncio.to_thread(scrape_server, config.http_base)
    for _ in range(20):
        if after.get("sessions_active", 0.0) <= before.get("sessions_active", 0.0):
            break
        await asyncio.sleep(0.25)
        after = await asyncio.to_thread(scrape_server, config.http_base)
    run.rss_max = max(run.rss_max, after.get("rss_bytes", 0.0))
    # A pool of workers (``--workers N``) labels these per worker, and a scrape
    # reaches one worker: no figure for the whole server then.
    whole = "cpu_s" in before and "cpu_s" in after
    server: dict[str, float | None] = {
        "cpu_percent": 100.0 * (after["cpu_s"] - before["cpu_s"]) / wall_s if whole else None,
        "rss_mb_before": before["rss_bytes"] / 2**20 if whole else None,
        "rss_mb_after": after["rss_bytes"] / 2**20 if whole else None,
        "rss_mb_max": run.rss_max / 2**20 if whole else None,
        "sessions_left_open": after.get("sessions_active", 0.0)
        - before.get("sessions_active", 0.0),
    }
    return {
        "config": config,
        "stats": run.stats,
        "wall_s": wall_s,
        "server": server,
        "loadgen_cpu_percent": 100.0 * (_cpu_seconds() - cpu_start) / wall_s,
    }
