"""The mel → waveform stage of S3Gen, behind one interface: HiFT (the library's) or Vocos.

A ``Vocoder`` turns S3Gen's 80-bin, 50 Hz log-mel into 24 kHz audio, 480 samples
a frame, either all at once (``vocode``) or one utterance chunk by chunk
(``stream()``, a ``VocoderStream``): each ``push`` takes the next mel frames and
returns the audio that is final, holding back the last frames' audio to
cross-fade it into the next chunk. ``final=True`` flushes.

- ``HiFTVocoder``: the library's HiFT (``s3gen.mel2wav``). It re-reads the last 8
  mel frames with the harmonic source it produced for them, so its oscillator
  phase carries on; the library's 40 ms fade-in is applied once, at the start.
- ``VocosVocoder``: ``vocos.VocosS3Gen`` (trained for S3Gen's mel), decoded with
  its receptive field as left context and the same 8-frame Hamming cross-fade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from pipeline.engines.chatterbox.vocos import HOP_LENGTH, VocosS3Gen, VocosStream, load_vocos
from pipeline.errors import ConfigurationError

VocoderName = Literal["hift", "vocos"]
VOCODERS: tuple[VocoderName, ...] = ("hift", "vocos")
CROSSFADE_FRAMES = 8
"""Mel frames re-decoded at each join; their audio (160 ms) is the cross-fade."""
CROSSFADE_SAMPLES = CROSSFADE_FRAMES * HOP_LENGTH


class VocoderStream(Protocol):
    """One utterance's mel in consecutive chunks → consecutive audio."""

    def push(self, mel: torch.Tensor, *, final: bool) -> torch.Tensor:
        """Audio (1-D float32 on the CPU) for (1, 80, T) new mel frames, less what is held back."""
        ...

    def flush(self) -> torch.Tensor:
        """The held-back audio, when the utterance ends with no more mel; then empty."""
        ...


class Vocoder(Protocol):
    name: str

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) → (B, 480·T) in one pass."""
        ...

    def stream(self) -> VocoderStream: ...


class HiFTVocoder:
    """S3Gen's own HiFT-GAN vocoder (``s3gen.mel2wav``)."""

    name = "hift"

    def __init__(self, s3gen: Any) -> None:
        self._s3gen = s3gen

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        empty = torch.zeros(1, 1, 0, device=mel.device, dtype=mel.dtype)
        audio, _ = self._s3gen.mel2wav.inference(speech_feat=mel, cache_source=empty)
        result: torch.Tensor = audio
        return result

    def stream(self) -> HiFTStream:
        return HiFTStream(self._s3gen)


class HiFTStream:
    """HiFT chunk by chunk: cached mel and harmonic source, Hamming cross-fade."""

    def __init__(self, s3gen: Any) -> None:
        self._s3gen = s3gen
        window = torch.hamming_window(2 * CROSSFADE_SAMPLES, periodic=False, dtype=torch.float32)
        self._fade_in, self._fade_out = window[:CROSSFADE_SAMPLES], window[CROSSFADE_SAMPLES:]
        self._mel_cache: torch.Tensor | None = None
        self._source_cache: torch.Tensor | None = None
        self._held_audio: torch.Tensor | None = None

    def push(self, mel: torch.Tensor, *, final: bool) -> torch.Tensor:
        hift = self._s3gen.mel2wav
        if self._mel_cache is None or self._source_cache is None:
            source_cache = torch.zeros(1, 1, 0, device=mel.device, dtype=mel.dtype)
        else:
            mel = torch.cat([self._mel_cache, mel], dim=2)
            source_cache = self._source_cache
        raw_speech, source = hift.inference(speech_feat=mel, cache_source=source_cache)
        speech: torch.Tensor = raw_speech.float().cpu()[0]
        if self._held_audio is None:
            # The library's own fade-in over the first 40 ms (HiFT's start-up transient).
            fade = self._s3gen.trim_fade.float().cpu()
            speech[: len(fade)] *= fade[: len(speech)]
        else:
            speech[:CROSSFADE_SAMPLES] = (
                speech[:CROSSFADE_SAMPLES] * self._fade_in + self._held_audio * self._fade_out
            )
        if final:
            self._held_audio = None
            return speech
        self._mel_cache = mel[:, :, -CROSSFADE_FRAMES:]
        self._source_cache = source[:, :, -CROSSFADE_SAMPLES:]
        self._held_audio = speech[-CROSSFADE_SAMPLES:].clone()
        return speech[:-CROSSFADE_SAMPLES]

    def flush(self) -> torch.Tensor:
        held = torch.zeros(0) if self._held_audio is None else self._held_audio
        self._held_audio = None
        return held


class VocosVocoder:
    """Vocos trained for S3Gen's mel (``pipeline.engines.chatterbox.vocos``)."""

    name = "vocos"

    def __init__(self, model: VocosS3Gen) -> None:
        self.model = model

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        audio: torch.Tensor = self.model(mel)
        return audio

    def stream(self) -> VocosStream:
        return VocosStream(self.model, crossfade_frames=CROSSFADE_FRAMES)


def build_vocoder(
    name: str, s3gen: Any, *, vocos_weights: str | Path | None = None
) -> HiFTVocoder | VocosVocoder:
    """The vocoder a ChatterboxTTS configuration names; HiFT is the default."""
    if name == "hift":
        return HiFTVocoder(s3gen)
    if name == "vocos":
        if vocos_weights is None:
            raise ConfigurationError(
                "vocoder='vocos' needs vocos_weights: a folder from `voiceforge train-vocoder`"
                " or a hub id (the pretrained charactr/vocos-mel-24khz reads another mel)"
            )
        device = str(next(iter(s3gen.parameters())).device)
        return VocosVocoder(load_vocos(vocos_weights, device=device))
    raise ConfigurationError(f"unknown vocoder {name!r}: choose one of {', '.join(VOCODERS)}")
