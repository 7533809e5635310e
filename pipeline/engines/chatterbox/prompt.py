"""The voice prompt S3Gen's flow is conditioned on: aligned, optionally shortened,
and with the flow's voice-only work done once per voice.

Every streamed chunk runs the flow over the prompt's tokens and mel frames as well
as its own (s3gen_stream.py). Two things make that cheaper:

- ``trimmed_prompt``: only the last seconds of the reference. The flow's cost grows
  with the frames it sees, and a 10 s prompt is about three quarters of a chunk's.
  It changes the conditioning (less of the voice to copy), so it is an option.
- ``flow_prompt``: the library's ``ref_dict`` plus what ``CausalMaskedDiffWithXvec
  .inference`` derives from the voice alone on every call: the projected speaker
  embedding, the prompt tokens' input embedding, the prompt mel as the decoder's
  condition. ``prompt_mel`` is that pass with those reused; the rest is the
  library's own submodules, called in the library's order, so the mel is the same
  bit for bit (tested).

What cannot be cached exactly: the encoder's output over the prompt, and
everything the flow decoder does on the prompt frames. Both attend over the whole
sequence (the conformer's and the decoder's masks are padding masks only, no
chunk or causal mask), and the encoder's pre-lookahead convolution reads 3 tokens
ahead, so the prompt's part depends on the chunk's tokens (docs/chatterbox.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MEL_FRAMES_PER_TOKEN = 2
TOKENS_PER_SECOND = 25
"""S3 speech tokens per second of audio (each is two 24 kHz mel frames of 480 samples)."""


def aligned_prompt(ref_dict: dict[str, Any]) -> dict[str, Any]:
    """The voice prompt with exactly two mel frames per prompt token.

    ``embed_ref`` can leave one mel frame more than twice the tokens (odd-length
    references); the flow then starts its output one frame into the new tokens and
    returns one frame fewer than twice their number, which would shift every
    streamed chunk (and every stage-2 Vocos training pair). Dropping the odd frame
    keeps 2:1.
    """
    tokens = min(int(ref_dict["prompt_token"].shape[1]), int(ref_dict["prompt_feat"].shape[1]) // 2)
    aligned = dict(ref_dict)
    aligned["prompt_token"] = ref_dict["prompt_token"][:, :tokens]
    aligned["prompt_token_len"] = torch.tensor([tokens], device=ref_dict["prompt_token"].device)
    aligned["prompt_feat"] = ref_dict["prompt_feat"][:, : MEL_FRAMES_PER_TOKEN * tokens]
    aligned["prompt_feat_len"] = None
    return aligned


def trimmed_prompt(ref_dict: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The last ``seconds`` of an aligned prompt (its tokens and their mel frames).

    The end is kept because the prompt runs straight into the generated speech: its
    last frames are the flow's left context. At least one token is kept; a prompt
    shorter than ``seconds`` is returned whole.
    """
    if not seconds > 0:
        raise ValueError(f"a prompt must keep more than 0 seconds, not {seconds}")
    tokens = int(ref_dict["prompt_token"].shape[1])
    keep = min(tokens, max(1, round(seconds * TOKENS_PER_SECOND)))
    trimmed = dict(ref_dict)
    trimmed["prompt_token"] = ref_dict["prompt_token"][:, tokens - keep :]
    trimmed["prompt_token_len"] = torch.tensor([keep], device=ref_dict["prompt_token"].device)
    trimmed["prompt_feat"] = ref_dict["prompt_feat"][:, MEL_FRAMES_PER_TOKEN * (tokens - keep) :]
    trimmed["prompt_feat_len"] = None
    return trimmed


