"""Shared by the engines that run a model on one worker thread.

``iterate_in_thread`` turns a blocking iterator into an async generator: each
item is produced on the engine's executor, the next one is started before the
current one is handed over, and closing or cancelling stops after the item in
progress. ``pick_voice`` resolves a voice name the same way for every TTS engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pipeline.errors import TTSError

Item = TypeVar("Item")
Voice = TypeVar("Voice")


def pick_voice(voices: Mapping[str, Voice], name: str | None, default: str) -> Voice:
    """The voice called ``name`` (``default`` when None). Raises a permanent TTSError."""
    voice_name = name or default
    selected = voices.get(voice_name)
    if selected is None:
        known = ", ".join(voices) or "none"
        raise TTSError(f"unknown voice {voice_name!r} (known: {known})", transient=False)
    return selected


async def iterate_in_thread(
    executor: ThreadPoolExecutor, items: Iterator[Item], engine_name: str
) -> AsyncGenerator[Item, None]:
    """Yield ``items`` produced on ``executor``; a failure becomes a TTSError."""
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(executor, _next_or_none, items)
    try:
        while True:
            try:
                item = await pending
            except Exception as error:
                raise TTSError(f"{engine_name}: synthesis failed: {error}") from error
            if item is None:
                return
            # Start the next item before handing this one over.
            pending = loop.run_in_executor(executor, _next_or_none, items)
            yield item
    finally:
        # Either done, or cancelled: the item in progress finishes, nothing after it.
        pending.cancel()
        with contextlib.suppress(RuntimeError):  # executor already shut down
            executor.submit(_close_quietly, items)


def _next_or_none(items: Iterator[Item]) -> Item | None:
    return next(items, None)


def _close_quietly(items: Iterator[object]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()
