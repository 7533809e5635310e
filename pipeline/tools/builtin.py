"""The tools every call can use unless the operator turns them off (``VOICEFORGE_TOOLS``).

``get_current_time`` answers "what time is it" with the operator's clock, in the
operator's time zone (``VOICEFORGE_TIMEZONE``); ``end_call`` lets the agent
hang up after its goodbye (the transport closes the call once the goodbye has been
heard); ``transfer_call`` is offered only on a call whose transport can hand it on
(the telephony bridge, when the operator configured destinations).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from pipeline.errors import ConfigurationError
from pipeline.tools.registry import ServerTool, ToolContext, server_tool


async def get_current_time(ctx: ToolContext) -> str:
    """Tells the current time and date. Only for questions about the time, the day or
    the date."""
    # No time-zone argument: the embedded 0.5B model fills any argument it is offered
    # (a zone for every "what time is it", a city for "how many legs has a spider"),
    # measured on a development set (docs/decisions.md). The operator's zone is what
    # a caller of the operator's line means; a tool for other zones is the operator's.
    name = ctx.timezone
    try:
        zone = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name[:64]!r}") from None
    now = dt.datetime.now(zone)
    clock = now.strftime("%I:%M %p").lstrip("0")
    return f"It is {clock} on {now:%A}, {now:%B} {now.day}, {now.year} ({name} time)."


async def end_call(ctx: ToolContext) -> str:
    """Hang up the phone. Only when the caller says goodbye."""
    ctx.end_call("end_call")
    return "The call ends after your reply: say a short, friendly goodbye."


async def transfer_call(ctx: ToolContext, destination: str) -> str:
    """Transfer the caller to a person or department, when they ask for one."""
    said = await ctx.transfer(destination)
    ctx.end_call("transfer")  # the line goes once the agent has said so
    return said


BUILTIN: dict[str, ServerTool] = {
    "get_current_time": server_tool(get_current_time, timeout_s=2.0, speaks_filler=False),
    "end_call": server_tool(end_call, timeout_s=2.0, speaks_filler=False),
    "transfer_call": server_tool(
        transfer_call,
        timeout_s=15.0,
        on_interrupt="finish",
        available=lambda ctx: ctx.transfer_handler is not None,
    ),
}
DEFAULT_BUILTIN = ("get_current_time", "end_call", "transfer_call")


def builtin_tools(names: list[str] | tuple[str, ...]) -> list[ServerTool]:
    unknown = [name for name in names if name not in BUILTIN]
    if unknown:
        raise ConfigurationError(
            f"unknown built-in tool(s) {', '.join(unknown)}; known: {', '.join(BUILTIN)}"
        )
    return [BUILTIN[name] for name in names]