class FlowPrompt(dict[str, Any]):
    """A voice's ``ref_dict`` (anything that takes the library's still takes it),
    with the flow's voice-only inputs computed once on S3Gen's device."""

    def __init__(
        self,
        ref_dict: dict[str, Any],
        *,
        speaker: torch.Tensor,
        token_embedding: torch.Tensor,
        condition: torch.Tensor,
    ) -> None:
        super().__init__(ref_dict)
        self.speaker = speaker
        """(1, 80): ``spk_embed_affine_layer(normalize(embedding))``."""
        self.token_embedding = token_embedding
        """(1, prompt tokens, 512): ``input_embedding(prompt_token)``."""
        self.condition = condition
        """(1, 80, prompt frames): the prompt mel, the decoder's ``cond`` over the prompt."""

    @property
    def frames(self) -> int:
        return int(self.condition.shape[2])


def flow_prompt(
    s3gen: Any, ref_dict: dict[str, Any], *, reference_seconds: float | None = None
) -> FlowPrompt:
    """``ref_dict`` aligned 2:1, cut to its last ``reference_seconds`` (None: whole),
    with the flow's voice-only work done (``FlowPrompt``)."""
    prompt = aligned_prompt(ref_dict)
    if reference_seconds is not None:
        prompt = trimmed_prompt(prompt, reference_seconds)
    flow = s3gen.flow
    device, dtype = s3gen.device, s3gen.dtype
    with torch.inference_mode():
        embedding = prompt["embedding"].to(device=device, dtype=dtype).reshape(1, -1)
        speaker = flow.spk_embed_affine_layer(F.normalize(embedding, dim=1))
        token_embedding = flow.input_embedding(prompt["prompt_token"].to(device).long())
        feat = prompt["prompt_feat"].to(device=device, dtype=dtype)
        condition = feat.transpose(1, 2).contiguous()
    return FlowPrompt(prompt, speaker=speaker, token_embedding=token_embedding, condition=condition)


def prompt_mel(
    s3gen: Any,
    prompt: FlowPrompt,
    tokens: torch.Tensor,
    *,
    n_timesteps: int,
    noised_mels: torch.Tensor | None,
) -> torch.Tensor:
    """The mel of ``tokens`` (1, T) after ``prompt``: what ``s3gen(tokens, ref_dict=
    prompt, finalize=True, skip_vocoder=True)`` returns, without redoing the prompt's
    share of the embedding, the speaker projection and the condition."""
    return prompt_mels(
        s3gen, [prompt], tokens, n_timesteps=n_timesteps, noised_mels=noised_mels
    )


def prompt_mels(
    s3gen: Any,
    prompts: list[FlowPrompt],
    tokens: torch.Tensor,
    *,
    n_timesteps: int,
    noised_mels: torch.Tensor | None,
) -> torch.Tensor:
    """``prompt_mel`` for several utterances in one flow pass: row i of ``tokens``
    (B, T) after ``prompts[i]``, each with its own voice and noise (B, 80, frames).
    The prompts must have as many frames as each other and the rows as many tokens
    (no padding: the library's decoder pads nothing inside a sequence)."""
    if len(prompts) != tokens.shape[0] or len({prompt.frames for prompt in prompts}) != 1:
        raise ValueError("one prompt per row, all of the same length")
    flow = s3gen.flow
    rows = len(prompts)
    prompt_frames = prompts[0].frames
    embedded = torch.cat(
        [
            torch.cat([prompt.token_embedding for prompt in prompts]),
            flow.input_embedding(tokens.long()),
        ],
        dim=1,
    )
    lengths = torch.full((rows,), embedded.shape[1], device=embedded.device)
    encoded, _ = flow.encoder(embedded, lengths)
    mu = flow.encoder_proj(encoded).transpose(1, 2).contiguous()
    frames = mu.shape[2]
    condition = torch.zeros(rows, mu.shape[1], frames, device=mu.device, dtype=mu.dtype)
    condition[:, :, :prompt_frames] = torch.cat([prompt.condition for prompt in prompts])
    mel, _ = flow.decoder(
        mu=mu,
        mask=torch.ones(rows, 1, frames, device=mu.device, dtype=mu.dtype),
        spks=torch.cat([prompt.speaker for prompt in prompts]),
        cond=condition,
        n_timesteps=n_timesteps,
        noised_mels=noised_mels,
        meanflow=s3gen.meanflow,
    )
    result: torch.Tensor = mel[:, :, prompt_frames:]
    return result
