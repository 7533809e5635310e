"""A reply that calls tools: model turns, tool runs between them, the filler, history.

The response runner (pipeline/responses.py) asks ``ReplyTools.text`` for its text
instead of one LLM stream. Each model turn streams as speech; when it ends in tool
calls, they run (in parallel), the model reads their results and speaks on, up to
``MAX_TOOL_ROUNDS`` model turns that call tools. The voice rules around that:

* a speculative (held) reply never runs a tool: it waits for its turn to be
  confirmed first, so a caller who was not done speaking never sets anything off;
* a slow tool gets one short filler ("One moment.") once per reply, and only when
  the caller has heard nothing of the reply yet;
* a barge-in cancels the speech; each tool then stops or, if it is a ``finish``
  tool, runs to its end, and history keeps its call and result (unspoken);
* history holds each call and its result, then the part of the answer the caller
  heard (the response runner writes that part).
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.engines.base import ChatMessage
from pipeline.history import History
from pipeline.tools.executor import CallTools, ToolRound, history_arguments
from pipeline.tools.spec import ToolCall, ToolSpec, model_result

MAX_TOOL_ROUNDS = 3
"""Model turns of one reply that may call tools (at most; an engine may allow fewer);
the next one must answer in words, so a model that keeps calling still speaks."""
FILLERS = ("One moment.", "Let me check.", "Just a second.")


@dataclass(frozen=True, slots=True)
class SpeakNow:
    """Say ``text`` as a chunk of its own, now (after what the model said so far)."""

    text: str


Request = Callable[
    [list[ChatMessage], list[dict[str, Any]], str], AsyncIterator[str | ToolCall]
]


class ReplyTools:
    """The tool side of one reply."""

    def __init__(
        self,
        tools: CallTools,
        offered: Sequence[ToolSpec],
        *,
        response_id: str,
        client_timeout_s: float,
        filler_after_s: float,
        timings: dict[str, float],
        max_rounds: int = MAX_TOOL_ROUNDS,
    ) -> None:
        self._tools = tools
        self.offered = list(offered)
        self._response_id = response_id
        self._client_timeout_s = client_timeout_s
        self._filler_after_s = filler_after_s
        self._timings = timings
        self._max_rounds = max(0, min(max_rounds, MAX_TOOL_ROUNDS))
        self.rounds: list[ToolRound] = []

    async def text(
        self,
        messages: list[ChatMessage],
        request: Request,
        released: asyncio.Event,
        said_nothing: Callable[[], bool],
    ) -> AsyncGenerator[str | SpeakNow, None]:
        """The reply's text: model turns, with tool runs between them."""
        definitions = [spec.openai() for spec in self.offered]
        made: set[tuple[str, str]] = set()
        rounds = 0
        while True:
            # Past its rounds the model still sees the tools (the prompt it has
            # cached) but must answer in words.
            choice = "auto" if rounds < self._max_rounds else "none"
            calls: list[ToolCall] = []
            async for item in request(messages, definitions, choice):
                if isinstance(item, ToolCall):
                    calls.append(item)
                else:
                    yield item
            if not calls or choice == "none":
                return
            rounds += 1
            repeated = {_same(call) for call in calls} <= made
            made |= {_same(call) for call in calls}
            if repeated:
                # The same call again: a model going round in circles. It has the
                # results; it answers now.
                rounds = self._max_rounds
                self._timings["tool_repeats"] = self._timings.get("tool_repeats", 0.0) + 1
                continue
            # A held reply's turn may not be over: nothing runs before it is.
            await released.wait()
            started = time.monotonic()
            round_ = self._tools.start(
                calls, self.offered, self._response_id, self._client_timeout_s
            )
            self.rounds.append(round_)
            waiting = asyncio.ensure_future(self._tools.wait(round_, self.offered))
            try:
                yield SpeakNow("")  # what the model said before the call is spoken now
                done, _ = await asyncio.wait({waiting}, timeout=self._filler_after_s)
                if not done and self._wants_filler(calls) and said_nothing():
                    self._timings["tool_filler"] = 1.0
                    yield SpeakNow(FILLERS[zlib.crc32(calls[0].call_id.encode()) % len(FILLERS)])
                outcomes = await waiting
            finally:
                if not waiting.done():
                    waiting.cancel()  # a barge-in: cancel tools stop, finish tools go on
            self._timings["tool_ms"] = self._timings.get("tool_ms", 0.0) + (
                time.monotonic() - started
            ) * 1000
            self._timings["tool_calls"] = self._timings.get("tool_calls", 0.0) + len(calls)
            messages = [
                *messages,
                ChatMessage(role="assistant", content="", tool_calls=_call_entries(calls)),
                *(
                    ChatMessage(
                        role="tool",
                        content=model_result(outcome.status, outcome.output),
                        tool_call_id=outcome.call.call_id,
                    )
                    for outcome in outcomes
                ),
            ]

    def _wants_filler(self, calls: list[ToolCall]) -> bool:
        if "tool_filler" in self._timings or self._filler_after_s <= 0:
            return False
        specs = {spec.name: spec for spec in self.offered}
        return any(
            (spec := specs.get(call.name)) is not None and spec.speaks_filler for call in calls
        )

    async def write_history(self, history: History) -> None:
        """Each round's calls and results, in order, once every run has an outcome
        (a ``finish`` tool left running by a barge-in is waited for, within its
        timeout)."""
        for round_ in self.rounds:
            outcomes = await self._tools.settle(round_)
            history.add_tool_round(
                _call_entries(round_.calls),
                [model_result(outcome.status, outcome.output) for outcome in outcomes],
            )
        self.rounds = []


def _same(call: ToolCall) -> tuple[str, str]:
    """What makes two calls the same request: the name and the arguments' meaning."""
    try:
        arguments = json.dumps(json.loads(call.arguments), sort_keys=True)
    except ValueError:
        arguments = call.arguments
    return call.name, arguments


def _call_entries(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    entries = []
    for call in calls:
        entry = call.message()
        entry["function"]["arguments"] = history_arguments(call.arguments)
        entries.append(entry)
    return entries
