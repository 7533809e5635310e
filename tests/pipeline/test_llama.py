"""llama-cpp-python with the packaged Qwen2.5-Coder 0.5B GGUF."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from pipeline.engines.base import ChatMessage, LLMEngine
from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.errors import LLMError, ModelLoadError
from pipeline.models import ensure_default_gguf

QUESTION: list[ChatMessage] = [
    {"role": "system", "content": "You are a voice assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
LONG_ANSWER: list[ChatMessage] = [
    {"role": "user", "content": "Count from one to two hundred in words, one per line."},
]


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(ensure_default_gguf(progress=None))
    yield engine
    engine.close()


async def test_streams_a_reply(llm: LlamaCppLLM) -> None:
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert len(deltas) > 1
    assert "paris" in "".join(deltas).lower()
    assert not llm.busy


async def test_cancel_after_two_deltas_stops_generation(llm: LlamaCppLLM) -> None:
    received: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for delta in llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0):
            received.append(delta)
            if len(received) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await two.wait()
    assert llm.busy
    cancelled_at = time.perf_counter()
    seen_before_cancel = len(received)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancellation returns only once the worker has stopped, within about a token.
    assert not llm.busy
    assert time.perf_counter() - cancelled_at < 1.0
    assert len(received) == seen_before_cancel

    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert "paris" in "".join(deltas).lower()


async def test_aclose_stops_generation(llm: LlamaCppLLM) -> None:
    stream = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(stream)
    assert await anext(stream)
    await stream.aclose()
    assert not llm.busy
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_consumer_that_stops_reading_does_not_run_away(llm: LlamaCppLLM) -> None:
    """The bounded queue stalls the worker; closing the stream then ends it."""
    stream = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(stream)
    await asyncio.sleep(2.0)  # enough time for far more tokens than the queue holds
    assert llm.busy  # parked waiting for queue space, not finished
    await stream.aclose()
    assert not llm.busy


async def test_concurrent_streams_take_turns(llm: LlamaCppLLM) -> None:
    async def answer() -> str:
        return "".join([d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)])

    first, second = await asyncio.gather(answer(), answer())
    assert first == second
    assert "paris" in first.lower()


async def test_prompt_longer_than_context_is_an_llm_error(llm: LlamaCppLLM) -> None:
    huge: list[ChatMessage] = [{"role": "user", "content": "word " * 6000}]
    with pytest.raises(LLMError, match="generation failed"):
        async for _ in llm.stream(huge, max_tokens=8, temperature=0.0):
            pass
    assert not llm.busy


def test_missing_model_file() -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppLLM("/nonexistent/model.gguf")


def test_satisfies_the_seam(llm: LlamaCppLLM) -> None:
    engine: LLMEngine = llm  # checked by mypy
    assert engine.name == "llama.cpp:qwen2.5-coder-0.5b-instruct"
