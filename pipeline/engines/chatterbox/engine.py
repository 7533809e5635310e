"""Chatterbox text to speech, streamed: audio starts after the first few speech tokens.

T3 samples speech tokens; every ``first_chunk_tokens`` and then every
``chunk_tokens`` tokens, plus S3Gen's 3 lookahead tokens, S3Gen turns the new
tokens into audio (s3gen_stream). All model work runs on one worker thread
(worker.py): every utterance in progress, whichever call it belongs to, advances
by one batched T3 step at a time (t3_batch.py), and its chunks are decoded as they
fall due, first chunks first. Cancelling an utterance drops it from the batch
before the next step; nothing of it runs after the step in progress.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from pipeline.engines.base import FloatAudio
from pipeline.engines.chatterbox.loading import load_chatterbox, load_watermarker
from pipeline.engines.chatterbox.prompt import flow_prompt
from pipeline.engines.chatterbox.s3gen_stream import S3GenStream, decode_together
from pipeline.engines.chatterbox.schedule import SCHEDULES, ChunkSchedule
from pipeline.engines.chatterbox.t3_batch import SPEECH_VOCAB_SIZE, SamplingSettings, T3Batch
from pipeline.engines.chatterbox.t3_slots import T3Slots
from pipeline.engines.chatterbox.vocoder import VOCODERS, Vocoder, build_vocoder
from pipeline.engines.chatterbox.voices import BUILTIN_VOICE, voice_library
from pipeline.engines.chatterbox.worker import SpeechWorker
from pipeline.engines.threaded import pick_voice
from pipeline.errors import ConfigurationError, ModelLoadError, TTSError

SAMPLE_RATE = 24_000
SLOT_PROMPT_POSITIONS = 1024
"""Columns of a T3 slot for the prompt (voice conditioning, text, start tokens),
beyond ``max_new_tokens``: the chunker cuts a chunk at 500 characters."""
_log = logging.getLogger("voiceforge.tts")
S3GEN_SILENCE_TOKEN = 4299
"""``chatterbox.models.s3gen.const.S3GEN_SIL``."""
WARM_UP_TEXT = "Hello, thanks for calling. This sentence warms the voice up before the first call."


@dataclass(slots=True)
class SynthesisProgress:
    """What the utterance in progress has done so far (updated on the worker thread)."""

    tokens: int = 0
    """Valid speech tokens T3 has produced."""
    speech_tokens: list[int] = field(default_factory=list)
    chunks: int = 0
    samples: int = 0
    chunk_sizes: list[int] = field(default_factory=list)
    """Tokens chosen for each chunk after the first (``chunk_schedule``), in order."""
    finished: bool = False
    """True once the last chunk was produced; False when it stopped early (cancelled)."""


@dataclass(frozen=True, slots=True)
class StreamedChunk:
    audio: FloatAudio
    tokens: int
    """Speech tokens produced when this chunk was decoded (its lookahead included)."""


@dataclass(slots=True)
class _Voice:
    t3_cond: Any
    ref_dict: dict[str, Any]


class ChatterboxTTS:
    """Chatterbox voices by name, streamed chunk by chunk at 24 kHz."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        *,
        device: str = "cuda",
        voices_dir: str | Path | None = None,
        default_voice: str | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        top_p: float = 1.0,
        min_p: float = 0.05,
        repetition_penalty: float = 1.2,
        max_new_tokens: int = 1000,
        tokens_per_char: float = 4.0,
        token_allowance: int = 50,
        first_chunk_tokens: int = 10,
        chunk_tokens: int = 25,
        chunk_schedule: str = "fixed",
        left_context_tokens: int = 50,
        reference_seconds: float | None = None,
        cfm_steps: int | None = None,
        watermark: bool = False,
        bf16: bool = False,
        compile: bool = False,
        tf32: bool = False,
        seed: int | None = None,
        t3_config: Any = None,
        vocoder: str = "hift",
        vocos_weights: str | Path | None = None,
        turbo: bool = False,
        top_k: int = 1000,
        max_streams: int = 16,
        cuda_graphs: bool = False,
    ) -> None:
        """Load Chatterbox and prepare every voice of the library.

        ``checkpoint_dir``: a folder with ve/t3_cfg/s3gen safetensors and
        tokenizer.json (``from_local``), or None to download ResembleAI/chatterbox
        (``from_pretrained``). Its ``conds.pt``, if any, is the voice ``default``.
        ``voices_dir``: reference WAVs, one voice per ``NAME.wav``.
        ``first_chunk_tokens`` / ``chunk_tokens``: speech tokens (25 a second) per
        chunk; the first chunk is decoded once ``first_chunk_tokens`` + 3
        lookahead tokens exist. ``chunk_schedule``: ``"fixed"`` (every later chunk
        ``chunk_tokens``) or ``"adaptive"`` (each later chunk as large as this
        utterance's measured T3 and S3Gen times let it be computed inside the audio
        already out, up to ``chunk_tokens``; ``schedule.py``).
        ``left_context_tokens``: decoded tokens S3Gen sees again before each chunk.
        ``reference_seconds``: S3Gen's voice prompt is the last this many seconds of
        the reference (None: all of it, up to the library's 10 s; ``prompt.py``).
        ``cfm_steps``: flow-matching steps (the library uses 10).
        ``tokens_per_char`` / ``token_allowance``: an utterance stops after
        ``token_allowance + tokens_per_char × characters`` speech tokens (or
        ``max_new_tokens``, whichever is less) even when T3 never samples its stop
        token: English T3 has no alignment analyser, and a missed stop would
        otherwise babble for ``max_new_tokens`` (40 s at 1000) and hold the worker.
        4 tokens a character is 6 characters a second, slower than slow speech.
        ``watermark``: Perth watermark on every chunk; a watermarker that
        cannot load is a ModelLoadError. ``bf16``: T3 in bfloat16 (S3Gen stays
        float32). ``compile``: ``torch.compile`` the T3 backbone and the flow
        estimator. ``tf32``: TensorFloat-32 matmuls and convolutions on CUDA
        (process-wide torch switches). ``t3_config``: a ``T3Config`` for
        checkpoints that are not the default size. ``vocoder``: ``"hift"`` (the
        library's, the default) or ``"vocos"`` (Vocos trained for S3Gen's mel,
        loaded from ``vocos_weights``: a local folder or a hub id; see docs/vocos.md).
        ``turbo``: Chatterbox-Turbo (``chatterbox.tts_turbo``: a GPT-2 T3 without
        CFG, sampled with ``top_k`` / ``top_p`` / temperature / repetition penalty,
        and S3Gen's 2-step mean-flow decoder; ``cfg_weight``, ``min_p`` and
        ``exaggeration`` do not apply; ``cfm_steps`` defaults to 2, not 10; the hub's
        ``ResembleAI/chatterbox-turbo`` when ``checkpoint_dir`` is None).
        ``max_streams``: utterances whose T3 decodes together, one batched step
        for all (``t3_batch``, ``worker``); more wait for a free place.
        ``cuda_graphs``: T3 on ``max_streams`` fixed slots (``t3_slots``) whose
        decode step is captured as a CUDA graph per bucket during the warm-up and
        replayed (on CUDA; elsewhere the same slots run eagerly).
        """
        if first_chunk_tokens < 5 or chunk_tokens < 1:
            raise ConfigurationError(
                "Chatterbox chunks need first_chunk_tokens >= 5 (HiFT's 8-frame overlap)"
                " and chunk_tokens >= 1"
            )
        if chunk_schedule not in SCHEDULES:
            raise ConfigurationError(
                f"unknown chunk_schedule {chunk_schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )
        if cfm_steps is None:
            cfm_steps = 2 if turbo else 10
        if left_context_tokens < 0 or cfm_steps < 1 or max_new_tokens < 1:
            raise ConfigurationError(
                "left_context_tokens must be >= 0, cfm_steps and max_new_tokens >= 1"
            )
        if max_streams < 1:
            raise ConfigurationError("max_streams must be >= 1")
        if reference_seconds is not None and not reference_seconds > 0:
            raise ConfigurationError(f"reference_seconds must be > 0, got {reference_seconds}")
        if tokens_per_char <= 0 or token_allowance < 0:
            raise ConfigurationError("tokens_per_char must be > 0 and token_allowance >= 0")
        if vocoder not in VOCODERS:
            raise ConfigurationError(
                f"unknown vocoder {vocoder!r}: choose one of {', '.join(VOCODERS)}"
            )
        if vocoder == "vocos" and vocos_weights is None:
            raise ConfigurationError("vocoder='vocos' needs vocos_weights (a folder or hub id)")
        if (bf16 or tf32) and not device.startswith("cuda"):
            raise ConfigurationError("bf16 and tf32 are for CUDA devices; run float32 on CPU")
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.turbo = turbo
        self.top_k = top_k
        variant = "chatterbox-turbo" if turbo else "chatterbox"
        self.name = f"{variant}:{Path(checkpoint_dir).name if checkpoint_dir else 'hub'}"
        self.exaggeration = exaggeration
        self.sampling = SamplingSettings(
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            cfg_weight=cfg_weight,
            max_new_tokens=max_new_tokens,
        )
        self.tokens_per_char = tokens_per_char
        self.token_allowance = token_allowance
        self.first_chunk_tokens = first_chunk_tokens
        self.chunk_tokens = chunk_tokens
        self.chunk_schedule = chunk_schedule
        self.left_context_tokens = left_context_tokens
        self.reference_seconds = reference_seconds
        self.cfm_steps = cfm_steps
        self._bf16 = bf16
        self._seed = seed
        self._cuda_graphs = cuda_graphs
        self._max_streams = max_streams
        self._slots: T3Slots | None = None
        self.last_progress = SynthesisProgress()
        library = voice_library(voices_dir)
        # Fail fast and loud, before minutes of model loading.
        self._watermarker = load_watermarker() if watermark else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatterbox")
        try:
            self._executor.submit(
                self._load, checkpoint_dir, device, t3_config, library, compile
            ).result()
            self.vocoder: Vocoder = self._executor.submit(
                build_vocoder, vocoder, self._model.s3gen, vocos_weights=vocos_weights
            ).result()
            self.default_voice = self._pick_default_voice(default_voice)
            self._worker = SpeechWorker(
                self._executor,
                self._new_batch,
                max_streams=max_streams,
                name=self.name,
                decode_many=self._decode_chunks,
            )
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    def _pick_default_voice(self, requested: str | None) -> str:
        if not self._voices:
            raise ConfigurationError(
                "Chatterbox has no voice: the checkpoint has no conds.pt and no voices_dir"
                " was given"
            )
        voice = requested or next(iter(self._voices))
        if voice not in self._voices:
            raise ConfigurationError(
                f"default voice {voice!r} is not one of {', '.join(self._voices)}"
            )
        return voice

    # -- loading (worker thread) -------------------------------------------------

    def _load(
        self,
        checkpoint_dir: str | Path | None,
        device: str,
        t3_config: Any,
        library: dict[str, Path],
        compile: bool,
    ) -> None:
        self.cuda_stream = own_cuda_stream(device)
        self._model = load_chatterbox(
            checkpoint_dir, device, t3_config=t3_config, turbo=self.turbo
        )
        model = self._model
        if self._bf16:
            model.t3.to(dtype=torch.bfloat16)
        self._backbone: Any = model.t3.tfmr
        if compile:
            self._backbone = torch.compile(model.t3.tfmr, dynamic=True)
            estimator = model.s3gen.flow.decoder.estimator
            model.s3gen.flow.decoder.estimator = torch.compile(estimator, dynamic=True)
        self._voices: dict[str, _Voice] = {}
        if model.conds is not None:
            self._voices[BUILTIN_VOICE] = self._voice(model.conds)
        for name, wav in library.items():
            try:
                model.prepare_conditionals(str(wav), exaggeration=self.exaggeration)
            except Exception as error:
                raise ModelLoadError(
                    f"cannot prepare Chatterbox voice {name!r} from {wav}: {error}"
                ) from error
            self._voices[name] = self._voice(model.conds)

    def _voice(self, conds: Any) -> _Voice:
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        t3_cond = T3Cond(
            speaker_emb=conds.t3.speaker_emb,
            cond_prompt_speech_tokens=conds.t3.cond_prompt_speech_tokens,
            emotion_adv=self.exaggeration * torch.ones(1, 1, 1),
        ).to(device=self._model.device, dtype=torch.bfloat16 if self._bf16 else None)
        prompt = flow_prompt(self._model.s3gen, conds.gen, reference_seconds=self.reference_seconds)
        return _Voice(t3_cond=t3_cond, ref_dict=prompt)

    # -- the voice library ------------------------------------------------------------

    async def add_voice(self, name: str, reference: Path) -> None:
        """Clone a voice from the WAV at ``reference`` (``CloningTTS``): prepared on the
        worker thread, between two chunks of whatever is being synthesised."""
        if name == BUILTIN_VOICE or name in self._voices:
            raise TTSError(f"voice {name!r} exists already", transient=False)
        try:
            voice = await self._worker.call(lambda: self._prepare_voice(reference))
        except Exception as error:
            raise TTSError(f"cannot prepare voice {name!r}: {error}", transient=False) from error
        self._voices[name] = voice

    async def remove_voice(self, name: str) -> None:
        """Forget ``name`` (``CloningTTS``); a synthesis using it finishes with it."""
        if name == self.default_voice:
            raise TTSError(f"{name!r} is the default voice", transient=False)
        self._voices.pop(name, None)

    def _prepare_voice(self, reference: Path) -> _Voice:
        self._model.prepare_conditionals(str(reference), exaggeration=self.exaggeration)
        return self._voice(self._model.conds)

    # -- synthesis -----------------------------------------------------------------

    def voices(self) -> Sequence[str]:
        return list(self._voices)

    async def synthesize(
        self, text: str, *, voice: str | None = None
    ) -> AsyncGenerator[FloatAudio, None]:
        """Yield float32 chunks at 24 kHz as S3Gen produces them."""
        chunks = self.synthesize_chunks(text, voice=voice)
        try:
            async for chunk in chunks:
                yield chunk.audio
        finally:
            await chunks.aclose()

    async def synthesize_chunks(
        self, text: str, *, voice: str | None = None
    ) -> AsyncGenerator[StreamedChunk, None]:
        """Like ``synthesize``, with the token count at which each chunk was decoded."""
        selected = pick_voice(self._voices, voice, self.default_voice)
        if not text.strip():
            return
        progress = SynthesisProgress()
        self.last_progress = progress
        chunks = self._worker.stream(_Utterance(self, text, selected, progress))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def token_cap(self, text: str) -> int:
        """The most speech tokens ``text`` may take (see ``tokens_per_char``)."""
        from chatterbox.tts import punc_norm

        by_length = self.token_allowance + math.ceil(self.tokens_per_char * len(punc_norm(text)))
        return min(self.sampling.max_new_tokens, by_length)

    def _new_batch(self) -> T3Batch:
        if not self._cuda_graphs:
            return T3Batch(
                self._model.t3,
                self.sampling,
                turbo=self.turbo,
                top_k=self.top_k,
                backbone=self._backbone,
            )
        # The slots (their buffers and captured graphs) are kept while they are
        # empty and the sampling settings unchanged; a batch left with streams in it
        # (a failed step) is not trusted again.
        slots = self._slots
        if slots is None or len(slots) or slots.settings != self.sampling:
            slots = self._slots = T3Slots(
                self._model.t3,
                self.sampling,
                turbo=self.turbo,
                top_k=self.top_k,
                backbone=self._backbone,
                capacity=self._max_streams,
                max_positions=self.sampling.max_new_tokens + SLOT_PROMPT_POSITIONS,
                cuda_graphs=True,
            )
        return slots

    def _decode_chunks(self, jobs: list[_Utterance]) -> list[StreamedChunk | BaseException]:
        """The due chunks of several utterances, their flow passes batched where the
        prompt and window lengths agree (``s3gen_stream.decode_together``)."""
        started = time.perf_counter()
        audios = decode_together([job.due_request() for job in jobs])
        seconds = time.perf_counter() - started
        return [
            audio if isinstance(audio, BaseException) else job.emitted(audio, seconds)
            for job, audio in zip(jobs, audios, strict=True)
        ]

    def _text_tokens(self, text: str) -> torch.Tensor:
        """(1, T) text tokens as the library's ``generate`` makes them."""
        model = self._model
        if self.turbo:
            encoded = model.tokenizer(text, return_tensors="pt", padding=True, truncation=True)
            ids: torch.Tensor = encoded.input_ids
            return ids
        hp = model.t3.hp
        framed = torch.nn.functional.pad(
            model.tokenizer.text_to_tokens(text), (1, 0), value=hp.start_text_token
        )
        return torch.nn.functional.pad(framed, (0, 1), value=hp.stop_text_token)

    def _chunk(self, audio: FloatAudio, tokens: int, progress: SynthesisProgress) -> StreamedChunk:
        if self._watermarker is not None and audio.size:
            marked = self._watermarker.apply_watermark(audio, sample_rate=SAMPLE_RATE)
            audio = np.asarray(marked, dtype=np.float32)
        progress.chunks += 1
        progress.samples += int(audio.size)
        return StreamedChunk(audio=audio, tokens=tokens)

    async def warm_up(self) -> dict[str, int]:
        """Synthesise with every voice once, through the first chunk, a later chunk
        and the final flush, so the first caller pays no lazy initialisation
        (CUDA kernels, cuDNN autotuning, ``torch.compile``). Returns the chunks each
        voice gave: at least 3 unless T3 stopped early (the text is long enough that a
        trained model does not)."""
        # Room for a second chunk even when some steps sample special tokens.
        tokens = self.first_chunk_tokens + 2 * self.chunk_tokens + 3
        chunks_by_voice = {}
        for name, voice in list(self._voices.items()):
            progress = SynthesisProgress()
            utterance = _Utterance(self, WARM_UP_TEXT, voice, progress, max_tokens=tokens)
            chunks = self._worker.stream(utterance)
            try:
                chunks_by_voice[name] = len([chunk async for chunk in chunks])
            finally:
                await chunks.aclose()
        if self._cuda_graphs:
            slots = await self._worker.call(self._new_batch)
            buckets = await self._worker.call(cast(T3Slots, slots).warm_buckets)
            _log.info("%s: T3 decode ran in %d slot buckets (captured on CUDA)",
                      self.name, buckets)
        return chunks_by_voice

    async def wait_idle(self) -> None:
        """Return once the worker has dropped what was cancelled (a closed stream
        costs at most the step in progress) and run what was queued before."""
        await self._worker.call(lambda: None)

    def close(self) -> None:
        """Stop every utterance after the step in progress, then release the models."""
        self._worker.cancel_all()
        self._executor.shutdown(wait=True)
        self._voices.clear()


def own_cuda_stream(device: str) -> Any:
    """On CUDA, make the calling thread (the engine's worker) run its work on a stream
    of its own and return it; None elsewhere.

    torch's default is the legacy default stream, which waits for, and is waited for
    by, every blocking stream of the process: CTranslate2's (Whisper's), among them,
    so speech and transcription would take turns on the GPU. A stream from torch's
    pool is non-blocking: the two overlap. The current stream is per thread, and all
    of Chatterbox's work runs on the one worker thread."""
    if not device.startswith("cuda"):
        return None
    stream = torch.cuda.Stream(device=torch.device(device))  # type: ignore[no-untyped-call]
    torch.cuda.set_stream(stream)
    return stream


class _Utterance:
    """One utterance's chunking, on the worker thread (``worker.Job``): T3 tokens
    in, S3Gen audio chunks out, every ``first_chunk_tokens`` and then every
    ``chunk_tokens`` tokens (or as the adaptive schedule says), plus S3Gen's lookahead."""

    def __init__(
        self,
        engine: ChatterboxTTS,
        text: str,
        voice: _Voice,
        progress: SynthesisProgress,
        *,
        max_tokens: int | None = None,
    ) -> None:
        self._engine = engine
        self._text = text
        self._voice = voice
        self._progress = progress
        self._max_tokens = max_tokens
        self._chunk_size = engine.first_chunk_tokens
        self._schedule = (
            ChunkSchedule(engine.chunk_tokens, min_tokens=min(5, engine.chunk_tokens))
            if engine.chunk_schedule == "adaptive" else None
        )
        self._s3gen: S3GenStream | None = None
        self.first_chunk_pending = True

    def join(self, batch: T3Batch, key: int) -> None:
        from chatterbox.tts import punc_norm

        engine = self._engine
        model = engine._model
        generator = None
        if engine._seed is not None:
            generator = torch.Generator(device=model.device).manual_seed(engine._seed)
        cap = self._max_tokens or engine.token_cap(self._text)
        text_tokens = engine._text_tokens(punc_norm(self._text))
        # The noise is drawn first, then T3 samples from the same generator.
        self._s3gen = S3GenStream(
            model.s3gen,
            self._voice.ref_dict,
            max_tokens=cap,
            cfm_steps=engine.cfm_steps,
            left_context_tokens=engine.left_context_tokens,
            generator=generator,
            vocoder=engine.vocoder,
        )
        batch.join(key, self._voice.t3_cond, text_tokens, max_tokens=cap, generator=generator)

    def take(self, token: int | None) -> bool:
        # Other special tokens are dropped, as the library drops them after the fact.
        if token is None or token >= SPEECH_VOCAB_SIZE:
            return False
        assert self._s3gen is not None
        tokens = self._progress.speech_tokens
        tokens.append(token)
        self._progress.tokens = len(tokens)
        if self._schedule is not None:
            self._schedule.token()
        due = self._s3gen.decoded_tokens + self._chunk_size + self._s3gen.lookahead_tokens
        return len(tokens) >= due

    def due_request(self) -> tuple[S3GenStream, list[int], bool]:
        """The S3Gen decode the due chunk needs: (stream, tokens, final)."""
        assert self._s3gen is not None
        return self._s3gen, self._progress.speech_tokens, False

    def emitted(self, audio: FloatAudio, seconds: float) -> StreamedChunk:
        """The due chunk's audio, decoded in ``seconds``, handed out."""
        tokens = self._progress.speech_tokens
        chunk = self._engine._chunk(audio, len(tokens), self._progress)
        schedule = self._schedule
        if schedule is not None:
            schedule.decoded(seconds)
            schedule.emitted(chunk.audio.size / SAMPLE_RATE)
        self._chunk_size = self._engine.chunk_tokens if schedule is None else schedule.next_tokens()
        self._progress.chunk_sizes.append(self._chunk_size)
        self.first_chunk_pending = False
        return chunk

    def finish(self) -> StreamedChunk | None:
        assert self._s3gen is not None
        tokens = self._progress.speech_tokens
        # Turbo ends every utterance on 3 of S3Gen's silence tokens, as its library does.
        tail = [S3GEN_SILENCE_TOKEN] * 3 if self._engine.turbo else []
        audio = self._s3gen.decode([*tokens, *tail], final=True)
        last = self._engine._chunk(audio, len(tokens), self._progress)
        self._progress.finished = True
        return last if last.audio.size else None
