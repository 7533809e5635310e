"""T3 speech tokens of one utterance, one at a time, as they are sampled.

The library's ``T3.inference`` returns all tokens at the end; streaming needs them
as they are sampled. These generators are one stream of ``t3_batch.T3Batch`` (the
same code that decodes many calls together), so the tokens of a stream decoded
alone and among others come from one implementation: the library's inputs and
sampling exactly (classifier-free guidance on a doubled batch whose second row has
its text embedding zeroed, repetition penalty, temperature, min-p, top-p; Turbo's
own), the backbone driven with its KV cache one token per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from pipeline.engines.chatterbox.t3_batch import SPEECH_VOCAB_SIZE, SamplingSettings, T3Batch

__all__ = ["SPEECH_VOCAB_SIZE", "SamplingSettings", "speech_tokens", "turbo_speech_tokens"]


def speech_tokens(
    t3: Any,
    t3_cond: Any,
    text_tokens: torch.Tensor,
    settings: SamplingSettings,
    *,
    backbone: Callable[..., Any] | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield valid speech tokens (< 6561) as T3 samples them; stop at its stop token.

    ``text_tokens`` is (1, T) and already framed by the start / stop text tokens.
    ``backbone`` replaces ``t3.tfmr`` (a ``torch.compile``d copy, for example).
    Each step runs under ``inference_mode`` on its own, so nothing leaks into the
    caller's code between two tokens.
    """
    batch = T3Batch(t3, settings, backbone=backbone)
    yield from _alone(batch, t3_cond, text_tokens, settings, generator)


def turbo_speech_tokens(
    t3: Any,
    t3_cond: Any,
    text_tokens: torch.Tensor,
    settings: SamplingSettings,
    *,
    top_k: int = 1000,
    backbone: Callable[..., Any] | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Chatterbox-Turbo's T3 (``T3.inference_turbo``), one token at a time.

    Turbo's GPT-2 backbone has no classifier-free guidance (``cfg_weight`` and
    ``min_p`` are ignored, as the library ignores them) and positions of its own;
    its processors run in the library's order: temperature, top-k, top-p,
    repetition penalty. ``text_tokens`` is (1, T) from the GPT-2 tokenizer, unframed.
    """
    batch = T3Batch(t3, settings, turbo=True, top_k=top_k, backbone=backbone)
    yield from _alone(batch, t3_cond, text_tokens, settings, generator)


def _alone(
    batch: T3Batch,
    t3_cond: Any,
    text_tokens: torch.Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None,
) -> Iterator[int]:
    batch.join(0, t3_cond, text_tokens, max_tokens=settings.max_new_tokens, generator=generator)
    while len(batch):
        for sampled in batch.step():
            # Other special tokens are dropped, as the library drops them after the fact.
            if sampled.token is not None and sampled.token < SPEECH_VOCAB_SIZE:
                yield sampled.token
