"""A real server with the real embedded engines, on 127.0.0.1 and a free port.

The server runs in its own thread and event loop (as it would in production,
apart from the tests' client loop); the engines load once per test session.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import uvicorn

from agent.config import Settings
from agent.profiles import build_embedded
from agent.server import AppState, create_app
from agent.serving import VoiceForgeServer, transport_limits
from pipeline.conversation import Engines
from pipeline.engines.base import LLMEngine
from pipeline.tiers import FAST_TIER
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.speech import espeak_available


@dataclass
class RunningServer:
    url: str
    http: str
    app_state: AppState
    settings: Settings

    def conversation(self, session_id: str) -> object:
        for session in list(self.app_state.sessions):
            if session.conversation.session_id == session_id:
                return session.conversation
        raise LookupError(session_id)


@pytest.fixture(scope="session")
def embedded_engines() -> Engines:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the end-to-end tests (make test installs it)")
    return load_embedded_engines()


@functools.cache
def load_embedded_engines() -> Engines:
    """Loaded once per test run, whichever test folder asks first (tests/bridges too):
    the fast tier's models, for the mechanics (tests/e2e/test_cli.py serves the default
    tier's)."""
    return build_embedded(Settings(tier=FAST_TIER), progress=lambda line: None)


def sharing(engines: Engines, *, llm: LLMEngine | None = None) -> Engines:
    """Engines for a second server: the shared STT/TTS (and LLM), a VAD worker of its own.

    Each app's lifespan starts and stops its VAD worker, so concurrent servers
    cannot share one; the heavy models they can.
    """
    return Engines(
        stt=engines.stt,
        llm=engines.llm if llm is None else llm,
        tts=engines.tts,
        vad=BatchedVADWorker(SileroVAD()),
    )


def start_server(
    settings: Settings, engines: Engines, *, admission: bool = False
) -> Iterator[RunningServer]:
    """Serve ``create_app(settings, engines)`` until the generator is closed.

    Test servers share two cores with the whole suite, so a latency p95 measured
    there says more about the test run than about the server: admission control
    is off unless a test asks for it (``admission=True``).
    """
    if not admission:
        settings = replace(settings, latency_budget_ms=0.0)
    app = create_app(settings, engines)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        **transport_limits(settings),
        lifespan="on",
    )
    server = VoiceForgeServer(config, app)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(
            url=f"ws://127.0.0.1:{port}/ws",
            http=f"http://127.0.0.1:{port}",
            app_state=app.state.voiceforge,
            settings=settings,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="session")
def server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from start_server(Settings(), embedded_engines)
