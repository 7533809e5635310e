"""One call's tool runs: which tools its model is offered, and running the calls it makes.

A call runs on the server (the registry's function, under its timeout and the
tool's concurrency bound) or on the client (``response.tool_call`` out, the
client's ``tool.result`` back, under the session's ``tool_timeout_ms``). Every
outcome, failures included, is a result the model reads: a tool that raises, times
out or gets arguments that do not fit its schema makes the agent say so, never a
failed reply.

A call id runs at most once per call, whatever happens around it: a retried or
re-planned reply that repeats an id gets the first outcome back. Each run is a task
of this object's, not of the reply that asked for it, so that a barge-in can leave a
``finish`` tool running (its result kept for history) while it cancels the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import ResponseToolCall, ResponseToolResult
from pipeline.tools.registry import ToolContext, ToolRegistry
from pipeline.tools.spec import (
    MAX_RESULT_CHARS,
    Executor,
    InvalidArguments,
    OnInterrupt,
    ToolCall,
    ToolOutcome,
    ToolSpec,
    ToolStatus,
)

logger = logging.getLogger("voiceforge.tools")

MAX_CLIENT_OUTPUT_CHARS = 16_000
"""A client's ``tool.result`` output longer than this is refused (``invalid_message``)."""


@dataclass(slots=True)
class ToolRound:
    """The calls one model turn made, and their runs (for the reply and its history)."""

    calls: list[ToolCall]
    runs: dict[str, asyncio.Task[ToolOutcome]] = field(default_factory=dict)

    def pending(self) -> bool:
        return any(not run.done() for run in self.runs.values())


