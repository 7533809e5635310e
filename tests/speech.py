"""Speech for the tests: see loadtest.speech."""

from loadtest.speech import espeak_available, silence, speak

__all__ = ["espeak_available", "silence", "speak"]
