"""The voice library: a folder of reference WAVs, one voice per file (``name.wav``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigurationError

BUILTIN_VOICE = "default"
"""The checkpoint's own voice (its ``conds.pt``), when it has one."""


def voice_library(folder: str | Path | None) -> dict[str, Path]:
    """Map voice names (file stems) to reference WAVs, sorted by name.

    A missing folder is a configuration error; an empty one is allowed (the
    checkpoint's built-in voice may be enough).
    """
    if folder is None:
        return {}
    path = Path(folder)
    if not path.is_dir():
        raise ConfigurationError(f"Chatterbox voice folder {path} does not exist")
    voices = {wav.stem: wav for wav in sorted(path.glob("*.wav")) if wav.is_file()}
    if BUILTIN_VOICE in voices:
        raise ConfigurationError(
            f"{voices[BUILTIN_VOICE]}: {BUILTIN_VOICE!r} names the checkpoint's built-in voice;"
            " rename the file"
        )
    return voices
