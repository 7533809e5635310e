"""Vocos for S3Gen's mel: 80 bins at 50 Hz in, 24 kHz audio out (480 samples a frame).

The model is the ``vocos`` package's ``VocosBackbone`` (ConvNeXt blocks over mel
frames) and ``ISTFTHead`` (per-frame complex spectrum, inverse STFT with
n_fft 1920 and hop 480, "same" padding): T mel frames give exactly 480·T samples.
Its features are Chatterbox's own mel function (``mel_features``), the one S3Gen's
flow decoder was trained to predict, so training and inference see the same mel.

The pretrained ``charactr/vocos-mel-24khz`` cannot be used: it reads 100 bins at
hop 256 up to 12 kHz. These weights come from ``pipeline.training.vocoder``.

Streaming (``chunked_decode``, ``VocosStream``) relies on the receptive field: an
output frame depends on ``receptive_field_frames`` mel frames either side, so a
chunk decoded with that much context on both sides equals the whole decode.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ModelLoadError

SAMPLE_RATE = 24_000
N_MELS = 80
N_FFT = 1920
HOP_LENGTH = 480
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMBED_KERNEL = 7
"""VocosBackbone's input convolution and every ConvNeXt depthwise convolution."""


@dataclass(frozen=True, slots=True)
class VocosConfig:
    """The backbone's size; the head is fixed by S3Gen's mel (n_fft 1920, hop 480)."""

    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8

    @property
    def receptive_field_frames(self) -> int:
        """Mel frames on each side that reach one output frame's samples.

        The input convolution and each ConvNeXt block see ±3 frames (kernel 7);
        the inverse STFT overlaps each 480-sample slot with the windows of ±2
        frames (a 1920-sample window spans 4 hops, centred by 720 samples).
        """
        half_kernel = EMBED_KERNEL // 2
        istft_overlap = math.ceil((N_FFT // 2 - HOP_LENGTH // 2) / HOP_LENGTH)
        return half_kernel * (1 + self.num_layers) + istft_overlap


def mel_features(audio: torch.Tensor) -> torch.Tensor:
    """Chatterbox's S3Gen mel, (B, L) or (L,) at 24 kHz → (B, 80, L // 480).

    Exactly ``chatterbox.models.s3gen.utils.mel.mel_spectrogram`` (n_fft 1920,
    hop 480, 80 slaney bins from 0 to 8 kHz, natural log): S3Gen's own
    ``mel_extractor``.
    """
    from chatterbox.models.s3gen.utils.mel import mel_spectrogram

    features: torch.Tensor = mel_spectrogram(audio)
    return features


class VocosS3Gen(torch.nn.Module):
    """VocosBackbone(80, dim, intermediate_dim, num_layers) + ISTFTHead(dim, 1920, 480)."""

    def __init__(self, config: VocosConfig | None = None) -> None:
        from vocos.heads import ISTFTHead
        from vocos.models import VocosBackbone

        super().__init__()
        self.config = config or VocosConfig()
        self.backbone = VocosBackbone(
            input_channels=N_MELS,
            dim=self.config.dim,
            intermediate_dim=self.config.intermediate_dim,
            num_layers=self.config.num_layers,
        )
        self.head = ISTFTHead(
            dim=self.config.dim, n_fft=N_FFT, hop_length=HOP_LENGTH, padding="same"
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) log-mel → (B, 480·T) audio."""
        audio: torch.Tensor = self.head(self.backbone(mel))
        return audio

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (what ``load_vocos`` reads)."""
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        return path


def load_vocos(source: str | Path, device: str = "cpu") -> VocosS3Gen:
    """Vocos weights from a local folder, or a hub id (downloaded with huggingface_hub).

    The folder (or hub repository) holds ``config.json`` and ``model.safetensors``
    as written by ``VocosS3Gen.save`` / ``voiceforge train-vocoder --export``.
    """
    from safetensors.torch import load_file

    folder = Path(source)
    try:
        if folder.is_dir():
            config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        elif folder.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1:
            # Not a folder, and not shaped like a hub id ("owner/name"): a wrong path.
            raise FileNotFoundError(f"{source} is not a folder with {CONFIG_FILE}, {WEIGHTS_FILE}")
        else:
            from huggingface_hub import hf_hub_download

            config_path = Path(hf_hub_download(str(source), CONFIG_FILE))
            weights_path = Path(hf_hub_download(str(source), WEIGHTS_FILE))
        config = VocosConfig(**json.loads(config_path.read_text()))
        model = VocosS3Gen(config)
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as error:
        raise ModelLoadError(f"cannot load Vocos weights from {source}: {error}") from error
    return model.to(device).eval()


def chunked_decode(
    model: VocosS3Gen, mel: torch.Tensor, chunk_frames: int, context_frames: int | None = None
) -> torch.Tensor:
    """Decode (B, 80, T) in chunks of ``chunk_frames`` with context on both sides.

    With ``context_frames`` at least the receptive field (the default), the result
    equals ``model(mel)``: every chunk sees what the whole decode sees around it.
    """
    context = model.config.receptive_field_frames if context_frames is None else context_frames
    frames = mel.shape[-1]
    pieces = []
    for start in range(0, frames, chunk_frames):
        end = min(frames, start + chunk_frames)
        lo, hi = max(0, start - context), min(frames, end + context)
        audio: torch.Tensor = model(mel[..., lo:hi])
        pieces.append(audio[..., (start - lo) * HOP_LENGTH : (end - lo) * HOP_LENGTH])
    return torch.cat(pieces, dim=-1)


class VocosStream:
    """One utterance's mel, chunk by chunk, as audio that joins like the HiFT path.

    Each chunk is decoded after ``receptive_field_frames`` mel frames of the
    previous chunks (its left context, so its start is what a whole decode gives).
    Its last ``crossfade_frames`` frames lack right context: their audio is held
    back and Hamming-cross-faded into the next chunk's re-decode of the same
    frames. Every frame's 480 samples are emitted exactly once.
    """

    def __init__(self, model: VocosS3Gen, *, crossfade_frames: int = 8) -> None:
        self._model = model
        self._context = model.config.receptive_field_frames
        self._crossfade_frames = crossfade_frames
        self._history: torch.Tensor | None = None
        self._held_audio: torch.Tensor | None = None

    def push(self, mel: torch.Tensor, *, final: bool) -> torch.Tensor:
        """Audio (1-D, float32, CPU) for the new (1, 80, T) mel, less what is held back."""
        held = self._held_audio
        held_frames = 0 if held is None else held.shape[0] // HOP_LENGTH
        history = self._history
        context = 0 if history is None else history.shape[-1]
        window = mel if history is None else torch.cat([history, mel], dim=-1)
        audio: torch.Tensor = self._model(window)[0].float().cpu()
        # The held-back frames, decoded again with more context, then the new frames.
        speech = audio[(context - held_frames) * HOP_LENGTH :]
        if held is not None:
            fade_in, fade_out = _hamming_halves(held.shape[0])
            speech[: held.shape[0]] = speech[: held.shape[0]] * fade_in + held * fade_out
        if final:
            self._held_audio = None
            return speech
        hold = min(self._crossfade_frames, speech.shape[0] // HOP_LENGTH)
        self._history = window[..., -(self._context + hold) :]
        cut = hold * HOP_LENGTH
        self._held_audio = speech[speech.shape[0] - cut :].clone() if hold else None
        return speech[: speech.shape[0] - cut]

    def flush(self) -> torch.Tensor:
        """The held-back audio, when the utterance ends with no more mel; then empty."""
        held = torch.zeros(0) if self._held_audio is None else self._held_audio
        self._held_audio = None
        return held


def _hamming_halves(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.hamming_window(2 * samples, periodic=False, dtype=torch.float32)
    return window[:samples], window[samples:]


def vocos_parameters(model: Any) -> int:
    """Parameter count (for logs and docs)."""
    return sum(int(p.numel()) for p in model.parameters())
