"""A small Chatterbox with random weights, written as a checkpoint folder: the
streaming tests' engine (tests/chatterbox) and the speech-process benchmark's
(loadtest/speech_process.py).

The real library code throughout: a T3 with a tiny Llama backbone (registered in
the library's LLAMA_CONFIGS under its own name), the library's full-size S3Gen
and VoiceEncoder, and a character-level tokenizer.json. Random weights exercise
the streaming mechanics, not the sound. Its T3 step is a few hundred tiny kernels
and as many Python calls, the regime of a T3 step on a GPU (launch-bound), which is
what the benchmark needs.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

FIRST_CHUNK_TOKENS = 8
CHUNK_TOKENS = 12
TINY_LLAMA = "voiceforge_test_tiny"
SAMPLE_RATE = 24_000


def tiny_t3_config() -> Any:
    from chatterbox.models.t3.llama_configs import LLAMA_520M_CONFIG_DICT, LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    LLAMA_CONFIGS[TINY_LLAMA] = {
        **LLAMA_520M_CONFIG_DICT,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 16,
        "torch_dtype": "float32",
    }
    config = T3Config.english_only()
    config.llama_config_name = TINY_LLAMA
    config.use_perceiver_resampler = False  # its width is hard-coded to 1024
    config.speech_cond_prompt_len = 30
    return config


def write_tokenizer(path: Path) -> Path:
    """Characters plus the specials the library's EnTokenizer expects; ids < 704."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]"]
    vocab = {token: index for index, token in enumerate(specials)}
    for char in string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[[A-Z]+\]|."), behavior="isolated")
    tokenizer.save(str(path))
    return path


def write_reference_wav(path: Path, *, seconds: float = 1.5, pitch_hz: float = 140.0) -> Path:
    """A voiced-sounding reference: a harmonic tone with a slow vibrato and some breath."""
    rng = np.random.default_rng(int(pitch_hz))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(pitch_hz * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / SAMPLE_RATE
    audio = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2
    audio = audio + 0.01 * rng.standard_normal(t.size)
    soundfile.write(path, audio.astype(np.float32), SAMPLE_RATE)
    return path


def write_checkpoint(folder: Path, voice_wav: Path) -> Any:
    """Build the model, give it a built-in voice, save it; return the T3Config."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS

    from pipeline.engines.chatterbox.loading import save_checkpoint

    torch.manual_seed(0)
    config = tiny_t3_config()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_json = write_tokenizer(folder.parent / "tokenizer.json")
    t3 = T3(config).eval()
    with torch.no_grad():
        # Sharper logits and a stop token that min-p always filters out: the random
        # model then speaks until max_new_tokens, so tests control the length.
        t3.speech_head.weight.mul_(4.0)
        t3.speech_head.weight[config.stop_speech_token].zero_()
    model = ChatterboxTTS(
        t3,
        S3Gen().eval(),
        VoiceEncoder().eval(),
        EnTokenizer(str(tokenizer_json)),
        "cpu",
    )
    model.prepare_conditionals(str(voice_wav), exaggeration=0.5)
    save_checkpoint(model, folder, tokenizer_json=tokenizer_json)
    return config


def tiny_engine(checkpoint: Path | str, voices_dir: Path | str) -> Any:
    """The shared tiny engine's settings (conftest.py); importable, so a child
    process can build the same engine (tests/chatterbox/test_hosted.py)."""
    from pipeline.engines.chatterbox import ChatterboxTTS

    return ChatterboxTTS(
        Path(checkpoint),
        device="cpu",
        voices_dir=Path(voices_dir),
        t3_config=tiny_t3_config(),
        first_chunk_tokens=FIRST_CHUNK_TOKENS,
        chunk_tokens=CHUNK_TOKENS,
        left_context_tokens=12,
        cfm_steps=2,
        max_new_tokens=45,
        seed=1234,
    )
