"""``voiceforge serve``, ``voiceforge talk`` and ``voiceforge train-vocoder``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import VoiceForgeError

if TYPE_CHECKING:
    from agent.config import Settings


def _serve(args: argparse.Namespace) -> int:
    from agent.config import Settings
    from agent.serving import configure_logging, server_secrets

    settings = Settings.from_env()
    if args.host is not None:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.profile is not None:
        settings.profile = args.profile
    settings.validate()
    log_format = args.log_format or os.environ.get("VOICEFORGE_LOG_FORMAT", "text")
    configure_logging(log_format, server_secrets(settings), logging.INFO)
    workers = args.workers if args.workers is not None else _env_workers(settings.profile)
    if workers < 1:
        raise VoiceForgeError(f"--workers must be at least 1, got {workers}")
    if workers > 1:
        from agent.workers import Supervisor

        return Supervisor(settings, workers, log_format).run()
    return _serve_one(settings)


def _env_workers(profile: str) -> int:
    from agent.workers import default_workers

    raw = os.environ.get("VOICEFORGE_WORKERS", "")
    if not raw:
        return default_workers(profile)
    try:
        return int(raw)
    except ValueError:
        raise VoiceForgeError(f"VOICEFORGE_WORKERS must be an integer, got {raw!r}") from None


def _serve_one(settings: Settings) -> int:
    """One process: the engines, the app and uvicorn, as ``--workers 1``."""
    from agent.profiles import build_engines
    from agent.server import create_app
    from agent.serving import VoiceForgeServer, listening_socket, server_config, show_ready

    def progress(line: str) -> None:
        print(f"[voiceforge] {line}", flush=True)

    progress(f"profile {settings.profile}: loading models")
    engines = build_engines(settings, progress)
    app = create_app(settings, engines, own_engines=True)
    # Bind first so port 0 works and the address printed is the one in use.
    sock = listening_socket(settings.host, settings.port)
    show_ready(progress, settings.host, sock.getsockname()[1])
    VoiceForgeServer(server_config(app, settings), app).run(sockets=[sock])
    return 0


async def _talk(args: argparse.Namespace) -> int:
    from agent.client import VoiceForgeClient
    from pipeline.audio import SUPPORTED_SAMPLE_RATES, read_wav_mono, write_wav
    from pipeline.events import (
        ErrorEvent,
        ResponseAudioDelta,
        ResponseDone,
        ResponseTextDelta,
        TranscriptFinal,
        TurnIgnored,
    )

    audio, rate = read_wav_mono(args.wav)
    api_key = os.environ.get("VOICEFORGE_API_KEY")
    async with await VoiceForgeClient.connect(args.url, api_key=api_key) as client:
        rate_to_use = rate if rate in SUPPORTED_SAMPLE_RATES else 16000
        await client.update_session(input_sample_rate=rate_to_use, output_sample_rate=24000)
        print(f"connected: session {client.session_id}; streaming {args.wav} "
              f"({len(audio) / rate:.1f}s at {rate} Hz) in real time")
        client.start_reporting()
        silence = np.zeros(int(rate_to_use * 0.02), dtype=np.float32)

        async def microphone() -> None:
            await client.stream_audio(audio, rate)
            # Keep the line open with silence, as a microphone would.
            while True:
                await client.stream_audio(np.tile(silence, 10), rate_to_use)

        mic = asyncio.create_task(microphone())
        reply: list[bytes] = []
        text = ""
        out_rate = int(client.session["output_sample_rate"])
        deadline = time.monotonic() + len(audio) / rate + args.timeout
        exit_code = 1
        try:
            while time.monotonic() < deadline:
                try:
                    event = await client.next_event(deadline - time.monotonic())
                except TimeoutError:
                    break
                if event is None:
                    print("connection closed by the server", file=sys.stderr)
                    break
                if isinstance(event, TranscriptFinal):
                    print(f"you:   {event.text}")
                elif isinstance(event, ResponseTextDelta):
                    text += event.delta
                elif isinstance(event, ResponseAudioDelta):
                    reply.append(event.audio)
                    out_rate = event.sample_rate
                elif isinstance(event, TurnIgnored):
                    print(f"turn ignored: {event.reason}")
                elif isinstance(event, ErrorEvent):
                    print(f"error {event.code}: {event.message}", file=sys.stderr)
                elif isinstance(event, ResponseDone):
                    print(f"agent: {text.strip()}")
                    print(f"status: {event.status.value}")
                    for name, value in event.timings.items():
                        print(f"  {name:36s} {value:8.0f}")
                    exit_code = 0 if event.status.value == "completed" else 1
                    break
            else:
                print("timed out waiting for a reply", file=sys.stderr)
        finally:
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)
    pcm = b"".join(reply)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    write_wav(args.out, samples, out_rate)
    print(f"reply audio: {len(samples) / out_rate:.2f}s written to {args.out}")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voiceforge", description="VoiceForge voice agent")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the agent server")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--profile", default=None, help="engine profile (default: embedded)")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes sharing the port, each with its own engines "
                       "(default: VOICEFORGE_WORKERS, else the usable cores for the bench "
                       "profile and 1 for the model profiles; docs/deploy-k8s.md)")
    serve.add_argument("--log-format", choices=("text", "json"), default=None,
                       help="log lines as text or one JSON object each "
                       "(default: VOICEFORGE_LOG_FORMAT or text)")
    talk = commands.add_parser("talk", help="be a caller: send a WAV, hear the reply")
    talk.add_argument("wav", type=Path, help="speech to send (any common rate, mono or stereo)")
    talk.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    talk.add_argument("--out", type=Path, default=Path("reply.wav"), help="where to save the reply")
    talk.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    # Listed here; its own parser (pipeline.training.vocoder) reads its arguments, so
    # serve and talk never import the training code.
    commands.add_parser("train-vocoder", help="train Vocos for Chatterbox (docs/vocos.md)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-vocoder"]:
        from pipeline.training.vocoder import main as train_vocoder

        try:
            return train_vocoder(argv[1:], prog="voiceforge train-vocoder")
        except VoiceForgeError as exc:
            print(f"voiceforge: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if args.command != "serve":  # serve sets up its own (format, redaction)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        return asyncio.run(_talk(args))
    except VoiceForgeError as exc:
        print(f"voiceforge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"voiceforge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
