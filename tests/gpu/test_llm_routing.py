"""The gpu profile's LLM path against a real OpenAI-compatible SSE server on loopback.

vLLM aborts a request and frees its KV cache when the client closes the HTTP
stream; what we can check without it is that a barge-in (cancelling the task
that reads the stream) closes the connection promptly, and that every request
of a call carries the call's routing header.
"""

from __future__ import annotations

import asyncio

from pipeline.engines.base import ChatMessage, SessionScopedLLM
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.engines.session_routing import SessionRoutedLLM
from tests.gpu.openai_server import OpenAICompatServer

MODEL = "llama-3.3-70b"
TOKEN_INTERVAL_S = 0.05
QUESTION: list[ChatMessage] = [{"role": "user", "content": "Tell me a long story."}]


async def test_every_request_of_a_call_carries_its_session_header() -> None:
    async with OpenAICompatServer([MODEL], max_tokens=3) as server:
        llm = SessionRoutedLLM(OpenAICompatLLM(server.url, MODEL), "x-session-id")
        assert isinstance(llm, SessionScopedLLM)
        first, second = llm.for_session("sess_one"), llm.for_session("sess_two")
        try:
            for engine in (first, second, first):
                text = "".join(
                    [delta async for delta in engine.stream(QUESTION, max_tokens=8, temperature=0)]
                )
                assert text == "word0 word1 word2 "
            async for _ in llm.stream(QUESTION, max_tokens=1, temperature=0):
                pass  # outside any call: no routing key
        finally:
            await llm.aclose()
    seen = [request.headers.get("x-session-id") for request in server.requests]
    assert seen == ["sess_one", "sess_two", "sess_one", None]
    assert all(request.body["model"] == MODEL for request in server.requests)


async def test_barge_in_closes_the_stream_within_a_token_interval() -> None:
    """Cancel the reading task after 3 tokens; the server sees the socket close.

    Measured server-side: disconnect time minus cancel time (one monotonic clock,
    one process). The mechanics take a few ms (the cancel runs the generator's
    ``finally``, which closes the HTTP response and its socket); the bound is
    three token intervals so that a loaded 2-core CI machine cannot fail a
    correct implementation, while a stream left open would run on for the
    remaining ~200 tokens (10 s) and fail it by far.
    """
    async with OpenAICompatServer([MODEL], token_interval_s=TOKEN_INTERVAL_S) as server:
        llm = SessionRoutedLLM(OpenAICompatLLM(server.url, MODEL)).for_session("sess_barge")
        three_tokens = asyncio.Event()
        received: list[str] = []

        async def speak() -> None:
            async for delta in llm.stream(QUESTION, max_tokens=256, temperature=0.7):
                received.append(delta)
                if len(received) == 3:
                    three_tokens.set()

        reader = asyncio.create_task(speak())
        await asyncio.wait_for(three_tokens.wait(), timeout=30)
        cancelled_at = asyncio.get_running_loop().time()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        request = server.requests[-1]
        await asyncio.wait_for(request.finished.wait(), timeout=30)

    assert request.headers["x-session-id"] == "sess_barge"
    assert request.disconnected_at is not None, "the server streamed to the end"
    # asyncio's loop clock is time.monotonic(), the clock the server records with.
    delay = request.disconnected_at - cancelled_at
    print(f"disconnect seen {delay * 1000:.1f} ms after the cancel "
          f"(token interval {TOKEN_INTERVAL_S * 1000:.0f} ms)")  # fmt: skip
    assert 0 <= delay < 3 * TOKEN_INTERVAL_S
    assert request.tokens_sent < server.max_tokens
