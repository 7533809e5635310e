"""Train Vocos for S3Gen's mel: `voiceforge train-vocoder`, `python -m pipeline.training.vocoder`.

Two stages, the Vocos recipe (``vocos.experiment.VocosExp``) without Lightning:

1. ``--stage copy``: copy-synthesis. Random segments of 24 kHz speech → Chatterbox's
   mel (``mel_features``) → Vocos → audio, against the original audio.
2. ``--stage s3gen``: fine-tuning on the mel S3Gen *predicts*. For every WAV, the
   S3 speech tokenizer gives 25 Hz tokens, the flow decoder turns them into mel
   (two frames a token, the speaker prompt from another WAV of the same folder),
   and that mel is paired with the real audio, 960 samples a token. The pairs are
   computed once into ``OUT/s3gen_pairs`` (``--chatterbox`` names the checkpoint).

Losses and discriminators are the ``vocos`` package's: ``MultiPeriodDiscriminator``,
``MultiResolutionDiscriminator``, hinge ``GeneratorLoss`` / ``DiscriminatorLoss``,
``FeatureMatchingLoss`` and ``MelSpecReconstructionLoss`` (its own 100-bin mel up
to 12 kHz, which also judges the band above S3Gen's 8 kHz). ``--pretrain-mel-steps``
trains on the mel loss alone first, as VocosExp does.

Progress is printed every ``--log-every`` steps; ``OUT/checkpoint.pt`` is written
every ``--checkpoint-every`` steps and at the end, and a later run with the same
``OUT`` resumes from it. ``OUT/vocos`` (``config.json`` + ``model.safetensors``) is
what ``ChatterboxTTS(vocoder="vocos", vocos_weights=...)`` loads.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.audio import read_wav_mono, resample
from pipeline.engines.chatterbox.s3gen_stream import MEL_FRAMES_PER_TOKEN, aligned_prompt
from pipeline.engines.chatterbox.vocos import (
    HOP_LENGTH,
    SAMPLE_RATE,
    VocosConfig,
    VocosS3Gen,
    load_vocos,
    mel_features,
)
from pipeline.errors import ConfigurationError

STAGES = ("copy", "s3gen")
CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_DIR = "vocos"
PAIRS_DIR = "s3gen_pairs"
TOKENIZER_RATE = 16_000
SAMPLES_PER_TOKEN = 2 * HOP_LENGTH

Progress = Callable[[str], None]


@dataclass(slots=True)
class TrainSettings:
    data_dir: Path
    out_dir: Path
    stage: str = "copy"
    steps: int = 1_000_000
    batch_size: int = 16
    segment_frames: int = 34
    """Mel frames per training segment (34 × 480 = 16320 samples, Vocos's ~16384)."""
    learning_rate: float = 5e-4
    warmup_steps: int = 0
    mel_loss_coeff: float = 45.0
    mrd_loss_coeff: float = 0.1
    pretrain_mel_steps: int = 0
    """Steps on the mel loss alone before the discriminators join."""
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    init_from: Path | None = None
    """Stage 2: the stage-1 export (or checkpoint folder) to start from."""
    chatterbox: Path | None = None
    """Stage 2: the Chatterbox checkpoint folder whose S3Gen predicts the mel."""
    cfm_steps: int = 10
    log_every: int = 50
    checkpoint_every: int = 1000
    workers: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    seed: int = 0


@dataclass(slots=True)
class TrainResult:
    steps_done: int
    resumed_from: int
    mel_losses: list[float] = field(default_factory=list)
    """The reconstruction loss of every step this run took."""
    export_dir: Path | None = None


def wav_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".wav", ".flac"})
    if not files:
        raise ConfigurationError(f"no .wav or .flac files under {folder}")
    return files


def read_24k(path: Path) -> np.ndarray:
    audio, rate = read_wav_mono(path)
    return resample(audio, rate, SAMPLE_RATE)


