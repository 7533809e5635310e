"""Vocos for S3Gen's mel: features, shapes, chunked decoding, training, the engine switch.

No pretrained weights: the models are small and random, trained here for a few
hundred steps on a generated-speech clip; the Chatterbox checkpoint is the tiny
one of tests/chatterbox.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from pipeline.engines.chatterbox.vocos import (
    HOP_LENGTH,
    VocosConfig,
    VocosS3Gen,
    VocosStream,
    chunked_decode,
    load_vocos,
    mel_features,
)
from pipeline.errors import ConfigurationError, ModelLoadError

pytestmark = [
    pytest.mark.vocos,
    # resemble-perth imports pkg_resources (hence setuptools<81), which warns on import.
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning"),
    # diffusers 0.29 (pinned by chatterbox-tts) warns when S3Gen's decoder builds its layers.
    pytest.mark.filterwarnings("ignore:`LoRACompatibleLinear` is deprecated:FutureWarning"),
    # librosa.load (the library's reference-WAV loader) imports audioread, whose raw
    # backend imports the standard modules Python 3.13 removes.
    pytest.mark.filterwarnings("ignore:'(aifc|sunau|audioop)' is deprecated:DeprecationWarning"),
]

SAMPLE_RATE = 24_000
TINY = VocosConfig(dim=64, intermediate_dim=128, num_layers=3)
SENTENCE = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from tests.speech import speak

    audio = speak(SENTENCE, SAMPLE_RATE)
    return audio[: audio.size // HOP_LENGTH * HOP_LENGTH]


def _tiny_model(seed: int = 0, config: VocosConfig = TINY) -> VocosS3Gen:
    torch.manual_seed(seed)
    return VocosS3Gen(config).eval()


# -- features and shapes ----------------------------------------------------------


def test_features_are_chatterbox_s3gen_mel(speech: np.ndarray) -> None:
    """Our features are S3Gen's own mel_extractor, and that is the documented mel."""
    import librosa
    from chatterbox.models.s3gen.s3gen import S3Token2Mel
    from chatterbox.models.s3gen.utils.mel import mel_spectrogram

    audio = torch.from_numpy(speech)[None]
    ours = mel_features(audio)
    assert ours.shape == (1, 80, speech.size // HOP_LENGTH)
    assert torch.equal(ours, mel_spectrogram(audio))
    assert S3Token2Mel.__init__.__globals__["mel_spectrogram"] is mel_spectrogram

    # Written out from the definition: n_fft 1920, hop 480, 80 slaney bins from
    # 0 to 8 kHz, magnitude, natural log floored at 1e-5, 720 reflected samples each side.
    padded = np.pad(speech.astype(np.float64), 720, mode="reflect")
    spectrum = librosa.stft(
        padded, n_fft=1920, hop_length=480, win_length=1920, window="hann", center=False
    )
    magnitude = np.sqrt(np.abs(spectrum) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=1920, n_mels=80, fmin=0, fmax=8000)
    expected = np.log(np.maximum(basis @ magnitude, 1e-5))
    np.testing.assert_allclose(ours[0].numpy(), expected, atol=2e-4, rtol=0)


def test_default_model_is_the_documented_size_and_frames_become_480_samples() -> None:
    model = VocosS3Gen()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(13.9e6, rel=0.02)
    assert model.config.receptive_field_frames == 3 * 9 + 2
    tiny = _tiny_model()
    with torch.no_grad():
        for frames in (1, 7, 50):
            assert tiny(torch.randn(3, 80, frames)).shape == (3, HOP_LENGTH * frames)


# -- chunked decoding -------------------------------------------------------------


def test_receptive_field_bounds_what_one_mel_frame_changes() -> None:
    model = _tiny_model()
    field = TINY.receptive_field_frames
    mel = torch.randn(1, 80, 90)
    changed = mel.clone()
    changed[..., 45] += 3.0
    with torch.no_grad():
        diff = (model(changed) - model(mel)).abs().reshape(90, HOP_LENGTH).amax(dim=1)
    assert diff[45] > 0
    assert torch.all(diff[: 45 - field] == 0) and torch.all(diff[45 + field + 1 :] == 0)


def test_chunked_decode_equals_the_whole_decode() -> None:
    model = _tiny_model()
    mel = torch.randn(2, 80, 123)
    with torch.no_grad():
        whole = model(mel)
        for chunk in (1, 17, 50):
            torch.testing.assert_close(chunked_decode(model, mel, chunk), whole, atol=1e-5, rtol=0)
        short_context = chunked_decode(model, mel, 17, context_frames=2)
    assert (short_context - whole).abs().max() > 1e-3, "less context than the field differs"


def test_vocos_stream_equals_the_whole_decode_inside_chunks() -> None:
    model = _tiny_model()
    field = TINY.receptive_field_frames
    mel = torch.randn(1, 80, 200)
    sizes = [20, 50, 50, 50, 30]
    with torch.no_grad():
        whole = model(mel)[0]
        stream = VocosStream(model, crossfade_frames=8)
        pieces, start = [], 0
        for size in sizes:
            pieces.append(stream.push(mel[..., start : start + size], final=start + size == 200))
            start += size
    audio = torch.cat(pieces)
    assert audio.shape == whole.shape, "every frame is emitted exactly once"
    error = (audio - whole).abs().reshape(200, HOP_LENGTH).amax(dim=1)
    ends = np.cumsum(sizes)[:-1]
    interior = [
        frame for frame in range(200) if all(not (end - field <= frame < end + 1) for end in ends)
    ]
    assert len(interior) > 60
    assert error[interior].max() < 1e-5
    assert torch.isfinite(audio).all()


# -- training ---------------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    data_dir: Path
    out_dir: Path
    export: Path
    initial_loss: float
    final_loss: float
    log: list[str]


def _reconstruction_loss(model: Any, clip: torch.Tensor) -> float:
    from vocos.loss import MelSpecReconstructionLoss

    with torch.no_grad():
        return float(MelSpecReconstructionLoss(SAMPLE_RATE)(model(mel_features(clip)), clip))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, speech: np.ndarray) -> Trained:
    from pipeline.training.vocoder import TrainSettings, train

    root = tmp_path_factory.mktemp("vocos")
    data_dir = root / "data" / "speaker"
    data_dir.mkdir(parents=True)
    soundfile.write(data_dir / "a.wav", speech[: SAMPLE_RATE * 3], SAMPLE_RATE)
    soundfile.write(data_dir / "b.wav", speech[SAMPLE_RATE * 3 :], SAMPLE_RATE)
    settings = TrainSettings(
        data_dir=root / "data",
        out_dir=root / "copy",
        steps=300,
        batch_size=4,
        segment_frames=16,
        learning_rate=2e-3,
        pretrain_mel_steps=300,  # the adversarial steps run in the resume test
        dim=TINY.dim,
        intermediate_dim=TINY.intermediate_dim,
        num_layers=TINY.num_layers,
        log_every=100,
        checkpoint_every=150,
        device="cpu",
    )
    log: list[str] = []
    clip = torch.from_numpy(speech)[None]
    initial = _reconstruction_loss(_tiny_model(seed=settings.seed), clip)
    result = train(settings, progress=log.append)
    assert result.export_dir is not None and result.steps_done == 300
    final = _reconstruction_loss(load_vocos(result.export_dir), clip)
    return Trained(root / "data", root / "copy", result.export_dir, initial, final, log)


