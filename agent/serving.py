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
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
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


def server_config(app: Starlette, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """How ``voiceforge serve`` (and each of its workers) runs ``app`` under uvicorn."""
    return uvicorn.Config(
        app,
        **transport_limits(settings),
        # PCM barely compresses: permessage-deflate cost ~14% of the server's CPU
        # under load (docs/benchmarks.md) for nothing.
        ws_per_message_deflate=False,
        # "auto" takes uvloop (installed by uvicorn[standard]); "asyncio" is there
        # to measure the difference (docs/benchmarks.md).
        loop=os.environ.get("VOICEFORGE_EVENT_LOOP", "auto"),
        log_level=log_level,
        log_config=None,  # configure_logging: one format, secrets redacted
        # After our own drain (agent/serving.py), what little is left gets this long.
        timeout_graceful_shutdown=5,
    )


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to ``host:port`` and listening; with ``reuse_port`` (Linux),
    one of several that share the port, the kernel spreading new connections
    over them (``agent.workers``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except BaseException:
        sock.close()
        raise
    return sock


class VoiceForgeServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: Starlette,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.app = app
        self.on_started = on_started
        """Called once it listens and its lifespan started (a worker tells its parent)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit and self.on_started is not None:
            self.on_started()

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


def show_ready(progress: Callable[[str], None], host: str, port: int) -> None:
    """The lines a person (and ``loadtest.harness.ChildServer``) reads once it serves."""
    shown_host = f"[{host}]" if ":" in host else host
    base = f"{shown_host}:{port}"
    progress(f"ready: connect to ws://{base}/ws")
    progress(f"health http://{base}/healthz, metrics http://{base}/metrics")
    progress(f"try it: voiceforge talk question.wav --url ws://{base}/ws")
    progress(f"or talk in a browser: http://{base}/")


def server_secrets(settings: Settings) -> list[str | None]:
    """What no log line may show."""
    return [*settings.secrets(), os.environ.get(settings.llm_api_key_env)]


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime"}
"""Attributes every record has; the others are ``extra=`` fields (JSON logs print them)."""


class RedactSecrets(logging.Filter):
    """Defence in depth: no configured secret reaches a log line, whoever logs it:
    not in the message, an exception's traceback, a stack, or an ``extra`` field."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if self._found(text):
            record.msg, record.args = self._redact(text), None
        if record.exc_info is not None:
            # Formatted once here, redacted, and the live exception dropped: the text
            # and the JSON formatter both print ``exc_text`` then.
            record.exc_text = record.exc_text or logging.Formatter().formatException(
                record.exc_info
            )
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_FIELDS:
                setattr(record, name, self._redact_value(value))
        return True

    def _found(self, text: str) -> bool:
        return any(secret in text for secret in self.secrets)

    def _redact(self, text: str) -> str:
        if self._found(text):
            for secret in self.secrets:
                text = text.replace(secret, "[redacted]")
        return text

    def _redact_value(self, value: object) -> object:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, dict):
            return {self._redact_value(k): self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_value(item) for item in value]
        if type(value) is tuple:
            return tuple(self._redact_value(item) for item in value)
        if isinstance(value, bytes | int | float | bool) or value is None:
            return value
        # Anything else is printed by its str(): redact that.
        shown = str(value)
        return self._redact(shown) if self._found(shown) else value


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
