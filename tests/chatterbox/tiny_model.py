"""The chatterbox tests' marks and helpers, around the small random-weight
Chatterbox of loadtest/chatterbox_tiny.py (re-exported here: the tests import it
from this module)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest

from loadtest.chatterbox_tiny import (  # re-exported: the tests import them from here
    CHUNK_TOKENS,
    FIRST_CHUNK_TOKENS,
    SAMPLE_RATE,
    TINY_LLAMA,
    tiny_engine,
    tiny_t3_config,
    write_checkpoint,
    write_reference_wav,
    write_tokenizer,
)

__all__ = [
    "CHATTERBOX_MARKS", "CHUNK_TOKENS", "FIRST_CHUNK_TOKENS", "SAMPLE_RATE", "TEXT",
    "TINY_LLAMA", "TinyChatterbox", "speech_tokens", "text_tokens", "tiny_engine",
    "tiny_t3", "tiny_t3_config", "tiny_token_engine", "tiny_turbo_t3_config",
    "write_checkpoint", "write_reference_wav", "write_tokenizer", "write_turbo_checkpoint",
]  # fmt: skip

CHATTERBOX_MARKS = [
    pytest.mark.chatterbox,
    # resemble-perth imports pkg_resources (hence setuptools<81), which warns on import.
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning"),
    # diffusers 0.29 (pinned by chatterbox-tts) warns when S3Gen's decoder builds its layers.
    pytest.mark.filterwarnings("ignore:`LoRACompatibleLinear` is deprecated:FutureWarning"),
    # librosa.load (the library's reference-WAV loader) imports audioread, whose raw
    # backend imports the standard modules Python 3.13 removes.
    pytest.mark.filterwarnings("ignore:'(aifc|sunau|audioop)' is deprecated:DeprecationWarning"),
]
"""Every chatterbox test module's marks: the marker and the library's import warnings."""

TEXT = "Hello there, how are you?"


@dataclasses.dataclass
class TinyChatterbox:
    """The engine the streaming tests share (conftest.py) and where it came from."""

    checkpoint: Path
    voices_dir: Path
    t3_config: Any
    engine: Any


async def speech_tokens(engine: Any, text: str, voice: str | None = None) -> list[int]:
    """Synthesise ``text`` whole; the speech tokens T3 sampled for it. The audio
    itself differs run to run (HiFT draws its source noise from torch's global
    generator); a seeded engine's tokens do not."""
    async for _ in engine.synthesize(text, voice=voice):
        pass
    return list(engine.last_progress.speech_tokens)


def tiny_token_engine(checkpoint: Path | str, voices_dir: Path | str) -> Any:
    """`tiny_engine` that also answers ``speech_tokens(text, voice)``, for a child
    process's tokens to be compared with the server's."""
    engine = tiny_engine(checkpoint, voices_dir)
    engine.speech_tokens = functools.partial(speech_tokens, engine)
    return engine


TINY_GPT2 = "voiceforge_test_tiny_gpt2"


def tiny_turbo_t3_config() -> Any:
    """Turbo's T3 hyper-parameters (``ChatterboxTurboTTS.from_local``), on a 2-layer GPT-2."""
    from chatterbox.models.t3.llama_configs import GPT2_MEDIUM_CONFIG, LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    LLAMA_CONFIGS[TINY_GPT2] = {
        **GPT2_MEDIUM_CONFIG,
        "n_embd": 64,
        "hidden_size": 64,
        "n_head": 4,
        "n_layer": 2,
        "n_positions": 2048,
        "n_ctx": 2048,
        "vocab_size": 704,
    }
    config = T3Config(text_tokens_dict_size=704)
    config.llama_config_name = TINY_GPT2
    config.speech_tokens_dict_size = 6563
    config.input_pos_emb = None
    config.speech_cond_prompt_len = 30
    config.use_perceiver_resampler = False
    config.emotion_adv = False
    return config


def write_turbo_checkpoint(folder: Path, voice_wav: Path) -> Any:
    """A Turbo checkpoint folder (``from_local``'s files) with random weights; its T3Config.

    ``voice_wav`` must be longer than 5 s (Turbo's ``prepare_conditionals`` insists).
    """
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts_turbo import ChatterboxTurboTTS
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from pipeline.engines.chatterbox.loading import _unshared

    torch.manual_seed(0)
    config = tiny_turbo_t3_config()
    folder.mkdir(parents=True, exist_ok=True)
    characters = Tokenizer.from_file(str(write_tokenizer(folder.parent / "turbo-chars.json")))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=characters, eos_token="[STOP]", pad_token="[STOP]", unk_token="[UNK]"
    )
    tokenizer.save_pretrained(folder)
    t3 = T3(config).eval()
    with torch.no_grad():
        # As in write_checkpoint: sharp logits, and a stop token never sampled.
        t3.speech_head.weight.mul_(4.0)
        t3.speech_head.weight[config.stop_speech_token].zero_()
        t3.speech_head.bias[config.stop_speech_token] = -1e4
    model = ChatterboxTurboTTS(
        t3, S3Gen(meanflow=True).eval(), VoiceEncoder().eval(), tokenizer, "cpu"
    )
    # Loudness normalisation multiplies float32 audio by a numpy float64 gain, which
    # numpy 2 (this test environment; the GPU image has 1.26) promotes to float64,
    # and the S3 tokenizer then fails on it: the random voice is left as it is.
    model.prepare_conditionals(str(voice_wav), norm_loudness=False)
    save_file(_unshared(t3.state_dict()), folder / "t3_turbo_v1.safetensors")
    save_file(_unshared(model.s3gen.state_dict()), folder / "s3gen_meanflow.safetensors")
    save_file(_unshared(model.ve.state_dict()), folder / "ve.safetensors")
    model.conds.save(folder / "conds.pt")
    return config


def tiny_t3(*, turbo: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """A random-weight T3 alone (standard or Turbo), and a voice's ``T3Cond`` for it:
    enough to decode speech tokens without S3Gen. The stop token is never sampled,
    as in ``write_checkpoint``."""
    import torch
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    torch.manual_seed(seed)
    config = tiny_turbo_t3_config() if turbo else tiny_t3_config()
    t3 = T3(config).eval()
    with torch.no_grad():
        t3.speech_head.weight.mul_(4.0)
        t3.speech_head.weight[config.stop_speech_token].zero_()
        if turbo:
            t3.speech_head.bias[config.stop_speech_token] = -1e4
    cond = T3Cond(
        speaker_emb=torch.randn(1, config.speaker_embed_size),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, config.speech_cond_prompt_len)),
        emotion_adv=None if turbo else 0.5 * torch.ones(1, 1, 1),
    )
    return t3, cond


def text_tokens(t3: Any, length: int, *, seed: int, turbo: bool = False) -> Any:
    """(1, length) random text tokens, framed by start / stop unless ``turbo``."""
    import torch

    ids = torch.randint(4, 60, (1, length), generator=torch.Generator().manual_seed(seed))
    if turbo:
        return ids
    hp = t3.hp
    framed = torch.nn.functional.pad(ids, (1, 0), value=hp.start_text_token)
    return torch.nn.functional.pad(framed, (0, 1), value=hp.stop_text_token)
