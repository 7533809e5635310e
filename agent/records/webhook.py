"""The call webhook: once a call's record is complete in the database, its JSON (what
``GET /v1/calls/{id}`` answers) is POSTed to the operator's URL, signed, with
retries.

Signature (``VoiceForge-Signature: t=<unix seconds>,v1=<hex>``): HMAC-SHA256 with
the webhook secret over ``"<t>." + body``; ``verify_signature`` checks one. Each
delivery also carries ``VoiceForge-Event: call.ended`` and ``VoiceForge-Delivery:
<call id>`` (a receiver that saw that id already can ignore a retry).

Deliveries wait in a bounded queue and go out one at a time from one task, each
tried up to ``attempts`` times with doubling waits; a full queue drops the newest
and counts it. Nothing here runs on a call's path: it starts after the call ended
and its record was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from agent.records.store import RecordStore

logger = logging.getLogger("voiceforge.records")

SIGNATURE_HEADER = "VoiceForge-Signature"
MAX_BACKOFF_S = 300.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes, *, now: float | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    """A receiver's check: the signature matches and is not older than ``tolerance_s``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    except (ValueError, KeyError):
        return False
    current = time.time() if now is None else now
    return abs(current - timestamp) <= tolerance_s and hmac.compare_digest(
        expected, fields.get("v1", "")
    )


class CallWebhook:
    def __init__(
        self, url: str, secret: str, store: RecordStore, registry: CollectorRegistry, *,
        attempts: int = 6, first_retry_s: float = 1.0, timeout_s: float = 10.0,
        max_pending: int = 1000,
    ) -> None:
        self.url = url
        self._where = httpx.URL(url).host
        """What logs may name: a webhook URL's path or query often holds a token."""
        self._secret = secret
        self.store = store
        self.attempts = attempts
        self.first_retry_s = first_retry_s
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.deliveries = Counter(
            "voiceforge_call_webhook_deliveries",
            "Call webhook deliveries by outcome: delivered, failed (every attempt "
            "failed), dropped (the queue was full)",
            ["outcome"], registry=registry,
        )
        self.attempt_errors = Counter(
            "voiceforge_call_webhook_attempt_errors",
            "Webhook attempts that failed (each retried until attempts run out)",
            registry=registry,
        )

    def call_written(self, call_id: str) -> None:
        """The call ended and its record is complete: post it (soon, off this path)."""
        if len(self._pending) >= self.max_pending:
            self.deliveries.labels("dropped").inc()
            return
        self._pending.append(call_id)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voiceforge-call-webhook")

    async def stop(self, timeout_s: float) -> None:
        """Let queued deliveries go out within ``timeout_s``, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._pending:
            logger.warning("call webhook: %d deliveries not made before stopping",
                           len(self._pending))

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as http:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    call_id = self._pending[0]
                    delivered = await self._deliver(http, call_id)
                    self._pending.popleft()
                    self.deliveries.labels("delivered" if delivered else "failed").inc()
                self._idle.set()

    async def _deliver(self, http: httpx.AsyncClient, call_id: str) -> bool:
        wait_s = self.first_retry_s
        for attempt in range(1, self.attempts + 1):
            try:
                record = await self.store.get_call(call_id)
                if record is None:
                    return False  # deleted before it could be sent: nothing to say
                if await self._post(http, call_id, record):
                    return True
            except Exception as exc:  # the database or the network: both are retried
                logger.warning("call webhook: attempt %d for %s failed: %s: %s", attempt,
                               call_id, type(exc).__name__, exc)
            self.attempt_errors.inc()
            if attempt < self.attempts:
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, MAX_BACKOFF_S)
        logger.error("call webhook: giving up on %s after %d attempts", call_id, self.attempts)
        return False

    async def _post(self, http: httpx.AsyncClient, call_id: str, record: dict[str, Any]) -> bool:
        body = json.dumps(record, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            "VoiceForge-Event": "call.ended",
            "VoiceForge-Delivery": call_id,
        }
        reply = await http.post(self.url, content=body, headers=headers)
        with contextlib.suppress(Exception):
            await reply.aclose()
        if 200 <= reply.status_code < 300:
            return True
        logger.warning("call webhook: %s answered %d for %s", self._where, reply.status_code,
                       call_id)
        return False
