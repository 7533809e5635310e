"""Engines that load in the background, or fail to: what the health endpoints and
``/ws`` say meanwhile.

``create_app`` with an engine factory serves at once: ``/healthz`` is 200
``loading`` (alive, do not restart) and ``/readyz`` 503 (send no calls) while the
factory runs in a thread, and calls are refused with HTTP 503 and Retry-After.
A factory that raises makes ``/healthz`` fail (503 ``failed`` with the reason),
since no waiting will fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.server import create_app
from pipeline.conversation import Engines
from pipeline.errors import ModelLoadError
from pipeline.events import ResponseStatus
from tests.faults.support import (
    bench_engines,
    done,
    get,
    scrape,
    serving_app,
    typed_turn,
    value,
    wait_until,
)

LOAD_ERROR = "whisper model /models/tiny.en/model.bin: file is truncated"


def _ws_url(http: str) -> str:
    return http.replace("http://", "ws://") + "/ws"


async def wait_until_status(http: str, path: str, status: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (answered := (await get(http, path)).status_code) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {answered}, not {status}, after {timeout_s} s")
        await asyncio.sleep(0.05)


async def _assert_call_refused(http: str) -> None:
    """The /ws handshake is answered with HTTP 503 and a Retry-After hint."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(_ws_url(http), open_timeout=10):
            pass
    response = refused.value.response
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert b"not_ready" in response.body


@pytest.fixture
def failing_server() -> Iterator[str]:
    def factory() -> Engines:
        raise ModelLoadError(LOAD_ERROR)

    with serving_app(create_app(Settings(latency_budget_ms=0.0), factory)) as http:
        yield http


async def test_a_model_that_fails_to_load_fails_healthz(failing_server: str) -> None:
    http = failing_server
    await wait_until_status(http, "/healthz", 503)
    health = await get(http, "/healthz")
    assert health.json()["status"] == "failed"
    assert health.json()["reason"] == f"ModelLoadError: {LOAD_ERROR}"
    ready = await get(http, "/readyz")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["reasons"] == {"not_ready": f"ModelLoadError: {LOAD_ERROR}"}
    await _assert_call_refused(http)
    await _assert_call_refused(http)  # and again: nothing changes by itself
    samples = await scrape(http)
    assert value(samples, "voiceforge_refusals_total", reason="not_ready") == 2.0
    assert value(samples, "voiceforge_sessions_active") == 0.0


@dataclass
class BlockedLoader:
    """A factory that waits for ``release`` (at most ``limit_s``) before it builds
    engines."""

    limit_s: float = 30.0
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    loaded: threading.Event = field(default_factory=threading.Event)
    """Set by the app's ``on_ready``."""
    returned: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> Engines:
        self.entered.set()
        try:
            if not self.release.wait(self.limit_s):
                raise ModelLoadError(
                    f"the test did not release the loader within {self.limit_s} s"
                )
            return bench_engines()
        finally:
            self.returned.set()


@contextlib.contextmanager
def loading_server(loader: BlockedLoader) -> Iterator[str]:
    """A server whose engines load through ``loader``; released before it stops,
    so the loader thread is never left blocked."""
    app = create_app(Settings(latency_budget_ms=0.0), loader, on_ready=loader.loaded.set)
    with serving_app(app) as http:
        try:
            yield http
        finally:
            loader.release.set()


async def test_a_slow_load_is_loading_then_ready() -> None:
    loader = BlockedLoader()
    with loading_server(loader) as http:
        await wait_until(loader.entered.is_set, 10, "the factory started")
        health = await get(http, "/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "loading"
        ready = await get(http, "/readyz")
        assert ready.status_code == 503
        assert "not_ready" in ready.json()["reasons"]
        await _assert_call_refused(http)
        assert not loader.loaded.is_set()

        loader.release.set()
        await wait_until(loader.loaded.is_set, 10, "on_ready called")
        await wait_until_status(http, "/readyz", 200)
        health = await get(http, "/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["engines"]["llm"] == "bench:scripted-llm"
        async with await VoiceForgeClient.connect(_ws_url(http)) as client:
            answer = done(await typed_turn(client, "Are you there?"))
            assert answer.status is ResponseStatus.COMPLETED
            assert answer.text_heard


def test_a_server_stopped_while_loading_stops_promptly() -> None:
    loader = BlockedLoader(limit_s=60.0)
    app = create_app(Settings(latency_budget_ms=0.0), loader, on_ready=loader.loaded.set)
    try:
        with serving_app(app):
            assert loader.entered.wait(10)
        # Stopped while its loader is still blocked: the stop did not wait for it
        # (had it, it would have ended only once the loader gave up, a minute on).
        assert not loader.returned.is_set()
        assert not loader.loaded.is_set()
    finally:
        loader.release.set()
    assert loader.returned.wait(30)


async def test_a_factory_crashing_with_any_exception_fails_healthz() -> None:
    def factory() -> Engines:
        raise ValueError("unexpected key 'n_ctx' in model config")

    with serving_app(create_app(Settings(latency_budget_ms=0.0), factory)) as http:
        await wait_until_status(http, "/healthz", 503, timeout_s=3.0)
        assert "ValueError" in (await get(http, "/healthz")).json()["reason"]
