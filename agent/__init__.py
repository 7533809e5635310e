"""VoiceForge adapters: server, protocol, SDK, CLI."""