def _random_gain(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Peak-normalise to a random level between -6 and -1 dBFS (Vocos's augmentation)."""
    peak = float(np.abs(audio).max())
    if peak < 1e-6:
        return audio
    return (audio * (10 ** (rng.uniform(-6.0, -1.0) / 20) / peak)).astype(np.float32)


class CopySegments(torch.utils.data.Dataset[torch.Tensor]):
    """Random fixed-length 24 kHz segments of the WAVs (zero-padded when shorter)."""

    def __init__(self, files: Sequence[Path], segment_frames: int, length: int, seed: int) -> None:
        self.files = list(files)
        self.samples = segment_frames * HOP_LENGTH
        self.length = max(length, len(self.files))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        audio = read_24k(self.files[index % len(self.files)])
        if audio.size < self.samples:
            audio = np.pad(audio, (0, self.samples - audio.size))
        start = int(self.rng.integers(0, audio.size - self.samples + 1))
        segment = _random_gain(audio[start : start + self.samples], self.rng)
        return torch.from_numpy(np.ascontiguousarray(segment))


class PairSegments(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Aligned (S3Gen mel, real audio) segments from ``prepare_s3gen_pairs``."""

    def __init__(self, pairs: Sequence[Path], segment_frames: int, length: int, seed: int) -> None:
        self.pairs = [torch.load(p) for p in pairs]
        self.frames = segment_frames
        self.length = max(length, len(self.pairs))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index % len(self.pairs)]
        mel, audio = pair["mel"], pair["audio"]
        frames = mel.shape[-1]
        if frames < self.frames:
            pad = self.frames - frames
            # Silence in log-mel is log(1e-5), the floor of Chatterbox's mel.
            mel = torch.nn.functional.pad(mel, (0, pad), value=math.log(1e-5))
            audio = torch.nn.functional.pad(audio, (0, pad * HOP_LENGTH))
            frames = self.frames
        start = int(self.rng.integers(0, frames - self.frames + 1))
        return (
            mel[:, start : start + self.frames],
            audio[start * HOP_LENGTH : (start + self.frames) * HOP_LENGTH],
        )


def load_s3gen(checkpoint_dir: Path, device: str) -> Any:
    """The flow and tokenizer of a Chatterbox checkpoint folder (as ``from_local`` loads them)."""
    from chatterbox.models.s3gen import S3Gen
    from safetensors.torch import load_file

    s3gen = S3Gen()
    s3gen.load_state_dict(load_file(str(checkpoint_dir / "s3gen.safetensors")), strict=False)
    return s3gen.to(device).eval()


def prepare_s3gen_pairs(
    files: Sequence[Path],
    s3gen: Any,
    cache_dir: Path,
    *,
    cfm_steps: int,
    progress: Progress = print,
) -> list[Path]:
    """S3Gen-predicted mel for every file, paired with its real audio (cached on disk).

    Tokens come from S3Gen's speech tokenizer on the 16 kHz audio; the flow decoder
    predicts two mel frames per token, conditioned on another file of the same
    folder (the same speaker in LibriTTS's layout; the file itself when alone).

    The prediction is ground-truth aligned (``_aligned_flow``): the flow starts from
    the noise its own ODE maps to this file's real mel, not from fresh noise. A
    mel sampled from fresh noise is another rendition of the tokens (other pitch
    contour, other timbre details), and pairing it with this audio teaches the
    vocoder to ignore its input; the aligned one keeps the recording's content and
    carries the flow's own errors, which is what the vocoder must learn to undo.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    pairs = []
    started = time.monotonic()
    for index, path in enumerate(files):
        target = cache_dir / f"{index:07d}.pt"
        pairs.append(target)
        if target.exists():
            continue
        siblings = by_folder[path.parent]
        reference = siblings[(siblings.index(path) + 1) % len(siblings)]
        audio = read_24k(path)
        with torch.inference_mode():
            wav16 = torch.from_numpy(resample(audio, SAMPLE_RATE, TOKENIZER_RATE))[None]
            tokens, _ = s3gen.tokenizer(wav16.to(s3gen.device))
            ref_audio = read_24k(reference)[: 10 * SAMPLE_RATE]
            # An odd-length reference leaves one prompt frame over two per token;
            # the flow would then start its output a frame late (one frame short).
            ref_dict = aligned_prompt(s3gen.embed_ref(torch.from_numpy(ref_audio), SAMPLE_RATE))
            samples = MEL_FRAMES_PER_TOKEN * tokens.shape[1] * HOP_LENGTH
            real = torch.from_numpy(np.pad(audio, (0, max(0, samples - audio.size)))[:samples])
            real_mel = mel_features(real[None].to(s3gen.device))[:, :, : samples // HOP_LENGTH]
            with _aligned_flow(s3gen, ref_dict["prompt_feat"], real_mel):
                mel = s3gen(
                    tokens,
                    ref_wav=None,
                    ref_sr=None,
                    ref_dict=ref_dict,
                    finalize=True,
                    skip_vocoder=True,
                    n_cfm_timesteps=cfm_steps,
                )
        mel = mel[0].float().cpu()
        torch.save({"mel": mel, "audio": real.clone()}, target)
        if (index + 1) % 50 == 0 or index + 1 == len(files):
            rate = (index + 1) / max(time.monotonic() - started, 1e-9)
            progress(f"s3gen mel {index + 1}/{len(files)} files ({rate:.2f} files/s)")
    return pairs


@contextlib.contextmanager
def _aligned_flow(s3gen: Any, prompt_feat: torch.Tensor, real_mel: torch.Tensor) -> Iterator[None]:
    """While inside, S3Gen's flow solves from the noise that leads to ``real_mel``.

    The library's Euler solver, run over each step backwards from the real mel
    (``[prompt | real_mel]``: the prompt region's data is the prompt's own mel),
    inverts the ODE (the velocity taken at the later time, as DDIM inversion does);
    the forward solve from that noise is the flow's aligned prediction.
    """
    decoder = s3gen.flow.decoder
    solve = decoder.solve_euler
    data = torch.cat([prompt_feat.transpose(1, 2).to(real_mel), real_mel], dim=2)

    def solve_from_inverted_noise(
        x: torch.Tensor, t_span: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor,
        spks: torch.Tensor, cond: torch.Tensor, meanflow: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        if data.shape != x.shape:
            shapes = f"{tuple(data.shape)} vs the flow's {tuple(x.shape)}"
            raise ValueError(f"the real mel does not match the flow's frames: {shapes}")
        noise = data.to(x)
        for later, earlier in zip(t_span.flip(0)[:-1], t_span.flip(0)[1:], strict=True):
            step = torch.stack([later, earlier])
            noise = solve(noise, t_span=step, mu=mu, mask=mask, spks=spks, cond=cond)
        result: torch.Tensor = solve(noise, t_span=t_span, mu=mu, mask=mask, spks=spks, cond=cond)
        return result

    decoder.solve_euler = solve_from_inverted_noise
    try:
        yield
    finally:
        del decoder.solve_euler  # the class's method again


def _discriminators() -> tuple[torch.nn.Module, torch.nn.Module]:
    from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

    with warnings.catch_warnings():
        # vocos 0.1.0 builds its convolutions with torch.nn.utils.weight_norm, which
        # torch deprecates in favour of the parametrization; the layers work the same.
        warnings.filterwarnings(
            "ignore", "`torch.nn.utils.weight_norm` is deprecated", FutureWarning
        )
        return MultiPeriodDiscriminator(), MultiResolutionDiscriminator()


def _cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def _batches(loader: torch.utils.data.DataLoader[Any]) -> Iterator[Any]:
    while True:
        yield from loader


class VocoderTrainer:
    """Generator, discriminators, optimisers and the step counter of one training run."""

    def __init__(self, settings: TrainSettings) -> None:
        from vocos.loss import (
            DiscriminatorLoss,
            FeatureMatchingLoss,
            GeneratorLoss,
            MelSpecReconstructionLoss,
        )

        self.settings = settings
        device = settings.device
        torch.manual_seed(settings.seed)
        if settings.init_from is not None:
            self.model = load_vocos(settings.init_from, device=device).train()
        else:
            config = VocosConfig(settings.dim, settings.intermediate_dim, settings.num_layers)
            self.model = VocosS3Gen(config).to(device).train()
        mpd, mrd = _discriminators()
        self.mpd, self.mrd = mpd.to(device), mrd.to(device)
        self.mel_loss = MelSpecReconstructionLoss(sample_rate=SAMPLE_RATE).to(device)
        self.gen_loss, self.disc_loss = GeneratorLoss(), DiscriminatorLoss()
        self.fm_loss = FeatureMatchingLoss()
        betas = (0.8, 0.9)
        lr = settings.learning_rate
        self.opt_gen = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=betas)
        disc_params = [*self.mpd.parameters(), *self.mrd.parameters()]
        self.opt_disc = torch.optim.AdamW(disc_params, lr=lr, betas=betas)
        schedule = _cosine_with_warmup(settings.warmup_steps, settings.steps)
        self.sched_gen = torch.optim.lr_scheduler.LambdaLR(self.opt_gen, schedule)
        self.sched_disc = torch.optim.lr_scheduler.LambdaLR(self.opt_disc, schedule)
        self.step = 0

    # -- checkpoints --------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "settings": {k: str(v) for k, v in asdict(self.settings).items()},
            "config": asdict(self.model.config),
            "model": self.model.state_dict(),
            "mpd": self.mpd.state_dict(),
            "mrd": self.mrd.state_dict(),
            "opt_gen": self.opt_gen.state_dict(),
            "opt_disc": self.opt_disc.state_dict(),
            "sched_gen": self.sched_gen.state_dict(),
            "sched_disc": self.sched_disc.state_dict(),
        }

    def save_checkpoint(self, path: Path) -> None:
        partial = path.with_suffix(".partial")
        torch.save(self.state(), partial)
        os.replace(partial, path)  # a crash mid-write leaves the previous checkpoint

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.settings.device)
        if state["config"] != asdict(self.model.config):
            raise ConfigurationError(
                f"{path} holds a model of size {state['config']}, not {asdict(self.model.config)}"
            )
        self.model.load_state_dict(state["model"])
        self.mpd.load_state_dict(state["mpd"])
        self.mrd.load_state_dict(state["mrd"])
        self.opt_gen.load_state_dict(state["opt_gen"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.sched_gen.load_state_dict(state["sched_gen"])
        self.sched_disc.load_state_dict(state["sched_disc"])
        self.step = int(state["step"])

    # -- one step -----------------------------------------------------------------

    def train_step(self, mel: torch.Tensor, audio: torch.Tensor) -> dict[str, float]:
        """One discriminator and one generator update (VocosExp.training_step)."""
        use_gan = self.step >= self.settings.pretrain_mel_steps
        losses: dict[str, float] = {}
        if use_gan:
            with torch.no_grad():
                audio_hat = self.model(mel)
            real_mp, fake_mp, _, _ = self.mpd(y=audio, y_hat=audio_hat)
            real_mrd, fake_mrd, _, _ = self.mrd(y=audio, y_hat=audio_hat)
            loss_mp, real_mp_losses, _ = self.disc_loss(real_mp, fake_mp)
            loss_mrd, real_mrd_losses, _ = self.disc_loss(real_mrd, fake_mrd)
            disc = (
                loss_mp / len(real_mp_losses)
                + self.settings.mrd_loss_coeff * loss_mrd / len(real_mrd_losses)
            )
            self.opt_disc.zero_grad(set_to_none=True)
            disc.backward()
            self.opt_disc.step()
            self.sched_disc.step()
            losses["disc"] = disc.item()
        audio_hat = self.model(mel)
        mel_loss = self.mel_loss(audio_hat, audio)
        total = self.settings.mel_loss_coeff * mel_loss
        if use_gan:
            _, fake_mp, fmap_real_mp, fmap_fake_mp = self.mpd(y=audio, y_hat=audio_hat)
            _, fake_mrd, fmap_real_mrd, fmap_fake_mrd = self.mrd(y=audio, y_hat=audio_hat)
            gen_mp, gen_mp_list = self.gen_loss(fake_mp)
            gen_mrd, gen_mrd_list = self.gen_loss(fake_mrd)
            fm_mp = self.fm_loss(fmap_real_mp, fmap_fake_mp) / len(fmap_real_mp)
            fm_mrd = self.fm_loss(fmap_real_mrd, fmap_fake_mrd) / len(fmap_real_mrd)
            coeff = self.settings.mrd_loss_coeff
            adversarial = (
                gen_mp / len(gen_mp_list) + fm_mp + coeff * (gen_mrd / len(gen_mrd_list) + fm_mrd)
            )
            total = total + adversarial
            losses["adv"] = adversarial.item()
        self.opt_gen.zero_grad(set_to_none=True)
        total.backward()
        self.opt_gen.step()
        self.sched_gen.step()
        self.step += 1
        losses["mel"] = mel_loss.item()
        losses["total"] = total.item()
        return losses


def _loader(settings: TrainSettings, progress: Progress) -> torch.utils.data.DataLoader[Any]:
    files = wav_files(settings.data_dir)
    length = settings.batch_size * 8
    dataset: torch.utils.data.Dataset[Any]
    if settings.stage == "copy":
        dataset = CopySegments(files, settings.segment_frames, length, settings.seed)
    else:
        if settings.chatterbox is None:
            raise ConfigurationError("--stage s3gen needs --chatterbox (a checkpoint folder)")
        progress(f"stage s3gen: predicting mel for {len(files)} files with S3Gen")
        s3gen = load_s3gen(settings.chatterbox, settings.device)
        pairs = prepare_s3gen_pairs(
            files,
            s3gen,
            settings.out_dir / PAIRS_DIR,
            cfm_steps=settings.cfm_steps,
            progress=progress,
        )
        del s3gen
        dataset = PairSegments(pairs, settings.segment_frames, length, settings.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=settings.workers,
        drop_last=False,
    )


def train(settings: TrainSettings, progress: Progress = print) -> TrainResult:
    """Run (or resume) one stage up to ``settings.steps`` steps; export the weights."""
    if settings.stage not in STAGES:
        raise ConfigurationError(f"unknown stage {settings.stage!r}: one of {', '.join(STAGES)}")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = VocoderTrainer(settings)
    checkpoint = settings.out_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        trainer.load_checkpoint(checkpoint)
        progress(f"resuming from {checkpoint} at step {trainer.step}")
    result = TrainResult(steps_done=trainer.step, resumed_from=trainer.step)
    loader = _loader(settings, progress)
    device = settings.device
    params = sum(p.numel() for p in trainer.model.parameters())
    progress(
        f"stage {settings.stage}: Vocos {params / 1e6:.1f}M parameters on {device},"
        f" steps {trainer.step} → {settings.steps}, batch {settings.batch_size}"
    )
    started, start_step = time.monotonic(), trainer.step
    for batch in _batches(loader):
        if trainer.step >= settings.steps:
            break
        if settings.stage == "copy":
            audio = batch.to(device)
            with torch.no_grad():
                mel = mel_features(audio)
        else:
            mel, audio = batch[0].to(device), batch[1].to(device)
        losses = trainer.train_step(mel, audio)
        result.mel_losses.append(losses["mel"])
        step = trainer.step
        if step % settings.log_every == 0 or step == settings.steps:
            rate = (step - start_step) / max(time.monotonic() - started, 1e-9)
            eta = (settings.steps - step) / max(rate, 1e-9)
            shown = " ".join(f"{name} {value:.4f}" for name, value in losses.items())
            lr = trainer.sched_gen.get_last_lr()[0]
            progress(
                f"step {step}/{settings.steps} {shown} lr {lr:.2e}"
                f" {rate:.2f} steps/s eta {eta / 3600:.2f} h"
            )
        if step % settings.checkpoint_every == 0:
            trainer.save_checkpoint(checkpoint)
    trainer.save_checkpoint(checkpoint)
    result.steps_done = trainer.step
    result.export_dir = trainer.model.eval().save(settings.out_dir / EXPORT_DIR)
    progress(f"exported {result.export_dir} (load with vocos_weights={result.export_dir})")
    return result


def mel_distance(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean absolute difference of Chatterbox's log-mel of two signals (24 kHz, same length)."""
    length = min(reference.shape[-1], generated.shape[-1])
    distance = (mel_features(reference[..., :length]) - mel_features(generated[..., :length]))
    return float(distance.abs().mean())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings(Path("."), Path("."))
    parser.add_argument("data_dir", type=Path, help="folder of WAV/FLAC speech (any rate, mono)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoints and export go here")
    parser.add_argument("--stage", choices=STAGES, default="copy")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--segment-frames", type=int, default=defaults.segment_frames)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--pretrain-mel-steps", type=int, default=defaults.pretrain_mel_steps)
    parser.add_argument("--mel-loss-coeff", type=float, default=defaults.mel_loss_coeff)
    parser.add_argument("--mrd-loss-coeff", type=float, default=defaults.mrd_loss_coeff)
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--intermediate-dim", type=int, default=defaults.intermediate_dim)
    parser.add_argument("--num-layers", type=int, default=defaults.num_layers)
    parser.add_argument("--init-from", type=Path, default=None, help="stage 2: stage-1 export")
    parser.add_argument("--chatterbox", type=Path, default=None, help="stage 2: checkpoint folder")
    parser.add_argument("--cfm-steps", type=int, default=defaults.cfm_steps)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(
        data_dir=args.data_dir,
        out_dir=args.out,
        stage=args.stage,
        steps=args.steps,
        batch_size=args.batch_size,
        segment_frames=args.segment_frames,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        mel_loss_coeff=args.mel_loss_coeff,
        mrd_loss_coeff=args.mrd_loss_coeff,
        pretrain_mel_steps=args.pretrain_mel_steps,
        dim=args.dim,
        intermediate_dim=args.intermediate_dim,
        num_layers=args.num_layers,
        init_from=args.init_from,
        chatterbox=args.chatterbox,
        cfm_steps=args.cfm_steps,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """The ``train-vocoder`` command."""
    def progress(line: str) -> None:
        print(f"[train-vocoder] {line}", flush=True)

    train(settings_from_args(args), progress=progress)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m pipeline.training.vocoder",
        description="Train Vocos for S3Gen's mel (docs/vocos.md).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
