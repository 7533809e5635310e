"""Test-run wide hooks."""

from __future__ import annotations

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close the shared real engines while the interpreter is still whole.

    Left to garbage collection at exit, llama.cpp's finaliser runs after its
    module globals are gone and prints a TypeError.
    """
    from tests.e2e.conftest import load_embedded_engines

    if load_embedded_engines.cache_info().currsize:
        engines = load_embedded_engines()
        for engine in (engines.stt, engines.llm, engines.tts):
            close = getattr(engine, "close", None)
            if close is not None:
                close()
