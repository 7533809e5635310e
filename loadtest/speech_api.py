"""How early ``/v1/audio/speech`` starts to answer: time to the first audio byte and
to the last, per response format, driven by the official ``openai`` SDK against a
running server (``voiceforge serve``), formats interleaved run by run.

    python -m loadtest.speech_api --url http://127.0.0.1:8000/v1 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import openai

TEXT = (
    "Thanks for calling. Your order shipped this morning and should arrive on Thursday. "
    "If nobody is home, the driver will leave it with a neighbour. "
    "Is there anything else I can help you with today?"
)


def measure(client: openai.OpenAI, fmt: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt  # type: ignore[arg-type]
    ) as response:
        for chunk in response.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total) * 1000.0, total * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--formats", default="wav,mp3,opus")
    args = parser.parse_args(argv)
    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    key = os.environ.get("VOICEFORGE_API_KEY") or "none"
    results: dict[str, list[tuple[float, float]]] = {fmt: [] for fmt in formats}
    with openai.OpenAI(api_key=key, base_url=args.url, max_retries=0, timeout=120) as client:
        measure(client, formats[0])  # warm-up, not counted
        for _ in range(args.runs):
            for fmt in formats:
                results[fmt].append(measure(client, fmt))
    print(f"{len(TEXT)} characters, {args.runs} runs per format (median, min-max), ms")
    print("format  first byte            last byte")
    for fmt, runs in results.items():
        firsts = [first for first, _ in runs]
        totals = [total for _, total in runs]
        print(f"{fmt:<7} {statistics.median(firsts):6.0f} ({min(firsts):.0f}-{max(firsts):.0f})"
              f"      {statistics.median(totals):6.0f} ({min(totals):.0f}-{max(totals):.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
