"""Loading and closing the engines of a server (models load in a thread of their own)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from pipeline.conversation import Engines

EngineFactory = Callable[[], Engines]


async def in_daemon_thread(factory: EngineFactory) -> Engines:
    """Run a model loader off the loop in a thread of its own: a server stopped
    while it loads exits at once (the loop's executor would wait for it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Engines] = loop.create_future()

    def run() -> None:
        result: Engines | None = None
        error: BaseException | None = None
        try:
            result = factory()
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while loading
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name="voiceforge-load", daemon=True).start()
    return await future


def _settle(
    future: asyncio.Future[Engines], result: Engines | None, exc: BaseException | None
) -> None:
    if future.done():  # cancelled: the server stopped while loading
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


async def close_engines(engines: Engines) -> None:
    """Close STT, LLM and TTS (``aclose`` or ``close``, whichever they have)."""
    for engine in (engines.stt, engines.llm, engines.tts):
        aclose = getattr(engine, "aclose", None)
        if aclose is not None:
            await aclose()
            continue
        close = getattr(engine, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
