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
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from pipeline.engines.base import FloatAudio

# MEL_FRAMES_PER_TOKEN and aligned_prompt moved to prompt.py with the rest of the voice
# prompt; re-exported here, where pipeline.training.vocoder and older code import them.
from pipeline.engines.chatterbox.prompt import MEL_FRAMES_PER_TOKEN as MEL_FRAMES_PER_TOKEN
from pipeline.engines.chatterbox.prompt import FlowPrompt, prompt_mels
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
        [audio] = decode_together([(self, tokens, final)])
        if isinstance(audio, BaseException):
            raise audio
        return audio

    def plan(self, tokens: Sequence[int], *, final: bool) -> FlowPass | None:
        """The flow pass the next chunk needs; None when it needs none (nothing new:
        an empty chunk, or, final, the held-back audio alone)."""
        if self.finished:
            raise RuntimeError("this S3Gen stream is finished")
        end = len(tokens) if final else len(tokens) - self.lookahead_tokens
        if end <= self.decoded_tokens:
            return None
        start = max(0, self.decoded_tokens - self._left_context)
        window = torch.tensor([list(tokens[start:])], dtype=torch.long, device=self._s3gen.device)
        first_frame = self._prompt_frames + MEL_FRAMES_PER_TOKEN * start
        last_frame = self._prompt_frames + MEL_FRAMES_PER_TOKEN * len(tokens)
        noise = torch.cat(
            [self._noise[:, :, : self._prompt_frames], self._noise[:, :, first_frame:last_frame]],
            dim=2,
        )
        return FlowPass(
            self,
            window,
            noise,
            first=MEL_FRAMES_PER_TOKEN * (self.decoded_tokens - start),
            last=MEL_FRAMES_PER_TOKEN * (end - start),
            end=end,
            final=final,
        )

    def complete(
        self, flow_pass: FlowPass | None, mel: torch.Tensor | None, *, final: bool
    ) -> FloatAudio:
        """The chunk's audio from its pass's mel (None, None: the pass ``plan`` skipped)."""
        if flow_pass is None or mel is None:
            if not final:
                return np.zeros(0, dtype=np.float32)
            self.finished = True
            return _to_numpy(self._vocoder.flush())
        audio = self._vocoder.push(mel[:, :, flow_pass.first : flow_pass.last], final=final)
        self.decoded_tokens = flow_pass.end
        self.finished = final
        return _to_numpy(audio)

    def _mels(self, passes: list[FlowPass]) -> torch.Tensor:
        """Mel of every pass in one flow call (``batch_key`` equal), or the library's
        own call for a plain ``ref_dict`` (one pass).

        The pass always runs with ``finalize=True`` and the lookahead frames are cut
        afterwards: chatterbox-tts 0.1.7's ``finalize=False`` trims the encoder output
        but not its mask, and fails. The difference: the flow decoder's attention also
        sees the lookahead frames, whose mel is then thrown away.
        """
        if isinstance(self._ref_dict, FlowPrompt):
            prompts = [cast(FlowPrompt, flow_pass.stream._ref_dict) for flow_pass in passes]
            return prompt_mels(
                self._s3gen,
                prompts,
                torch.cat([flow_pass.window for flow_pass in passes]),
                n_timesteps=self._cfm_steps,
                noised_mels=torch.cat([flow_pass.noise for flow_pass in passes]),
            )
        [flow_pass] = passes
        mel: torch.Tensor = self._s3gen(
            flow_pass.window,
            ref_wav=None,
            ref_sr=None,
            ref_dict=self._ref_dict,
            finalize=True,
            skip_vocoder=True,
            n_cfm_timesteps=self._cfm_steps,
            noised_mels=flow_pass.noise,
        )
        return mel

    def batch_key(self, flow_pass: FlowPass) -> tuple[Any, ...] | None:
        """Passes with equal keys run as one flow call; None: this one runs alone."""
        if not isinstance(self._ref_dict, FlowPrompt):
            return None
        return (id(self._s3gen), self._cfm_steps, self._prompt_frames, flow_pass.window.shape[1])


@dataclass(frozen=True, slots=True)
class FlowPass:
    """One chunk's flow pass: its window of tokens, its noise, which frames it keeps."""

    stream: S3GenStream
    window: torch.Tensor
    noise: torch.Tensor
    first: int
    last: int
    end: int
    final: bool


def decode_together(
    requests: Sequence[tuple[S3GenStream, Sequence[int], bool]],
) -> list[FloatAudio | BaseException]:
    """Each (stream, tokens, final)'s ``decode``, with the flow passes whose voice
    prompt and window have the same length run as one batched call (each row its own
    voice and noise); the vocoder then runs stream by stream. A failure is returned
    in the place of that request's audio (a failed batched pass fails its group)."""
    results: list[FloatAudio | BaseException | None] = [None] * len(requests)
    plans: list[FlowPass | None] = []
    groups: dict[Any, list[int]] = {}
    with torch.inference_mode():
        for index, (stream, tokens, final) in enumerate(requests):
            try:
                plan = stream.plan(tokens, final=final)
            except Exception as error:
                results[index] = error
                plan = None
            plans.append(plan)
            if plan is not None:
                key = stream.batch_key(plan)
                groups.setdefault(key if key is not None else ("alone", index), []).append(index)
        mels: dict[int, torch.Tensor] = {}
        for members in groups.values():
            passes = [cast(FlowPass, plans[index]) for index in members]
            try:
                batch = passes[0].stream._mels(passes)
            except Exception as error:
                for index in members:
                    results[index] = error
                continue
            for row, index in enumerate(members):
                mels[index] = batch[row : row + 1]
        for index, (stream, _, final) in enumerate(requests):
            if results[index] is not None:
                continue
            try:
                results[index] = stream.complete(plans[index], mels.get(index), final=final)
            except Exception as error:
                results[index] = error
    return [result if result is not None else np.zeros(0, dtype=np.float32) for result in results]


def _to_numpy(audio: torch.Tensor) -> FloatAudio:
    return np.ascontiguousarray(audio.numpy(), dtype=np.float32)