def test_copy_synthesis_training_lowers_the_mel_loss(trained: Trained) -> None:
    assert trained.final_loss < 0.7 * trained.initial_loss, trained
    assert any(line.startswith("step 300/300") for line in trained.log), trained.log
    assert (trained.out_dir / "checkpoint.pt").exists()
    assert sorted(p.name for p in trained.export.iterdir()) == ["config.json", "model.safetensors"]


def test_training_resumes_from_its_checkpoint_with_the_discriminators(trained: Trained) -> None:
    from pipeline.training.vocoder import TrainSettings, train

    log: list[str] = []
    settings = TrainSettings(
        data_dir=trained.data_dir,
        out_dir=trained.out_dir,
        steps=302,
        batch_size=2,
        segment_frames=16,
        pretrain_mel_steps=300,
        dim=TINY.dim,
        intermediate_dim=TINY.intermediate_dim,
        num_layers=TINY.num_layers,
        log_every=1,
        device="cpu",
    )
    result = train(settings, progress=log.append)
    assert result.resumed_from == 300 and result.steps_done == 302
    assert any("resuming" in line and "step 300" in line for line in log), log
    adversarial = [line for line in log if line.startswith("step 30")]
    assert len(adversarial) == 2 and all("disc" in line and "adv" in line for line in adversarial)


# -- stage 2 and the engine (the tiny Chatterbox checkpoint) ----------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from tests.chatterbox.tiny_model import write_checkpoint, write_reference_wav

    root = tmp_path_factory.mktemp("chatterbox")
    config = write_checkpoint(root / "checkpoint", write_reference_wav(root / "builtin.wav"))
    return root / "checkpoint", config


