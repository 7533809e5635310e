"""Server-side tools: operators' async Python functions, described by their type hints.

An operator writes a module of ``@tool`` functions and names it in
``VOICEFORGE_TOOL_MODULES``; the server imports it at start-up and every call's
model may use its tools::

    from pipeline.tools import ToolContext, tool

    @tool(timeout_s=5, on_interrupt="finish")
    async def book_table(day: str, people: int, ctx: ToolContext) -> str:
        \"\"\"Book a table for the caller.\"\"\"
        ...

The argument schema comes from the signature (pydantic builds it from the type
hints and defaults), the description from the docstring; both can be given
explicitly. A parameter annotated ``ToolContext`` is not an argument: the server
passes the call's context (its id, its time zone, ending or transferring it).
Whatever the function returns is the result the model reads (a string as it is,
anything else as JSON); whatever it raises becomes an error result the model can
speak about, never a failed reply.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import pydantic

from pipeline.errors import ConfigurationError
from pipeline.tools.spec import Executor, OnInterrupt, ToolError, ToolSpec

ToolFunction = Callable[..., Awaitable[Any]]
_MARK = "__voiceforge_tool__"


class TransferUnavailable(ToolError):
    """This call's transport cannot transfer (only a phone line can)."""


@dataclass(slots=True)
class ToolContext:
    """What a server tool may know and do about the call it serves."""

    session_id: str
    timezone: str
    """The operator's time zone (``VOICEFORGE_TIMEZONE``), for times the caller hears."""
    end_requested: str | None = None
    """Set by ``end_call``: the call closes once the reply being spoken has been heard."""
    transfer_handler: Callable[[str], Awaitable[str]] | None = None
    """Set by a transport that can hand the call on (the telephony bridge)."""

    def end_call(self, reason: str = "end_call") -> None:
        self.end_requested = reason

    async def transfer(self, destination: str) -> str:
        if self.transfer_handler is None:
            raise TransferUnavailable("this call cannot be transferred")
        return await self.transfer_handler(destination)


@dataclass(frozen=True, slots=True)
class ServerTool:
    spec: ToolSpec
    function: ToolFunction
    context_parameter: str | None = None
    """The parameter that receives the ``ToolContext``, if the function takes one."""
    available: Callable[[ToolContext], bool] = field(default=lambda context: True)
    """Whether this call's model is offered the tool (``transfer_call``: phone calls)."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        kwargs = dict(arguments)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = context
        result = await self.function(**kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)


def tool(
    function: ToolFunction | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
    on_interrupt: str = "cancel",
    max_concurrency: int = 8,
    speaks_filler: bool = True,
) -> Any:
    """Mark an async function as a server tool (``@tool`` or ``@tool(...)``)."""

    def mark(func: ToolFunction) -> ToolFunction:
        setattr(func, _MARK, server_tool(
            func, name=name, description=description, parameters=parameters,
            timeout_s=timeout_s, on_interrupt=on_interrupt, max_concurrency=max_concurrency,
            speaks_filler=speaks_filler,
        ))
        return func

    return mark(function) if function is not None else mark


def server_tool(
    function: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
    on_interrupt: str = "cancel",
    max_concurrency: int = 8,
    speaks_filler: bool = True,
    available: Callable[[ToolContext], bool] | None = None,
) -> ServerTool:
    """Describe ``function`` as a tool; its schema from its type hints unless given."""
    if not inspect.iscoroutinefunction(function):
        raise ToolError(f"tool {function.__name__}: must be an async function")
    hints = get_type_hints(function)
    context_parameter: str | None = None
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        hint = hints.get(parameter.name, Any)
        if hint is ToolContext:
            context_parameter = parameter.name
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ToolError(f"tool {function.__name__}: *args and **kwargs cannot be described")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hint, default)
    if parameters is None:
        model = pydantic.create_model(f"{function.__name__}_arguments", **fields)
        derived = model.model_json_schema()
        derived.pop("title", None)
        for value in derived.get("properties", {}).values():
            value.pop("title", None)
        derived.setdefault("required", [])
        derived["additionalProperties"] = False
        parameters = derived
    doc = inspect.getdoc(function) or ""
    spec = ToolSpec(
        name=name or function.__name__,
        description=(
            description if description is not None else " ".join(doc.split("\n\n")[0].split())
        ),
        parameters=parameters,
        executor=Executor.SERVER,
        timeout_s=timeout_s,
        on_interrupt=OnInterrupt(on_interrupt),
        max_concurrency=max_concurrency,
        speaks_filler=speaks_filler,
    )
    return ServerTool(spec, function, context_parameter, available or (lambda context: True))


class ToolRegistry:
    """The server's tools, shared by every call; bounds each tool's concurrency."""

    def __init__(self, tools: Iterable[ServerTool] = (), *, timezone: str = "UTC") -> None:
        self.timezone = timezone
        """The operator's time zone: the one tools use when the caller names none."""
        self._tools: dict[str, ServerTool] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        for server_tool_ in tools:
            name = server_tool_.spec.name
            if name in self._tools:
                raise ConfigurationError(f"two server tools are named {name!r}")
            self._tools[name] = server_tool_
            self._slots[name] = asyncio.Semaphore(server_tool_.spec.max_concurrency)

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> ServerTool | None:
        return self._tools.get(name)

    def slots(self, name: str) -> asyncio.Semaphore:
        return self._slots[name]

    def offered(self, context: ToolContext) -> list[ServerTool]:
        """The tools this call's model may use."""
        return [each for each in self._tools.values() if each.available(context)]


def tools_in_modules(module_paths: Sequence[str]) -> list[ServerTool]:
    """Every ``@tool`` function of the named modules (``VOICEFORGE_TOOL_MODULES``)."""
    found: list[ServerTool] = []
    for path in module_paths:
        try:
            module = importlib.import_module(path)
        except Exception as error:
            raise ConfigurationError(f"cannot import tool module {path!r}: {error}") from error
        marked = [
            getattr(value, _MARK)
            for value in vars(module).values()
            if isinstance(getattr(value, _MARK, None), ServerTool)
        ]
        if not marked:
            raise ConfigurationError(f"tool module {path!r} has no @tool function")
        found.extend(marked)
    return found
