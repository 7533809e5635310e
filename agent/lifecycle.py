"""The limits every call lives under, whatever its transport, and the graceful drain.

``sweep`` runs twice a second for the server's lifetime; ``drain`` is the first half
of a shutdown (``agent.serving``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from agent.state import AppState, BridgeCall, Call

logger = logging.getLogger("voiceforge.lifecycle")

SWEEP_INTERVAL_S = 0.5
"""How often idle, call-length and slow-client limits are checked."""
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


def _hang_up(state: AppState, call: BridgeCall, reason: str) -> None:
    state.metrics.disconnects.labels(reason).inc()
    if state.records is not None:
        state.records.ending(call.conversation.session_id, reason)
    logger.info("session=%s closed: %s", call.conversation.session_id, reason,
                extra={"session_id": call.conversation.session_id})
    state.spawn(call.close())


def sweep_once(state: AppState, now: float) -> None:
    """Check every call once; a check that fails (a bug) is logged and skips only
    that call."""
    settings = state.settings
    for session in list(state.sessions):
        try:
            session.check_limits(now)
        except Exception:
            logger.exception("sweeper: checking a call failed; it is ended, sweeping goes on")
            with contextlib.suppress(Exception):
                session.finish(CLOSE_INTERNAL_ERROR, "error", flush=False)
    for call in list(state.bridge_sessions):
        try:
            if now - call.started_at > settings.max_call_s:
                state.bridge_sessions.discard(call)  # hung up once, not at every sweep
                _hang_up(state, call, "call_time_limit")
            elif now - call.last_input_at > settings.idle_timeout_s:
                state.bridge_sessions.discard(call)
                _hang_up(state, call, "idle_timeout")
        except Exception:
            logger.exception("sweeper: checking a call failed; sweeping goes on")


async def sweep(state: AppState) -> None:
    """Enforce per-call time limits for every call, twice a second, for the
    server's lifetime."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        sweep_once(state, time.monotonic())


def _stop_new_turns(calls: list[Call]) -> None:
    for call in calls:
        call.conversation.accepting_turns = False


async def drain(state: AppState, timeout_s: float) -> None:
    """Graceful shutdown, first half: take no new call or turn on any transport,
    let replies in flight finish (up to ``timeout_s``, then cancel them, so each
    still ends with ``response.done`` and history as heard), tell every caller,
    hang up (``/ws`` with 1001)."""
    state.draining = True
    calls = state.calls()
    _stop_new_turns(calls)
    busy = [call for call in calls if call.conversation.busy]
    logger.info("draining: %d calls, %d with a reply in flight", len(calls), len(busy))
    busy = await _wait_idle(busy, timeout_s)
    if busy:
        logger.warning("drain deadline: cancelling %d replies in flight", len(busy))
        for call in busy:
            call.conversation.cancel_response(reason="server_shutdown")
        await _wait_idle(busy, 2.0)  # the played report, then response.done
    for session in list(state.sessions):
        session.error(
            "server_shutting_down", "the server is restarting; reconnect to continue",
            category="transient", throttled=False,
        )
        session.finish(CLOSE_GOING_AWAY, "server_shutdown", flush=True)
    await hang_up_all(state)
    for _ in range(100):  # their handlers finish within 2 s each (close timeout)
        if not (state.sessions or state.bridge_sessions or state.slots):
            break
        await asyncio.sleep(0.05)


async def hang_up_all(state: AppState) -> None:
    """Hang up every bridge call, and every call still being set up."""
    jobs: list[Awaitable[None]] = [call.close() for call in list(state.bridge_sessions)]
    jobs += [slot.hang_up() for slot in list(state.slots) if slot.hang_up is not None]
    await asyncio.gather(*jobs, return_exceptions=True)


async def _wait_idle(calls: list[Call], timeout_s: float) -> list[Call]:
    """Wait until no turn or reply is in flight in ``calls``; the busy ones left."""
    for _ in range(max(1, int(timeout_s / 0.05))):
        calls = [call for call in calls if call.conversation.busy]
        if not calls:
            break
        await asyncio.sleep(0.05)
    return [call for call in calls if call.conversation.busy]
