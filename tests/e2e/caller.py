"""The scripted caller now lives in the SDK (agent.caller)."""

from agent.caller import Caller

__all__ = ["Caller"]
