"""Training recipes for VoiceForge's own models (GPU work; see docs/vocos.md)."""
