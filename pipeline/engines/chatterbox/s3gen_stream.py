"""S3Gen decoding chunk by chunk: tokens → mel (flow matching) → 24 kHz audio (HiFT).

The recipe is CosyVoice2's streaming ``token2wav``, with a bounded left context:

- Each chunk's flow pass sees the voice prompt, up to ``left_context_tokens``
  already-decoded tokens before it, the new tokens, and the 3 lookahead tokens
  after them. The lookahead's mel frames are dropped (what ``finalize=False``
  means in the library); the last chunk keeps everything.
- The voice prompt (``prompt.py``) is the library's ``ref_dict``, or a
  ``FlowPrompt``: the same, with the flow's voice-only work done once per voice
  and reused by every pass (the same mel, bit for bit). It may be the reference's
  last few seconds only (``trimmed_prompt``): the flow's cost grows with it.
- One noise tensor per utterance: the flow's starting noise at mel frame ``i`` is
  the same in every pass that covers frame ``i``, so overlapping passes agree.
- The vocoder (``vocoder.py``: HiFT by default, or Vocos) decodes each chunk's mel
  with context from the previous chunks; the last 8 frames' audio is held back and
  cross-faded (Hamming) into the start of the next chunk's audio. HiFT re-reads
  those 8 mel frames with the harmonic source it made for them, so its
  oscillator phase carries on; Vocos re-reads its receptive field.

Every mel frame is 480 samples and is emitted exactly once, so the streamed audio
is as long as a whole-utterance decode of the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.engines.base import FloatAudio

# MEL_FRAMES_PER_TOKEN and aligned_prompt moved to prompt.py with the rest of the voice
# prompt; re-exported here, where pipeline.training.vocoder and older code import them.
from pipeline.engines.chatterbox.prompt import MEL_FRAMES_PER_TOKEN as MEL_FRAMES_PER_TOKEN
from pipeline.engines.chatterbox.prompt import FlowPrompt, prompt_mel
from pipeline.engines.chatterbox.prompt import aligned_prompt as aligned_prompt
from pipeline.engines.chatterbox.vocoder import HiFTVocoder, Vocoder

SAMPLES_PER_MEL_FRAME = 480


class S3GenStream:
    """Decodes one utterance's growing token list into consecutive audio chunks."""

    def __init__(
        self,
        s3gen: Any,
        ref_dict: dict[str, Any],
        *,
        max_tokens: int,
        cfm_steps: int = 10,
        left_context_tokens: int = 50,
        generator: torch.Generator | None = None,
        vocoder: Vocoder | None = None,
    ) -> None:
        self._s3gen = s3gen
        self._vocoder = (vocoder or HiFTVocoder(s3gen)).stream()
        self._ref_dict = ref_dict
        self._cfm_steps = cfm_steps
        self._left_context = left_context_tokens
        self.lookahead_tokens: int = int(s3gen.flow.pre_lookahead_len)
        self._prompt_frames = int(ref_dict["prompt_feat"].shape[1])
        frames = self._prompt_frames + MEL_FRAMES_PER_TOKEN * (max_tokens + self.lookahead_tokens)
        # A generator draws only on its own device (CUDA refuses a CPU draw with a
        # CUDA generator), so the noise is made there, then moved to S3Gen's.
        self._noise = torch.randn(
            1, 80, frames, generator=generator,
            device=generator.device if generator is not None else s3gen.device,
        ).to(device=s3gen.device, dtype=s3gen.dtype)  # fmt: skip
        self.decoded_tokens = 0
        """Tokens whose audio has been emitted (or is held back for the cross-fade)."""
        self.finished = False

    def decode(self, tokens: Sequence[int], *, final: bool) -> FloatAudio:
        """Audio for the tokens not decoded yet, less what must wait for the next chunk.

        Not final: decodes up to ``len(tokens) - lookahead_tokens``. Final: decodes
        the rest and flushes the held-back audio; the stream is then finished.
        """
        if self.finished:
            raise RuntimeError("this S3Gen stream is finished")
        end = len(tokens) if final else len(tokens) - self.lookahead_tokens
        if end <= self.decoded_tokens:
            if not final:
                return np.zeros(0, dtype=np.float32)
            self.finished = True
            return _to_numpy(self._vocoder.flush())
        with torch.inference_mode():
            mel = self._mel(tokens, end)
            audio = self._vocoder.push(mel, final=final)
        self.decoded_tokens = end
        self.finished = final
        return _to_numpy(audio)

    def _mel(self, tokens: Sequence[int], end: int) -> torch.Tensor:
        """Mel frames of tokens [decoded_tokens, end), from a pass with left context.

        The pass always runs with ``finalize=True`` and the lookahead frames are cut
        here: chatterbox-tts 0.1.7's ``finalize=False`` trims the encoder output but
        not its mask, and fails. The difference: the flow decoder's attention also
        sees the lookahead frames, whose mel is then thrown away.
        """
        start = max(0, self.decoded_tokens - self._left_context)
        window = torch.tensor([list(tokens[start:])], dtype=torch.long, device=self._s3gen.device)
        first_frame = self._prompt_frames + MEL_FRAMES_PER_TOKEN * start
        last_frame = self._prompt_frames + MEL_FRAMES_PER_TOKEN * len(tokens)
        noise = torch.cat(
            [self._noise[:, :, : self._prompt_frames], self._noise[:, :, first_frame:last_frame]],
            dim=2,
        )
        if isinstance(self._ref_dict, FlowPrompt):
            mel = prompt_mel(
                self._s3gen, self._ref_dict, window, n_timesteps=self._cfm_steps, noised_mels=noise
            )
        else:
            mel = self._s3gen(
                window,
                ref_wav=None,
                ref_sr=None,
                ref_dict=self._ref_dict,
                finalize=True,
                skip_vocoder=True,
                n_cfm_timesteps=self._cfm_steps,
                noised_mels=noise,
            )
        first = MEL_FRAMES_PER_TOKEN * (self.decoded_tokens - start)
        last = MEL_FRAMES_PER_TOKEN * (end - start)
        result: torch.Tensor = mel[:, :, first:last]
        return result


def _to_numpy(audio: torch.Tensor) -> FloatAudio:
    return np.ascontiguousarray(audio.numpy(), dtype=np.float32)