def test_s3gen_fine_tuning_runs_on_predicted_mel(
    trained: Trained, checkpoint: tuple[Path, Any], tmp_path: Path
) -> None:
    """Random weights: only the mechanics (tokens → flow mel ↔ real audio, 2 frames a token)."""
    from pipeline.training.vocoder import PAIRS_DIR, TrainSettings, train

    settings = TrainSettings(
        data_dir=trained.data_dir,
        out_dir=tmp_path / "s3gen",
        stage="s3gen",
        chatterbox=checkpoint[0],
        init_from=trained.export,
        cfm_steps=2,
        steps=3,
        batch_size=2,
        segment_frames=16,
        pretrain_mel_steps=3,
        dim=TINY.dim,
        intermediate_dim=TINY.intermediate_dim,
        num_layers=TINY.num_layers,
        log_every=1,
        device="cpu",
    )
    result = train(settings, progress=lambda line: None)
    assert result.steps_done == 3 and all(np.isfinite(result.mel_losses))
    pairs = sorted((settings.out_dir / PAIRS_DIR).iterdir())
    assert len(pairs) == 2
    for path, seconds in zip(pairs, (3.0, None), strict=True):
        pair = torch.load(path)
        frames = pair["mel"].shape[-1]
        assert pair["mel"].shape[0] == 80 and frames % 2 == 0
        assert pair["audio"].shape == (frames * HOP_LENGTH,)
        if seconds is not None:  # 25 tokens a second from the 16 kHz tokenizer
            assert abs(frames - 50 * seconds) <= 2


@pytest.fixture(scope="module")
def engines(
    trained: Trained, checkpoint: tuple[Path, Any]
) -> Iterator[dict[str, Any]]:
    from pipeline.engines.chatterbox import ChatterboxTTS

    common: dict[str, Any] = dict(
        device="cpu",
        t3_config=checkpoint[1],
        first_chunk_tokens=8,
        chunk_tokens=12,
        left_context_tokens=12,
        cfm_steps=2,
        max_new_tokens=40,
        seed=1234,
    )
    built = {
        "hift": ChatterboxTTS(checkpoint[0], **common),
        "vocos": ChatterboxTTS(
            checkpoint[0], vocoder="vocos", vocos_weights=trained.export, **common
        ),
    }
    yield built
    for engine in built.values():
        engine.close()


@pytest.mark.parametrize("name", ["hift", "vocos"])
async def test_engine_streams_through_the_configured_vocoder(
    engines: dict[str, Any], name: str
) -> None:
    engine = engines[name]
    assert engine.vocoder.name == name
    chunks = [chunk async for chunk in engine.synthesize_chunks("Hello there, how are you?")]
    progress = engine.last_progress
    assert progress.finished and len(chunks) >= 3
    audio = np.concatenate([chunk.audio for chunk in chunks])
    assert audio.size == 960 * len(progress.speech_tokens), "each frame exactly once"
    assert np.isfinite(audio).all() and np.sqrt(np.mean(audio**2)) > 1e-4


async def test_the_two_vocoders_voice_the_same_tokens_differently(
    engines: dict[str, Any],
) -> None:
    """Same seed, same tokens and mel; only the vocoder differs."""
    audio = {}
    for name, engine in engines.items():
        chunks = [chunk async for chunk in engine.synthesize_chunks("Same words.")]
        audio[name] = (np.concatenate([c.audio for c in chunks]), engine.last_progress)
    (hift, hift_progress), (vocos, vocos_progress) = audio["hift"], audio["vocos"]
    assert hift_progress.speech_tokens == vocos_progress.speech_tokens
    assert hift.shape == vocos.shape
    assert not np.allclose(hift, vocos, atol=1e-3)


def test_vocoder_configuration_errors_are_loud(checkpoint: tuple[Path, Any]) -> None:
    from pipeline.engines.chatterbox import ChatterboxTTS

    with pytest.raises(ConfigurationError, match="unknown vocoder"):
        ChatterboxTTS(checkpoint[0], device="cpu", vocoder="wavenet")
    with pytest.raises(ConfigurationError, match="vocos_weights"):
        ChatterboxTTS(checkpoint[0], device="cpu", vocoder="vocos")
    with pytest.raises(ModelLoadError, match="cannot load Vocos weights"):
        load_vocos(checkpoint[0] / "no-such-folder")


def test_voiceforge_train_vocoder_command(trained: Trained, tmp_path: Path) -> None:
    from agent.cli import main

    out = tmp_path / "cli"
    arguments = ["train-vocoder", str(trained.data_dir), "--out", str(out), "--steps", "2"]
    arguments += ["--batch-size", "2", "--pretrain-mel-steps", "2", "--device", "cpu"]
    arguments += ["--dim", "32", "--intermediate-dim", "64", "--num-layers", "1"]
    assert main(arguments) == 0
    assert load_vocos(out / "vocos").config == VocosConfig(32, 64, 1)
    assert main(["train-vocoder", str(tmp_path / "empty"), "--out", str(out)]) == 2


