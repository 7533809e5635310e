"""Latency of ``/v1/realtime`` against ``/ws`` for the same turns, interleaved.

    python -m loadtest.realtime_vs_ws --pairs 6 [--url ws://127.0.0.1:8000/ws]

Without ``--url`` it starts ``voiceforge serve --port 0`` (the embedded default) in
its own process. Each question (loadtest.latency's list) is asked once over each
protocol, each in a fresh session, the order alternating question by question so
that both see the same machine load: over ``/ws`` by the SDK's open-microphone
caller (16 kHz, 20 ms frames, as ``python -m loadtest.latency``), over
``/v1/realtime`` by the official ``openai`` SDK (24 kHz, the API's default, 20 ms
appends, then silence like an open microphone). The figure is the client's: from
the acoustic end of the speech sent (the last 10 ms above −45 dBFS,
``loadtest.acoustic``) to the first reply audio received.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from typing import Any

import numpy as np

from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller, acoustic_end_ms
from loadtest.latency import QUESTIONS, one_turn, percentile, spawned_server
from loadtest.speech import silence, speak
from pipeline.audio import float_to_pcm16

FRAME_S = 0.02
REALTIME_RATE = 24000


async def ws_turn(url: str, question: str) -> tuple[float | None, str]:
    async with await VoiceForgeClient.connect(url) as client:
        caller = TimedCaller(client)
        caller.start()
        try:
            turn = await one_turn(client, caller, question, speak(question))
        finally:
            await caller.stop()
    return turn.acoustic_ms, turn.reply


async def realtime_turn(http: str, question: str) -> tuple[float | None, str]:
    from openai import AsyncOpenAI

    speech = speak(question, REALTIME_RATE)
    end_ms = acoustic_end_ms(speech, REALTIME_RATE)
    frame = int(REALTIME_RATE * FRAME_S)
    # The speech, then up to 60 s of silence: the microphone stays open until the reply.
    pcm = float_to_pcm16(np.concatenate([speech, silence(60.0, REALTIME_RATE)]))
    end_sent_at: float | None = None
    first_audio_at: float | None = None
    reply = ""
    client = AsyncOpenAI(base_url=f"{http}/v1", api_key="unused-on-a-keyless-server")
    async with client.realtime.connect(model="voiceforge") as conn:

        async def microphone() -> None:
            nonlocal end_sent_at
            started = time.monotonic()
            for index, offset in enumerate(range(0, len(pcm) // 2, frame)):
                chunk = pcm[offset * 2:(offset + frame) * 2]
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                if end_sent_at is None and end_ms is not None and (
                    (offset + frame) * 1000 / REALTIME_RATE >= end_ms
                ):
                    end_sent_at = time.monotonic()
                # Paced by the clock, not by the sleeps: no drift over the turn.
                await asyncio.sleep(max(0.0, started + (index + 1) * FRAME_S - time.monotonic()))

        mic = asyncio.create_task(microphone())
        try:
            async with asyncio.timeout(120):
                async for event in conn:
                    if event.type == "response.output_audio.delta" and first_audio_at is None:
                        first_audio_at = time.monotonic()
                    elif event.type == "response.done":
                        reply = event.response.output[0].content[0].transcript or ""
                        break
                    elif event.type == "error":
                        print(f"  error: {event.error}")
        finally:
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)
    if end_sent_at is None or first_audio_at is None:
        return None, reply
    return (first_audio_at - end_sent_at) * 1000.0, reply


async def compare(url: str, pairs: int) -> dict[str, list[float]]:
    http = url.replace("ws://", "http://").removesuffix("/ws")
    results: dict[str, list[float]] = {"ws": [], "realtime": []}
    questions = (QUESTIONS * (pairs // len(QUESTIONS) + 1))[:pairs]
    for number, question in enumerate(questions):
        order = ("ws", "realtime") if number % 2 == 0 else ("realtime", "ws")
        for transport in order:
            if transport == "ws":
                latency, reply = await ws_turn(url, question)
            else:
                latency, reply = await realtime_turn(http, question)
            if latency is not None:
                results[transport].append(latency)
            print(f"  {number + 1:2d} {transport:8s} {latency or float('nan'):7.0f} ms  "
                  f"{question!r} -> {reply[:50]!r}", flush=True)
            await asyncio.sleep(0.5)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--url", default=None, help="a running server's /ws URL")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    def run(url: str) -> dict[str, list[float]]:
        return asyncio.run(compare(url, args.pairs))

    if args.url:
        results = run(args.url)
    else:
        with spawned_server(echo=False) as url:
            results = run(url)
    summary: dict[str, Any] = {}
    for transport, values in results.items():
        summary[transport] = {"turns": len(values), "p50_ms": round(percentile(values, 50)),
                              "max_ms": round(max(values)) if values else None}
        print(f"{transport:8s} turns {len(values)}  acoustic end → first audio: "
              f"p50 {percentile(values, 50):.0f} ms, max {max(values or [float('nan')]):.0f} ms")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary, "turns": results}, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
