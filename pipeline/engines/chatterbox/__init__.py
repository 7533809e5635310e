"""Chatterbox (Resemble AI) text to speech, streamed chunk by chunk.

Needs chatterbox-tts, installed next to VoiceForge's torch by
scripts/install-chatterbox.sh; see docs/chatterbox.md.
"""

from pipeline.engines.chatterbox.engine import ChatterboxTTS, StreamedChunk, SynthesisProgress
from pipeline.engines.chatterbox.t3_stream import SamplingSettings
from pipeline.engines.chatterbox.voices import BUILTIN_VOICE

__all__ = [
    "BUILTIN_VOICE",
    "ChatterboxTTS",
    "SamplingSettings",
    "StreamedChunk",
    "SynthesisProgress",
]
