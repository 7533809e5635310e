"""One spoken turn against ``/v1/realtime`` through the OpenAI Agents SDK's realtime
runner: a second Realtime client, not written here (docs/openai-compat.md).

``openai-agents`` 0.24 pins ``websockets<17`` and the project's environment has 17,
so it is not a dependency: install it into a folder of its own and put that folder
first on the path of this script only (the server keeps the project's websockets)::

    pip install --no-deps --target /tmp/agents-lib openai-agents==0.24.0 \\
        mcp==2.3.0 mcp-types==2.3.0 griffelib==2.4.1 PyJWT==2.15.1 websockets==16.1.1
    voiceforge serve &        # or make run
    PYTHONPATH=/tmp/agents-lib python -m loadtest.openai_agents_turn \\
        --url ws://127.0.0.1:8000/v1/realtime --text "What is the capital of France?"

It speaks ``--text`` with espeak-ng at 24 kHz into the session, lets the Agents SDK
drive the turn with its defaults (``semantic_vad``, transcription on, voice "ash")
and prints what it saw: the caller's transcript, the agent's, the audio received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import numpy as np

from loadtest.speech import silence, speak
from pipeline.audio import float_to_pcm16


async def one_turn(url: str, text: str, api_key: str, timeout_s: float) -> int:
    from agents.realtime import RealtimeAgent, RealtimeRunner

    agent = RealtimeAgent(name="Assistant", instructions="Answer in one short sentence.")
    runner = RealtimeRunner(agent)
    audio = float_to_pcm16(np.concatenate([speak(text, 24000), silence(1.5, 24000)]))
    received_bytes = 0
    started = time.monotonic()
    first_audio_s: float | None = None
    history: list[object] = []
    async with await runner.run(model_config={"url": url, "api_key": api_key}) as session:

        async def feed() -> None:
            for offset in range(0, len(audio), 4800):  # 100 ms at 24 kHz, in real time
                await session.send_audio(audio[offset:offset + 4800])
                await asyncio.sleep(0.1)

        feeder = asyncio.create_task(feed())
        try:
            async with asyncio.timeout(timeout_s):
                async for event in session:
                    if event.type == "audio":
                        received_bytes += len(event.audio.data)
                        if first_audio_s is None:
                            first_audio_s = time.monotonic() - started
                    elif event.type == "history_updated":
                        history = list(event.history)
                    elif event.type == "error":
                        print(f"error: {event.error}")
                    elif event.type == "agent_end":
                        break
        finally:
            await feeder
        said = [
            (item.role, part.transcript)
            for item in history
            if getattr(item, "type", "") == "message"
            for part in getattr(item, "content", [])
            if getattr(part, "transcript", None)
        ]
    for role, transcript in said:
        print(f"{role}: {transcript}")
    print(f"reply audio received: {received_bytes / 2 / 24000:.2f} s "
          f"(first at {first_audio_s or 0:.2f} s after the first byte sent)")
    return 0 if received_bytes and any(role == "assistant" for role, _ in said) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime?model=voiceforge")
    parser.add_argument("--text", default="What is the capital of France?")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    api_key = os.environ.get("VOICEFORGE_API_KEY") or "unused-on-a-keyless-server"
    return asyncio.run(one_turn(args.url, args.text, api_key, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
