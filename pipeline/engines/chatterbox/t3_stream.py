"""T3 speech tokens, one at a time, from our own decoding loop.

The library's ``T3.inference`` returns all tokens at the end; streaming needs
them as they are sampled. This loop keeps the library's inputs and sampling
exactly (classifier-free guidance on a doubled batch whose second row has its
text embedding zeroed, repetition penalty, temperature, min-p, top-p) and drives
the Llama backbone with its KV cache one token per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)

SPEECH_VOCAB_SIZE = 6561
"""Tokens at or above this are T3's special tokens, which S3Gen cannot decode."""


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """The library's sampling parameters, with its defaults (``ChatterboxTTS.generate``)."""

    temperature: float = 0.8
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    cfg_weight: float = 0.5
    """0 turns classifier-free guidance off (and halves the batch)."""
    max_new_tokens: int = 1000
    """At 25 tokens a second, 1000 tokens are 40 s of speech."""


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
    hp = t3.hp
    model = backbone or t3.tfmr
    use_cfg = settings.cfg_weight > 0.0
    batch = 2 if use_cfg else 1
    min_p = MinPLogitsWarper(min_p=settings.min_p) if settings.min_p > 0.0 else None
    top_p = TopPLogitsWarper(top_p=settings.top_p) if settings.top_p < 1.0 else None
    repetition = RepetitionPenaltyLogitsProcessor(penalty=float(settings.repetition_penalty))

    with torch.inference_mode():
        device = t3.speech_head.weight.device
        text = text_tokens.to(device=device, dtype=torch.long).expand(batch, -1)
        start = torch.full((batch, 1), hp.start_speech_token, dtype=torch.long, device=device)
        embeds, _ = t3.prepare_input_embeds(
            t3_cond=t3_cond,
            text_tokens=text,
            speech_tokens=start,
            cfg_weight=settings.cfg_weight,
        )
        # The library appends the start-of-speech embedding once more after the
        # prompt (which already ends with it); the released weights are used that
        # way, so we do the same.
        bos = t3.speech_emb(start[:1]) + t3.speech_pos_emb.get_fixed_embedding(0)
        inputs = torch.cat([embeds, bos.expand(batch, -1, -1)], dim=1)
        output = model(inputs_embeds=inputs, use_cache=True)
    generated = [hp.start_speech_token]

    for step in range(settings.max_new_tokens):
        with torch.inference_mode():
            hidden = output.last_hidden_state[:, -1, :]
            logits = t3.speech_head(hidden).float()
            if use_cfg:
                conditional, unconditional = logits[0:1], logits[1:2]
                logits = conditional + settings.cfg_weight * (conditional - unconditional)
            history = cast(
                torch.LongTensor, torch.tensor([generated], dtype=torch.long, device=device)
            )
            logits = repetition(history, logits)
            if settings.temperature != 1.0:
                logits = logits / settings.temperature
            if min_p is not None:
                logits = min_p(history, logits)
            if top_p is not None:
                logits = top_p(history, logits)
            probabilities = torch.softmax(logits, dim=-1)
            next_token = torch.multinomial(probabilities, num_samples=1, generator=generator)
            token = int(next_token.item())
            if token == hp.stop_speech_token:
                return
            generated.append(token)
        # Other special tokens are dropped, as the library drops them after the fact.
        if token < SPEECH_VOCAB_SIZE:
            yield token
        with torch.inference_mode():
            embed = t3.speech_emb(next_token) + t3.speech_pos_emb.get_fixed_embedding(step + 1)
            output = model(
                inputs_embeds=embed.expand(batch, -1, -1),
                past_key_values=output.past_key_values,
                use_cache=True,
            )


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
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    hp = t3.hp
    model = backbone or t3.tfmr
    processors = LogitsProcessorList()
    if settings.temperature > 0 and settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))

    with torch.inference_mode():
        device = t3.speech_head.weight.device
        text = text_tokens.to(device=device, dtype=torch.long)
        start = torch.full((1, 1), hp.start_speech_token, dtype=torch.long, device=device)
        embeds, _ = t3.prepare_input_embeds(
            t3_cond=t3_cond, text_tokens=text, speech_tokens=start, cfg_weight=0.0
        )
        output = model(inputs_embeds=embeds, use_cache=True)
    # The library's first step scores against the start token, later ones against
    # the tokens sampled so far (the start token not among them).
    history = start
    for _ in range(settings.max_new_tokens):
        with torch.inference_mode():
            logits = t3.speech_head(output.last_hidden_state[:, -1, :])
            processed = processors(cast(torch.LongTensor, history), logits)
            if torch.all(processed == -float("inf")):
                return
            probabilities = torch.softmax(processed, dim=-1)
            next_token = torch.multinomial(probabilities, num_samples=1, generator=generator)
            token = int(next_token.item())
            if token == hp.stop_speech_token:
                return
            history = next_token if history is start else torch.cat([history, next_token], dim=1)
        if token < SPEECH_VOCAB_SIZE:
            yield token
        with torch.inference_mode():
            output = model(
                inputs_embeds=t3.speech_emb(next_token),
                past_key_values=output.past_key_values,
                use_cache=True,
            )
