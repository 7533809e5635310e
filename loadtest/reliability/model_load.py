"""Model load: a factory that fails (/healthz 503 with the reason, calls refused),
one that blocks (loading: /healthz 200, calls refused; then ready), and a server
stopped while its factory blocks (stops within 2 s)."""

from __future__ import annotations

import functools
import threading
import time

from agent.config import Settings
from agent.server import create_app
from loadtest.harness import bench_engines, serving_app
from loadtest.reliability.common import (
    Context,
    Result,
    dist,
    handshake,
    new_call_turn,
    r2,
    readyz_ok,
    settings_of,
    status_of,
    wait_until,
)
from pipeline.conversation import Engines
from pipeline.errors import ModelLoadError


class BlockedLoader:
    """An engine factory that waits for ``release`` before building the engines
    (``abort`` makes it raise instead)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.loaded = threading.Event()
        self.aborted = False

    def __call__(self) -> Engines:
        self.entered.set()
        released = self.release.wait(60)
        if self.aborted or not released:
            raise ModelLoadError("loader aborted")
        return bench_engines()

    def abort(self) -> None:
        self.aborted = True
        self.release.set()


LOAD_ERROR = "whisper model /models/tiny.en/model.bin: file is truncated"


async def model_load(ctx: Context) -> Result:
    r = ctx.result
    settings = Settings(latency_budget_ms=0.0)
    r.settings = {**settings_of(settings, "retry_after_s"),
                  "failing_factory": f"raises ModelLoadError({LOAD_ERROR!r})",
                  "blocked_factory": "waits for a release, then builds the bench engines"}

    def failing() -> Engines:
        raise ModelLoadError(LOAD_ERROR)

    ctx.step("a factory that raises")
    async with serving_app(create_app(settings, failing), settings) as server:
        started = time.monotonic()

        async def health_failed() -> bool:
            return (await ctx.http.get(f"{server.http}/healthz")).status_code == 503

        failed_s = await wait_until(health_failed, 10.0, 0.005)
        failed_s = None if failed_s is None else time.monotonic() - started
        health_status, health = await status_of(ctx, server.http, "/healthz")
        ready_status, ready = await status_of(ctx, server.http, "/readyz")
        refusals = [await handshake(server.url) for _ in range(3)]

    ctx.step("a factory that blocks until released")
    loader = BlockedLoader()
    app = create_app(settings, loader, on_ready=loader.loaded.set)
    async with serving_app(app, settings) as server:
        try:
            await wait_until(loader.entered.is_set, 10.0)
            loading_health, loading_body = await status_of(ctx, server.http, "/healthz")
            loading_ready, _ = await status_of(ctx, server.http, "/readyz")
            loading_call = await handshake(server.url)
            released_at = time.monotonic()
            loader.release.set()

            ready_s = await wait_until(
                functools.partial(readyz_ok, ctx, server.http), 10.0, 0.005)
            ready_s = None if ready_s is None else time.monotonic() - released_at
            answer = await new_call_turn(server.url)
        finally:
            loader.release.set()

    ctx.step("a server stopped while its factory blocks")
    stuck = BlockedLoader()
    stuck_app = create_app(settings, stuck, on_ready=stuck.loaded.set)
    async with serving_app(stuck_app, settings):
        await wait_until(stuck.entered.is_set, 10.0)
        stopping = time.monotonic()
    stopped_s = time.monotonic() - stopping
    stuck.abort()

    r.figures = {
        "healthz_503_after_start_ms": r2(None if failed_s is None else failed_s * 1e3),
        "healthz_failed_body": health,
        "readyz_status_failed": ready_status,
        "readyz_reasons_failed": ready.get("reasons"),
        "ws_refusal_statuses_failed": sorted({h.status for h in refusals}),
        "ws_refusal_reason_failed": sorted({str(h.reason()) for h in refusals}),
        "ws_refusal_latency_failed_ms": dist(h.ms for h in refusals),
        "healthz_while_loading": f"{loading_health} {loading_body.get('status')}",
        "readyz_status_while_loading": loading_ready,
        "ws_status_while_loading": loading_call.status,
        "readyz_200_after_release_ms": r2(None if ready_s is None else ready_s * 1e3),
        "first_call_after_load": answer.done["status"],
        "stop_while_loading_s": r2(stopped_s),
    }
    r.check("a failed load: /healthz 503 'failed' with the reason, /readyz 503, calls 503 "
            "not_ready", failed_s is not None and health_status == 503
            and health.get("status") == "failed" and LOAD_ERROR in str(health.get("reason"))
            and ready_status == 503 and all(h.status == 503 and h.reason() == "not_ready"
                                            for h in refusals), (health, ready))
    r.check("loading: /healthz 200 'loading', /readyz 503, calls 503",
            loading_health == 200 and loading_body.get("status") == "loading"
            and loading_ready == 503 and loading_call.status == 503,
            (loading_health, loading_body, loading_ready, loading_call.status))
    r.check("loaded: /readyz 200 and a call answered", ready_s is not None
            and answer.done["status"] == "completed", (ready_s, answer.done["status"]))
    r.check("a server stopped while loading stops within 2 s", stopped_s < 2.0, stopped_s)
    return r
