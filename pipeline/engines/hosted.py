"""Stand-ins for engines that run in processes of their own (process_host.py): the
server holds these, with the engine protocols of base.py, and every call crosses to
the child.

`HostedTTS` can spread utterances over several children (several processes on one
GPU under MPS, or one per GPU): each new utterance goes to the child with the fewest
requests in flight, one that is restarting gets none. A voice added or removed
reaches every child before the call returns. `HostedSTT` keeps one child, because
batching across calls (whisper_batch.py) needs every call's audio in one place.

Each stand-in offers exactly the optional protocols its engine has (`CloningTTS`,
`SegmentingSTT`): the routes check those with ``isinstance``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.base import FloatAudio, Transcript, TranscriptSegment
from pipeline.engines.process_host import EngineProcess, EngineSpec, Progress
from pipeline.errors import STTError, TTSError


class HostedTTS:
    """A TTS engine in one or more children built from one spec (`hosted_tts`)."""

    def __init__(self, hosts: Sequence[EngineProcess]) -> None:
        self._hosts = list(hosts)
        info = self._hosts[0].info
        self.name: str = info["name"]
        self.sample_rate: int = info["sample_rate"]
        self.warmed: Any = self._hosts[0].warmed
        """What the engine's ``warm_up`` returned in the (first) child."""

    @property
    def hosts(self) -> Sequence[EngineProcess]:
        return tuple(self._hosts)

    def _least_busy(self) -> EngineProcess:
        ready = [host for host in self._hosts if host.ready] or self._hosts
        return min(ready, key=lambda host: host.in_flight)

    async def synthesize(self, text: str, *, voice: str | None = None
                         ) -> AsyncGenerator[FloatAudio, None]:
        # The child is picked when the first chunk is asked for, not when the
        # generator is made: several made at once must not all see the same counts.
        chunks = self._least_busy().stream("synthesize", text, voice=voice)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def voices(self) -> Sequence[str]:
        return tuple(self._hosts[0].info.get("voices", ()))

    def unavailable(self) -> str | None:
        """None while any child serves (new utterances go to those)."""
        if any(host.ready for host in self._hosts):
            return None
        return f"the {self.name} TTS process is restarting"

    def close(self) -> None:
        for host in self._hosts:
            host.close()


class HostedCloningTTS(HostedTTS):
    """`HostedTTS` for an engine that clones voices (`CloningTTS`)."""

    @property
    def default_voice(self) -> str:
        return str(self._hosts[0].info["default_voice"])

    async def add_voice(self, name: str, reference: Path) -> None:
        """On every child, or on none: a child that fails (or is restarting) undoes
        it on the others, so no child keeps a voice the library did not store."""
        added, failures = await self._on_every_child("add_voice", name, reference)
        if failures:
            await asyncio.gather(*(host.call("remove_voice", name) for host in added),
                                 return_exceptions=True)  # fmt: skip
            raise failures[0]

    async def remove_voice(self, name: str) -> None:
        _, failures = await self._on_every_child("remove_voice", name)
        if failures:
            raise failures[0]

    async def _on_every_child(
        self, method: str, *args: Any
    ) -> tuple[list[EngineProcess], list[BaseException]]:
        """Call ``method`` on every child at once: the children where it worked, and
        the failures. (A restarted child loads the voice library's folder afresh, so
        what was stored there is on it again.)"""
        results = await asyncio.gather(
            *(host.call(method, *args) for host in self._hosts), return_exceptions=True
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        worked = [host for host, result in zip(self._hosts, results, strict=True)
                  if not isinstance(result, BaseException)]  # fmt: skip
        return worked, failures


def hosted_tts(spec: EngineSpec, *, processes: int = 1, progress: Progress = print
               ) -> HostedTTS:
    """Start ``processes`` children (each loaded and warm before the next starts) and
    return the stand-in with the protocols the engine has."""
    if processes < 1:
        raise ValueError("processes must be at least 1")
    hosts: list[EngineProcess] = []
    try:
        for index in range(processes):
            label = spec.label if processes == 1 else f"{spec.label}-{index}"
            one = EngineSpec(spec.factory, spec.kwargs, label)
            hosts.append(EngineProcess(one, error=TTSError, progress=progress))
    except BaseException:
        for host in hosts:
            host.close()
        raise
    cloning = {"add_voice", "remove_voice"} <= set(hosts[0].info["methods"])
    return (HostedCloningTTS if cloning else HostedTTS)(hosts)


class HostedSTT:
    """An STT engine in one child (`hosted_stt`)."""

    def __init__(self, host: EngineProcess) -> None:
        self._host = host
        self.name: str = self._host.info["name"]
        self.warmed: Any = self._host.warmed

    @property
    def host(self) -> EngineProcess:
        return self._host

    def unavailable(self) -> str | None:
        return None if self._host.ready else f"the {self.name} STT process is restarting"

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        result: Transcript = await self._host.call(
            "transcribe", np.ascontiguousarray(audio, dtype=np.float32)
        )
        return result

    def close(self) -> None:
        self._host.close()


class HostedSegmentingSTT(HostedSTT):
    """`HostedSTT` for an engine that also transcribes segment by segment."""

    @property
    def multilingual(self) -> bool:
        return bool(self._host.info.get("multilingual", False))

    def transcribe_segments(
        self,
        audio: FloatAudio,
        *,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        word_timestamps: bool,
    ) -> AsyncGenerator[TranscriptSegment, None]:
        return self._host.stream(
            "transcribe_segments", np.ascontiguousarray(audio, dtype=np.float32),
            language=language, prompt=prompt, temperature=temperature,
            word_timestamps=word_timestamps,
        )


def hosted_stt(spec: EngineSpec, *, progress: Progress = print) -> HostedSTT:
    """Start the child (loaded and warm) and return the stand-in with the protocols
    the engine has."""
    host = EngineProcess(spec, error=STTError, progress=progress)
    segmenting = "transcribe_segments" in host.info["methods"]
    return (HostedSegmentingSTT if segmenting else HostedSTT)(host)
