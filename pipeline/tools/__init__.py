"""Tools: the model's calls, run on the server or the client (issue 16; docs/tools.md)."""

from pipeline.tools.registry import ServerTool, ToolContext, ToolRegistry, server_tool, tool
from pipeline.tools.spec import (
    Executor,
    OnInterrupt,
    ToolCall,
    ToolError,
    ToolOutcome,
    ToolSpec,
    ToolStatus,
)

__all__ = [
    "Executor",
    "OnInterrupt",
    "ServerTool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
    "ToolStatus",
    "server_tool",
    "tool",
]