@pytest.fixture(scope="module")
def random_s3gen() -> Any:
    from chatterbox.models.s3gen import S3Gen

    torch.manual_seed(0)
    return S3Gen().eval()


def test_s3gen_pairs_with_an_odd_length_reference_are_frame_aligned(
    random_s3gen: Any, tmp_path: Path
) -> None:
    """A reference whose mel has one frame more than twice its tokens (25440
    samples: 53 frames, 26 tokens) made the flow cut its output one frame late:
    the mel was 2·T − 1 frames, its frame j the audio's frame j + 1. The pair must
    be 2 frames per token, starting with the file's first frame."""
    from chatterbox.models.s3gen import S3Gen

    from pipeline.audio import resample
    from pipeline.training.vocoder import TOKENIZER_RATE, prepare_s3gen_pairs, read_24k

    torch.manual_seed(0)
    s3gen = S3Gen().eval()
    wav = tmp_path / "speaker" / "odd.wav"
    wav.parent.mkdir()
    rng = np.random.default_rng(3)
    soundfile.write(wav, (0.1 * rng.standard_normal(25_440)).astype(np.float32), SAMPLE_RATE)
    with torch.inference_mode():
        reference = s3gen.embed_ref(torch.from_numpy(read_24k(wav)), SAMPLE_RATE)
        assert reference["prompt_feat"].shape[1] == 2 * reference["prompt_token"].shape[1] + 1
        wav16 = torch.from_numpy(
            resample(read_24k(wav), SAMPLE_RATE, TOKENIZER_RATE)
        )[None]
        tokens, _ = s3gen.tokenizer(wav16)
    [path] = prepare_s3gen_pairs(
        [wav], s3gen, tmp_path / "pairs", cfm_steps=2, progress=lambda line: None
    )
    pair = torch.load(path)
    assert pair["mel"].shape[-1] == 2 * tokens.shape[1]
    assert pair["audio"].shape == (2 * tokens.shape[1] * HOP_LENGTH,)
    # The real audio from its first sample (zero-padded to the tokens' length).
    real = torch.from_numpy(read_24k(wav))
    assert torch.equal(pair["audio"][: real.shape[0]], real)
    assert not pair["audio"][real.shape[0] :].any()


def test_s3gen_pairs_follow_the_real_audio_not_a_fresh_sample(
    random_s3gen: Any, tmp_path: Path
) -> None:
    """Stage 2 pairs the flow's mel with the real audio, so the mel must be the
    flow's rendition of *this* recording (solved from the noise its ODE maps to
    the real mel), not an independent sample of the same tokens."""
    from pipeline.audio import resample
    from pipeline.engines.chatterbox.s3gen_stream import aligned_prompt
    from pipeline.training.vocoder import TOKENIZER_RATE, prepare_s3gen_pairs, read_24k

    s3gen = random_s3gen
    folder = tmp_path / "speaker"
    folder.mkdir()
    rng = np.random.default_rng(4)
    t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
    for name, pitch in (("a.wav", 120.0), ("b.wav", 190.0)):
        tone = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 6)) * 0.2
        noisy = tone + 0.01 * rng.standard_normal(t.size)
        soundfile.write(folder / name, noisy.astype(np.float32), SAMPLE_RATE)
    [first, _] = prepare_s3gen_pairs(
        [folder / "a.wav", folder / "b.wav"], s3gen, tmp_path / "pairs", cfm_steps=2,
        progress=lambda line: None,
    )  # fmt: skip
    assert "solve_euler" not in vars(s3gen.flow.decoder), "the solver hook outlived the pairs"
    pair = torch.load(first)
    real_mel = mel_features(pair["audio"][None])[0, :, : pair["mel"].shape[-1]]

    # The same tokens and prompt, solved from fresh noise: what the pairs were before.
    with torch.inference_mode():
        wav16 = resample(read_24k(folder / "a.wav"), SAMPLE_RATE, TOKENIZER_RATE)
        tokens, _ = s3gen.tokenizer(torch.from_numpy(wav16)[None])
        reference = torch.from_numpy(read_24k(folder / "b.wav"))
        ref_dict = aligned_prompt(s3gen.embed_ref(reference, SAMPLE_RATE))
        sampled = s3gen(
            tokens, ref_wav=None, ref_sr=None, ref_dict=ref_dict, finalize=True,
            skip_vocoder=True, n_cfm_timesteps=2,
        )[0]  # fmt: skip
    aligned_error = float((pair["mel"] - real_mel).abs().mean())
    sampled_error = float((sampled - real_mel).abs().mean())
    assert aligned_error < 0.5 * sampled_error, (aligned_error, sampled_error)
