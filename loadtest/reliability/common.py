"""What every scenario shares: its result, its context, and the few measures
and steps that scenarios repeat (a handshake's answer, a distribution, a wait).

The servers, engines, callers and the metrics scrape are in ``loadtest.harness``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from websockets.exceptions import InvalidHandshake, InvalidStatus

from agent.config import Settings
from loadtest.harness import LocalServer, LogWatch, RawCall, Samples, Turn, scrape
from pipeline.conversation import SessionConfig

APOLOGY = SessionConfig().apology
DEFAULTS = Settings()
RETRIES = DEFAULTS.engine_retries
BENCH = "scripted STT, scripted LLM (200 tokens/s, first token 10 ms), tone TTS, Silero VAD"
QUESTION = "Say hello."
TRANSCRIPT = "What is the capital of France?"
ENGINE_REPLY = "The capital of France is Paris. It is known for the Eiffel Tower."


@dataclass
class Check:
    invariant: str
    passed: bool
    detail: str = ""


@dataclass
class Result:
    """What a scenario measured; filled as it goes, so a scenario that fails
    halfway still reports what it had measured."""

    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_tracebacks: list[str] = field(default_factory=list)

    def check(self, invariant: str, passed: bool, detail: object = "") -> bool:
        self.checks.append(Check(invariant, bool(passed), "" if passed else str(detail)))
        return bool(passed)


@dataclass
class Context:
    quick: bool
    http: httpx.AsyncClient
    watch: LogWatch
    result: Result
    progress: Callable[[str], None]

    def step(self, text: str) -> None:
        self.progress(f"    {text}")


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def dist(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """n, p50, p95 and max of ``values`` (None left out)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {
        "n": len(data),
        "p50": round(float(np.percentile(data, 50)), 3),
        "p95": round(float(np.percentile(data, 95)), 3),
        "max": round(max(data), 3),
    }


def r2(number: float | None) -> float | None:
    return None if number is None else round(float(number), 3)


def settings_of(settings: Settings, *names: str) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}


@dataclass
class Handshake:
    status: int
    """HTTP status of the answer; 101 when the call was taken, 0 when no answer."""
    ms: float
    headers: dict[str, str]
    body: bytes
    call: RawCall | None

    def reason(self) -> str | None:
        try:
            reason = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None
        return str(reason) if reason is not None else None


async def handshake(url: str, **kwargs: Any) -> Handshake:
    """Try to start a call: taken (101 and ``session.created``) or refused (status)."""
    start = time.perf_counter()
    try:
        call = await RawCall.open(url, **kwargs)
    except InvalidStatus as exc:
        response = exc.response
        return Handshake(response.status_code, ms_since(start), dict(response.headers),
                         bytes(response.body or b""), None)
    except (OSError, InvalidHandshake, TimeoutError):
        return Handshake(0, ms_since(start), {}, b"", None)
    return Handshake(101, ms_since(start), {}, b"", call)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, interval_s: float = 0.01
) -> float | None:
    """Seconds until ``predicate`` holds (polled), or None if it did not within ``timeout_s``."""
    start = time.monotonic()
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        await asyncio.sleep(interval_s)


async def status_of(ctx: Context, base: str, path: str) -> tuple[int, dict[str, Any]]:
    response = await ctx.http.get(f"{base}{path}")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def metrics(ctx: Context, base: str) -> Samples:
    return await scrape(ctx.http, base)


async def readyz_ok(ctx: Context, base: str) -> bool:
    return (await ctx.http.get(f"{base}/readyz")).status_code == 200


async def wait_ready(ctx: Context, base: str, timeout_s: float = 5.0) -> bool:
    return await wait_until(functools.partial(readyz_ok, ctx, base), timeout_s, 0.05) is not None


async def new_call_turn(url: str, text: str = QUESTION, timeout_s: float = 30.0) -> Turn:
    """A new call's answer to one typed turn: the server still serves."""
    call = await RawCall.open(url)
    try:
        return await call.typed_turn(text, timeout_s)
    finally:
        await call.close()


def session_of(server: LocalServer, call: RawCall) -> Any:
    for session in list(server.state.sessions):
        if session.conversation.session_id == call.created["session_id"]:
            return session
    raise LookupError(call.created["session_id"])
