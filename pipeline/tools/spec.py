"""What a tool is, what a call of it is, and whether a call's arguments fit it (sans-I/O).

A tool is described in OpenAI's ``tools`` format (a name, a description, a JSON
schema for its arguments), whoever runs it: the server (an operator's Python
function, ``pipeline/tools/registry.py``) or the client (declared in
``session.update``, answered with ``tool.result``). The model sees the same
description either way; where it runs, how long it may take and what a barge-in
does to it are the server's business.

Arguments arrive as JSON text written by a model: they are parsed and validated
against the tool's schema (``jsonschema``, Draft 2020-12) before anything runs; a
call that does not fit is answered with an error result the model can read, and
the tool never sees it.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from pipeline.errors import VoiceForgeError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for function names: vLLM's and llama.cpp's chat templates print them."""
MAX_DESCRIPTION_CHARS = 1024
MAX_ARGUMENTS_CHARS = 8192
"""Arguments longer than this are refused unread (a model looping inside a string)."""
MAX_RESULT_CHARS = 4000
"""A result is cut to this before the model reads it: the model's context is small,
and a caller hears a summary, not a document."""


class ToolError(VoiceForgeError):
    """A tool definition that cannot be used (a bad name or schema)."""


class Executor(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class OnInterrupt(enum.Enum):
    """What a barge-in during the tool's run does to it."""

    CANCEL = "cancel"
    """Stop it: its result says it was cancelled (a lookup nobody waits for)."""
    FINISH = "finish"
    """Let it finish and keep its result in history, unspoken (a booking, a payment:
    something that must not be half done, nor done twice)."""


class ToolStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"
    """The tool raised (or the client said ``is_error``): the result is its message."""
    TIMEOUT = "timeout"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNKNOWN_TOOL = "unknown_tool"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any]
    """JSON schema of the arguments object."""
    executor: Executor = Executor.SERVER
    timeout_s: float = 10.0
    on_interrupt: OnInterrupt = OnInterrupt.CANCEL
    max_concurrency: int = 8
    """Calls of this tool running at once on this server (all calls together)."""
    speaks_filler: bool = True
    """When the call is slow, the agent says a short filler while it runs."""
    validator: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not TOOL_NAME.match(self.name):
            raise ToolError(f"tool name {self.name[:80]!r}: letters, digits, _ and - only, ≤ 64")
        if len(self.description) > MAX_DESCRIPTION_CHARS:
            raise ToolError(f"tool {self.name}: description over {MAX_DESCRIPTION_CHARS} chars")
        if self.parameters.get("type") != "object":
            raise ToolError(f"tool {self.name}: parameters must be a JSON schema of type object")
        if not self.timeout_s > 0:
            raise ToolError(f"tool {self.name}: timeout_s must be positive")
        if self.max_concurrency < 1:
            raise ToolError(f"tool {self.name}: max_concurrency must be at least 1")
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as error:
            raise ToolError(f"tool {self.name}: not a valid JSON schema: {error.message}") from None
        object.__setattr__(self, "validator", jsonschema.Draft202012Validator(self.parameters))

    def openai(self) -> dict[str, Any]:
        """The definition the model reads (OpenAI's chat-completions ``tools`` entry)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """The call's arguments as an object that fits the schema; raises
        InvalidArguments saying why not (in words the model can act on)."""
        if len(arguments) > MAX_ARGUMENTS_CHARS:
            raise InvalidArguments(f"arguments longer than {MAX_ARGUMENTS_CHARS} characters")
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError) as error:
            raise InvalidArguments(f"arguments are not JSON: {str(error)[:120]}") from None
        if not isinstance(value, dict):
            raise InvalidArguments("arguments must be a JSON object")
        problem = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if problem is not None:
            where = "/".join(str(part) for part in problem.absolute_path) or "arguments"
            raise InvalidArguments(f"{where}: {problem.message[:200]}")
        return value


class InvalidArguments(VoiceForgeError):
    """A call's arguments do not fit its tool's schema."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: complete, its arguments still unparsed JSON text."""

    name: str
    arguments: str
    call_id: str = field(default_factory=lambda: new_call_id())

    def message(self) -> dict[str, Any]:
        """The ``tool_calls`` entry of the assistant message that made it."""
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call: ToolCall
    status: ToolStatus
    output: str
    """What the model reads back (cut to MAX_RESULT_CHARS)."""
    elapsed_ms: float = 0.0
    executor: Executor = Executor.SERVER


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def model_result(status: ToolStatus, output: str) -> str:
    """The text the model reads for an outcome: errors say so, so it can tell the caller."""
    output = output[:MAX_RESULT_CHARS]
    if status is ToolStatus.OK:
        return output
    return json.dumps({"error": status.value, "detail": output})


def openai_tools(specs: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [spec.openai() for spec in specs]