class CallTools:
    """The tools of one call (``Conversation`` makes one; the reply runner uses it)."""

    def __init__(
        self, registry: ToolRegistry, context: ToolContext, emit: Any
    ) -> None:
        self.registry = registry
        self.context = context
        self._emit = emit
        self._outcomes: dict[str, asyncio.Task[ToolOutcome]] = {}
        """Every run of this call by call id: what makes a call id run only once."""
        self._waiting: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        """Client calls waiting for their ``tool.result``."""
        self.runs_started = 0

    def set_emit(self, emit: Any) -> None:
        self._emit = emit

    # ------------------------------------------------------------ what is offered

    def offered(self, client_tools: Sequence[ToolSpec], choice: str) -> list[ToolSpec]:
        """The tools the model may call on this turn; none when ``tool_choice`` is none.

        A client tool named like a server tool shadows it: the client declared it
        for this call, and it knows what it wants done.
        """
        if choice == "none":
            return []
        named = {spec.name: spec for spec in client_tools}
        server = [
            each.spec for each in self.registry.offered(self.context)
            if each.spec.name not in named
        ]
        return [*server, *named.values()]

    # ------------------------------------------------------------------- running

    def start(
        self,
        calls: Sequence[ToolCall],
        offered: Sequence[ToolSpec],
        response_id: str,
        client_timeout_s: float,
    ) -> ToolRound:
        """Start every call of one model turn (parallel calls run at once)."""
        round_ = ToolRound(list(calls))
        specs = {spec.name: spec for spec in offered}
        for call in calls:
            run = self._outcomes.get(call.call_id)
            if run is None:
                run = asyncio.create_task(
                    self._run(call, specs.get(call.name), response_id, client_timeout_s),
                    name=f"{self.context.session_id}-tool-{call.name}",
                )
                self._outcomes[call.call_id] = run
            round_.runs[call.call_id] = run
        return round_

    async def wait(self, round_: ToolRound, offered: Sequence[ToolSpec]) -> list[ToolOutcome]:
        """The round's outcomes; cancelled (a barge-in), its ``cancel`` tools stop and
        its ``finish`` tools run on (``settle`` collects them for history)."""
        try:
            await asyncio.wait(round_.runs.values())
        except asyncio.CancelledError:
            finish = {spec.name for spec in offered if spec.on_interrupt is OnInterrupt.FINISH}
            for call in round_.calls:
                if call.name not in finish:
                    round_.runs[call.call_id].cancel()
            raise
        return await self.settle(round_)

    async def settle(self, round_: ToolRound) -> list[ToolOutcome]:
        """Every call's outcome once it has one: a cancelled run reads ``cancelled``."""
        outcomes: list[ToolOutcome] = []
        for call in round_.calls:
            run = round_.runs[call.call_id]
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({run})
            if run.cancelled():
                outcomes.append(ToolOutcome(
                    call, ToolStatus.CANCELLED, "the caller interrupted before it finished"
                ))
            else:
                outcomes.append(run.result())
        return outcomes

    async def _run(
        self,
        call: ToolCall,
        spec: ToolSpec | None,
        response_id: str,
        client_timeout_s: float,
    ) -> ToolOutcome:
        self.runs_started += 1
        started = time.monotonic()
        executor = spec.executor if spec is not None else Executor.SERVER
        arguments: dict[str, Any] = {}
        invalid: str | None = None
        if spec is not None:
            # Checked before the call is announced: a client told to run a call must
            # be able to answer it, so one that does not fit is the server's to settle.
            try:
                arguments = spec.parse_arguments(call.arguments)
            except InvalidArguments as error:
                invalid, executor = str(error), Executor.SERVER
        self._emit(ResponseToolCall(
            response_id, call.call_id, call.name, call.arguments, executor.value
        ))
        status, output = ToolStatus.OK, ""
        try:
            if spec is None:
                status, output = ToolStatus.UNKNOWN_TOOL, f"there is no tool named {call.name}"
            elif invalid is not None:
                status, output = ToolStatus.INVALID_ARGUMENTS, invalid
            elif spec.executor is Executor.CLIENT:
                status, output = await self._on_client(call, client_timeout_s)
            else:
                status, output = await self._on_server(call, spec, arguments)
        except asyncio.CancelledError:
            self._result(response_id, call, ToolStatus.CANCELLED, "", started)
            raise
        outcome = ToolOutcome(
            call, status, output[:MAX_RESULT_CHARS], (time.monotonic() - started) * 1000,
            executor,
        )
        self._result(response_id, call, status, outcome.output, started)
        return outcome

    def _result(
        self, response_id: str, call: ToolCall, status: ToolStatus, output: str, started: float
    ) -> None:
        self._emit(ResponseToolResult(
            response_id, call.call_id, call.name, status.value, output,
            (time.monotonic() - started) * 1000,
        ))

    async def _on_server(
        self, call: ToolCall, spec: ToolSpec, arguments: dict[str, Any]
    ) -> tuple[ToolStatus, str]:
        server_tool = self.registry.get(call.name)
        if server_tool is None:  # offered as a server tool, so registered: a bug if not
            return ToolStatus.UNKNOWN_TOOL, f"there is no tool named {call.name}"
        try:
            async with asyncio.timeout(spec.timeout_s):
                async with self.registry.slots(call.name):
                    return ToolStatus.OK, await server_tool.run(arguments, self.context)
        except TimeoutError:
            return ToolStatus.TIMEOUT, f"{call.name} did not finish within {spec.timeout_s:g} s"
        except Exception as error:
            logger.warning(
                "session=%s tool %s raised", self.context.session_id, call.name, exc_info=True
            )
            return ToolStatus.ERROR, f"{type(error).__name__}: {error}"[:500]

    async def _on_client(self, call: ToolCall, timeout_s: float) -> tuple[ToolStatus, str]:
        waiting: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._waiting[call.call_id] = waiting
        try:
            output, is_error = await asyncio.wait_for(waiting, timeout_s)
        except TimeoutError:
            return ToolStatus.TIMEOUT, f"the client did not answer within {timeout_s:g} s"
        finally:
            self._waiting.pop(call.call_id, None)
        return (ToolStatus.ERROR if is_error else ToolStatus.OK), output

    # ------------------------------------------------------------ client answers

    def client_result(self, call_id: str, output: str, is_error: bool) -> bool:
        """A ``tool.result``; False when no client call waits under that id."""
        waiting = self._waiting.get(call_id)
        if waiting is None or waiting.done():
            return False
        waiting.set_result((output, is_error))
        return True

    def in_flight(self) -> list[asyncio.Task[ToolOutcome]]:
        return [run for run in self._outcomes.values() if not run.done()]

    async def close(self) -> None:
        """The call is over: every run still going is cancelled."""
        runs = self.in_flight()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


def history_arguments(arguments: str) -> str:
    """Arguments as history keeps them: valid JSON (a model's broken JSON would break
    the next request's chat template), the original text when it parses."""
    try:
        json.loads(arguments)
    except ValueError:
        return json.dumps({"unparsed": arguments[:500]})
    return arguments
