"""A raw WebSocket caller: sends any frame (the SDK refuses bad ones), reads msgpack maps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from agent.protocol import SUBPROTOCOL

Message = dict[str, Any]


@dataclass
class RawSession:
    ws: ClientConnection
    created: Message
    log: list[Message] = field(default_factory=list)

    @classmethod
    async def open(cls, ws: ClientConnection) -> RawSession:
        first = msgpack.unpackb(await asyncio.wait_for(ws.recv(decode=False), 30), raw=False)
        assert first["type"] == "session.created", first
        return cls(ws, first)

    async def send(self, message: object) -> None:
        await self.ws.send(msgpack.packb(message, use_bin_type=True))

    async def wait_for(self, predicate: Callable[[Message], bool], timeout_s: float) -> Message:
        """Read (and log) frames until one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(self.ws.recv(decode=False), left)
            except TimeoutError:
                break
            message = msgpack.unpackb(frame, raw=False)
            self.log.append(message)
            if predicate(message):
                return message
        seen = [m["type"] for m in self.log]
        raise TimeoutError(f"no matching message within {timeout_s}s; saw {seen}")

    async def wait_type(self, kind: str, timeout_s: float = 30.0) -> Message:
        return await self.wait_for(lambda m: m["type"] == kind, timeout_s)

    async def say_hello(self) -> Message:
        """A typed turn, answered in full: the session is alive and serving."""
        await self.send({"type": "conversation.text", "text": "Say hello."})
        return await self.wait_type("response.done", 120)

    def errors(self) -> list[Message]:
        return [m for m in self.log if m["type"] == "error"]


def subprotocols(*extra: str) -> list[Subprotocol]:
    return [Subprotocol(name) for name in (SUBPROTOCOL, *extra)]
