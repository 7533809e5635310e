"""VoiceForge real-time core: audio, VAD, turn detection, chunking, engines, orchestration.

Nothing in this package imports Starlette, websockets or aiortc.
"""
