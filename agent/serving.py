"""Running the app under uvicorn with a graceful drain, and structured logs.

On SIGTERM (or SIGINT) uvicorn's own shutdown closes every WebSocket at once with
1012. ``VoiceForgeServer`` first stops listening, then lets replies in flight
finish (``Settings.drain_timeout_s``), tells each caller why and closes its
socket with 1001 (``agent.lifecycle.drain``), and only then hands over to uvicorn,
whose lifespan shutdown stops the engines' threads.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

import uvicorn
from pythonjsonlogger.json import JsonFormatter
from starlette.applications import Starlette

from agent.config import Settings
from agent.lifecycle import drain
from agent.state import AppState

logger = logging.getLogger("voiceforge.serving")


def transport_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that bound what clients can make it hold:
    one frame's bytes (``ws_max_size``: over it, close 1009 before the app sees
    it) and open connections (``limit_concurrency``: beyond it, HTTP 503)."""
    return {
        "ws_max_size": settings.hard_max_frame_bytes,
        "limit_concurrency": settings.connection_limit(),
    }


class VoiceForgeServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first: new callers go to another replica
        for sock in sockets or []:
            sock.close()
        state: AppState | None = getattr(self.app.state, "voiceforge", None)
        if state is not None:
            await drain(state, state.settings.drain_timeout_s)
        await super().shutdown(sockets)
        # The engines ran blocking work in the loop's default executor; nothing
        # needs it now, and its idle threads are not a leak to report.
        await asyncio.get_running_loop().shutdown_default_executor()
        # What outlives the shutdown would leak in an embedding process; say so.
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        threads = [
            thread.name for thread in threading.enumerate()
            if thread is not threading.main_thread() and not thread.daemon
        ]
        logger.info(
            "shutdown complete: %d tasks and %d non-daemon threads left%s",
            len(left), len(threads), f" ({', '.join(threads)})" if threads else "",
        )


class RedactSecrets(logging.Filter):
    """Defence in depth: no configured secret reaches a log line, whoever logs it."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "[redacted]")
                record.msg, record.args = text, None
        return True


def configure_logging(log_format: str, secrets: Iterable[str | None], level: int) -> None:
    """``text`` (human) or ``json`` (one object per line: time, level, logger,
    message, and ``session_id``/``response_id``/``code``… where the line has them)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
