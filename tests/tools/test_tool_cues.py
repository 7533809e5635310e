"""Cue words: a built-in tool may be called only on a turn that holds one of its cues
(pipeline/tools/cues.py). The engine's use of them, on the real model, is in
tests/pipeline/test_llama.py."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import Settings
from pipeline.errors import ConfigurationError
from pipeline.tools import server_tool
from pipeline.tools.builtin import builtin_tools
from pipeline.tools.cues import CUES, call_plausible, cued, last_user_text


async def lookup_order(order_id: str) -> str:
    """Where a caller's order is."""
    return order_id


CLOCK: Any = [t.spec.openai() for t in builtin_tools(["get_current_time"])]
BUILTIN: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
ORDER: Any = server_tool(lookup_order).spec.openai()


@pytest.mark.parametrize("said", [
    "What time is it?", "what's today's date", "Is it Friday?", "Is it 3 a.m. there?",
    "What's the time now", "How late is it?", "what day of the week is it",
    "Do you know what hour it is?",
])
def test_questions_about_the_clock_hold_its_cue(said: str) -> None:
    assert call_plausible(said, CLOCK)


@pytest.mark.parametrize("said", [
    "Okay, thanks, bye.", "Goodbye!", "That's all, thank you.", "I have to go now.",
    "You can hang up.", "Please end the call.", "Talk to you later.",
])
def test_goodbyes_hold_a_cue_of_end_call(said: str) -> None:
    assert call_plausible(said, BUILTIN)
    assert not call_plausible(said, CLOCK)


@pytest.mark.parametrize("said", [
    "My phone number is four one five, two two three.", "I need butter, two lemons.",
    "What is two plus two?", "Hello, can you hear me?", "Help me find the nearest pharmacy.",
    "Timely answers please",  # a cue inside a longer word is not one
    "How many days are there in a week?", "How many minutes are in an hour?",
    "I am ready.",  # words that mention time without asking for it
])
def test_turns_without_a_cue_may_not_call_a_builtin(said: str) -> None:
    assert not call_plausible(said, BUILTIN)


def test_a_call_may_name_only_the_tools_whose_cue_was_heard() -> None:
    names = [t["function"]["name"] for t in cued("I have to go now, bye bye.", BUILTIN)]
    assert names == ["end_call"]
    names = [t["function"]["name"] for t in cued("What day is it? Bye.", [*BUILTIN, ORDER])]
    assert names == ["get_current_time", "end_call", "lookup_order"]
    assert cued("How are you?", BUILTIN) == []


def test_a_tool_without_cues_leaves_the_choice_to_the_model() -> None:
    assert call_plausible("Where is my parcel?", [ORDER])
    assert call_plausible("Where is my parcel?", [*BUILTIN, ORDER])
    assert not call_plausible("Where is my parcel?", BUILTIN)
    assert not call_plausible("anything", [])
    assert set(CUES) >= {"get_current_time", "end_call", "transfer_call"}


def test_the_cue_is_looked_for_in_the_callers_last_words() -> None:
    messages: Any = [
        {"role": "system", "content": "What time is it? (the instructions)"},
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "It is noon."},
        {"role": "user", "content": "Thanks."},
    ]
    assert last_user_text(messages) == "Thanks."
    assert not call_plausible(last_user_text(messages), CLOCK)
    assert last_user_text(messages[:1]) == ""


def test_the_switch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().tool_cues is True
    monkeypatch.setenv("VOICEFORGE_TOOL_CUES", "off")
    assert Settings.from_env().tool_cues is False
    monkeypatch.setenv("VOICEFORGE_TOOL_CUES", "sometimes")
    with pytest.raises(ConfigurationError, match="VOICEFORGE_TOOL_CUES"):
        Settings.from_env()
