"""What an error message may tell a caller: not where the server's engines live.

Engine errors are written for operators: ``cannot reach http://10.0.3.7:8001/v1:
ConnectError(...)``, a model path, a Python ``repr``. The caller needs the code,
the category and the gist; the address, path and repr stay in the server log
(``agent.bridge.observe`` logs every error event in full). Sans-I/O.
"""

from __future__ import annotations

import re

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_ADDRESS = re.compile(
    r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\])(?::\d{1,5})?(?![\w.])"
)
_HOST_PORT = re.compile(r"(?<![\w.:/])[a-zA-Z][\w-]*(?:\.[\w-]+)*:\d{2,5}(?!\w)")
_PATH = re.compile(r"(?<![\w.:/])(?:~|\.{1,2})?/(?:[\w.@+-]+/)+[\w.@+-]*")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"]+")
_OBJECT_REPR = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>")
_CALL_REPR = re.compile(
    r"\b([A-Z]\w*(?:Error|Exception|Warning|Exit|Timeout))\((?:[^()]|\([^()]*\))*\)"
)
MAX_CHARS = 300
"""Longer messages are cut: what a caller needs fits in a sentence or two."""


def caller_safe(message: str) -> str:
    """``message`` without URLs, network addresses, file paths or Python reprs."""
    # Cut first: the patterns then cost the same for any input, however long.
    text = _URL.sub("<internal address>", message[: MAX_CHARS * 4])
    text = _ADDRESS.sub("<internal address>", text)
    text = _HOST_PORT.sub("<internal address>", text)
    text = _WINDOWS_PATH.sub("<path>", text)
    text = _PATH.sub("<path>", text)
    text = _OBJECT_REPR.sub("<object>", text)
    text = _CALL_REPR.sub(r"\1", text)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
