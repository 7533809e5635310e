"""The voices callers add (``POST /v1/voices``), kept on disk across restarts.

One voice is two files in ``Settings.voices_dir``: ``<id>.wav`` (the reference,
24 kHz mono PCM16: what Chatterbox's voice folder loads at start-up, so a cloned
voice comes back with the server) and ``<id>.json`` (its name and creation time).
WAVs an operator put there without a ``.json`` are the operator's voices: listed
by the engine, never deleted through the API.

Nothing half-written stays: the reference is written to a hidden ``.partial``
file, handed to the engine, and only once the engine has taken it are the
metadata and then the WAV moved into place, each by an atomic rename. A failure
at any step removes what was written; ``.partial`` files a crash left behind are
removed at start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import soundfile

from pipeline.engines.base import FloatAudio
from pipeline.errors import ConfigurationError, VoiceForgeError

logger = logging.getLogger("voiceforge.voices")

REFERENCE_RATE = 24_000
MAX_VOICES = 200
"""Voices the API may add; a reference is at most ~1.4 MB (30 s), so the folder
stays under ~300 MB whatever callers do."""
MAX_NAME_CHARS = 64
_ID = re.compile(r"voice_[0-9a-f]{16}")
_PARTIAL = ".partial"


@dataclass(frozen=True, slots=True)
class StoredVoice:
    id: str
    name: str
    created_at: int


class VoiceTaker(Protocol):
    async def add_voice(self, name: str, reference: Path) -> None: ...

    async def remove_voice(self, name: str) -> None: ...


class LibraryFull(VoiceForgeError):
    """No more voices may be added."""


class VoiceLibrary:
    """The API's voices in ``folder`` (None: the library is off)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            if not self.folder.is_dir():
                raise ConfigurationError(f"VOICEFORGE_VOICES_DIR {self.folder} is not a folder")
            for stale in self.folder.glob(f".*{_PARTIAL}"):
                stale.unlink(missing_ok=True)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def voices(self) -> list[StoredVoice]:
        if self.folder is None:
            return []
        found = []
        for meta in sorted(self.folder.glob("voice_*.json")):
            voice = self._read(meta)
            if voice is not None and (self.folder / f"{voice.id}.wav").is_file():
                found.append(voice)
        return found

    def get(self, voice_id: str) -> StoredVoice | None:
        if self.folder is None or not _ID.fullmatch(voice_id):
            return None
        meta = self.folder / f"{voice_id}.json"
        voice = self._read(meta) if meta.is_file() else None
        if voice is None or not (self.folder / f"{voice_id}.wav").is_file():
            return None
        return voice

    @staticmethod
    def _read(meta: Path) -> StoredVoice | None:
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            return StoredVoice(str(data["id"]), str(data["name"]), int(data["created_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable voice metadata %s", meta.name)
            return None

    async def add(
        self, name: str, reference: FloatAudio, engine: VoiceTaker,
        write: Callable[[Callable[[], None]], Awaitable[None]],
    ) -> StoredVoice:
        """Store ``reference`` (mono at 24 kHz) as a new voice once the engine has
        prepared it (``add_voice``). ``write`` runs file I/O off the loop."""
        folder = self.folder
        assert folder is not None
        if len(self.voices()) >= MAX_VOICES:
            raise LibraryFull(f"the library holds {MAX_VOICES} voices; delete one first")
        voice = StoredVoice(f"voice_{secrets.token_hex(8)}", name, int(time.time()))
        wav = folder / f"{voice.id}.wav"
        meta = folder / f"{voice.id}.json"
        partial_wav = folder / f".{voice.id}.wav{_PARTIAL}"
        partial_meta = folder / f".{voice.id}.json{_PARTIAL}"

        def write_partial() -> None:
            # Named by hand: the file's suffix is not .wav until it is committed.
            soundfile.write(str(partial_wav), reference, REFERENCE_RATE, format="WAV",
                            subtype="PCM_16")
            _fsync(partial_wav)
            _write_synced(partial_meta, json.dumps(
                {"id": voice.id, "name": voice.name, "created_at": voice.created_at}
            ).encode())

        def commit() -> None:
            os.replace(partial_meta, meta)
            os.replace(partial_wav, wav)
            _sync_folder(folder)

        taken = False
        try:
            await write(write_partial)
            await engine.add_voice(voice.id, partial_wav)
            taken = True
            await write(commit)
        except BaseException:
            for path in (partial_wav, partial_meta, wav, meta):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            if taken:
                await engine.remove_voice(voice.id)
            raise
        return voice

    def remove(self, voice_id: str) -> None:
        """Delete the voice's files: the WAV first, so a crash leaves no voice that loads."""
        assert self.folder is not None
        (self.folder / f"{voice_id}.wav").unlink(missing_ok=True)
        (self.folder / f"{voice_id}.json").unlink(missing_ok=True)


def valid_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME_CHARS and name.isprintable() and bool(name.strip())


def _fsync(path: Path) -> None:
    with path.open("rb+") as written:
        os.fsync(written.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be synced
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
