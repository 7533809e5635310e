"""Conversation history and what the caller heard: plain values in, plain values out."""

from __future__ import annotations

import pytest

from pipeline.engines.base import ChatMessage
from pipeline.history import History, SpokenChunk, fit_to_context, heard_text

# --- History --------------------------------------------------------------------------


def test_messages_start_with_the_system_prompt() -> None:
    history = History("You are helpful.")
    history.add_user("Hi")
    history.add_assistant("Hello! How can I help?")
    assert history.messages() == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    assert len(history) == 2


def test_system_prompt_is_settable() -> None:
    history = History("Old prompt.")
    history.system_prompt = "New prompt."
    assert history.messages() == [{"role": "system", "content": "New prompt."}]


def test_consecutive_user_turns_merge() -> None:
    history = History("sys")
    history.add_user("What is the")
    history.add_assistant("   ")  # the reply was interrupted before a word was heard
    history.add_user("capital of France?")
    assert history.messages()[1:] == [{"role": "user", "content": "What is the capital of France?"}]
    assert len(history) == 1


def test_user_turns_merged_over_unheard_replies_keep_the_newest_within_max_chars() -> None:
    history = History("sys", max_chars=100)
    for n in range(50):  # turn after turn, no reply ever heard in between
        history.add_user(f"question {n:02d} " + "x" * 40)
    (turn,) = history.messages()[1:]
    assert len(turn["content"]) == 100
    assert turn["content"].endswith("question 49 " + "x" * 40)
    # One text longer than the limit still stays whole (the rule for a single turn).
    history.add_user("y" * 150)
    assert history.messages()[1]["content"] == "y" * 150
    # Without a character limit, merging is as before.
    unbounded = History("sys")
    unbounded.add_user("a")
    unbounded.add_user("b")
    assert unbounded.messages()[1]["content"] == "a b"


def test_empty_assistant_text_is_ignored() -> None:
    history = History("sys")
    history.add_user("Hi")
    history.add_assistant("")
    assert len(history) == 1


def test_messages_is_a_copy() -> None:
    history = History("sys")
    history.add_user("Hi")
    history.messages()[1]["content"] = "changed"
    assert history.messages()[1]["content"] == "Hi"


def test_max_turns_drops_the_oldest_pairs_and_keeps_the_system_prompt() -> None:
    history = History("sys", max_turns=4)
    for n in range(5):
        history.add_user(f"question {n}")
        history.add_assistant(f"answer {n}")
    messages = history.messages()
    assert messages[0] == {"role": "system", "content": "sys"}
    assert [m["content"] for m in messages[1:]] == [
        "question 3",
        "answer 3",
        "question 4",
        "answer 4",
    ]
    assert messages[1]["role"] == "user"


def test_max_turns_keeps_a_pending_user_turn() -> None:
    history = History("sys", max_turns=2)
    history.add_user("question 0")
    history.add_assistant("answer 0")
    history.add_user("question 1")
    assert [m["content"] for m in history.messages()[1:]] == ["question 1"]


def test_max_chars_drops_the_oldest_turns_by_the_same_rule() -> None:
    history = History("sys", max_turns=50, max_chars=30)
    history.add_user("first question?")  # 15
    history.add_assistant("first answer.")  # 13
    history.add_user("second?")  # 7: 35 > 30, the first pair goes
    assert [m["content"] for m in history.messages()] == ["sys", "second?"]
    assert history.dropped == 2


def test_one_turn_longer_than_max_chars_stays() -> None:
    history = History("sys", max_chars=10)
    history.add_user("a question far longer than ten characters")
    assert len(history) == 1


def test_max_turns_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        History("sys", max_turns=0)


# --- heard_text -----------------------------------------------------------------------

CHUNKS = [
    SpokenChunk("The capital of France,", 0.0, 1000.0),
    SpokenChunk("as you know, is Paris.", 1000.0, 2000.0),
    # 500 ms of silence between the chunks.
    SpokenChunk("one two three four five six seven eight nine ten", 2500.0, 4500.0),
]


@pytest.mark.parametrize("played_ms", [0.0, -10.0])
def test_nothing_heard_before_playback(played_ms: float) -> None:
    assert heard_text(CHUNKS, played_ms) == ""


def test_exact_at_a_chunk_end() -> None:
    assert heard_text(CHUNKS, 1000.0) == "The capital of France,"
    assert heard_text(CHUNKS, 2000.0) == "The capital of France, as you know, is Paris."


def test_proportional_inside_a_chunk() -> None:
    # Half of a 10-word chunk played: 5 words.
    assert heard_text(CHUNKS, 3500.0).endswith("Paris. one two three four five")


def test_partial_words_round_down() -> None:
    # 59% of 10 words: the sixth word was cut off, so it was not heard.
    assert heard_text(CHUNKS, 2500.0 + 0.59 * 2000.0).endswith("four five")
    # 30% of 10 words, despite float error, is 3 words.
    assert heard_text([SpokenChunk(CHUNKS[2].text, 1000.0, 2000.0)], 1300.0) == "one two three"
    # Less than one word's worth heard of the first chunk.
    assert heard_text(CHUNKS, 200.0) == ""


def test_stop_in_a_silent_gap_keeps_the_chunks_before() -> None:
    assert heard_text(CHUNKS, 2250.0) == "The capital of France, as you know, is Paris."
    assert heard_text(CHUNKS, 2500.0) == "The capital of France, as you know, is Paris."


def test_beyond_the_end_everything_was_heard() -> None:
    assert heard_text(CHUNKS, 10_000.0) == " ".join(c.text for c in CHUNKS)


def test_whitespace_is_normalised() -> None:
    chunks = [
        SpokenChunk("\n- First item", 0.0, 100.0),
        SpokenChunk("  Second  item ", 100.0, 200.0),
    ]
    assert heard_text(chunks, 200.0) == "- First item Second item"


def test_no_chunks() -> None:
    assert heard_text([], 1000.0) == ""


# --- fit_to_context -------------------------------------------------------------------


def _words(text: str) -> int:
    """One token a word, plus two for the template around a message."""
    return len(text.split()) + 2


def _turns(count: int) -> list[ChatMessage]:
    turns: list[ChatMessage] = []
    for index in range(count):
        turns.append(ChatMessage(role="user", content=f"question {index} " + "w " * 8))
        turns.append(ChatMessage(role="assistant", content=f"answer {index} " + "w " * 8))
    return turns


def test_fit_keeps_everything_that_fits() -> None:
    messages = [ChatMessage(role="system", content="be brief"), *_turns(3)]
    assert fit_to_context(messages, _words, budget=1000) == messages


def test_fit_keeps_the_system_prompt_and_the_newest_turns() -> None:
    system = ChatMessage(role="system", content="be brief " * 10)
    newest = ChatMessage(role="user", content="and the weather?")
    messages = [system, *_turns(10), newest]
    fitted = fit_to_context(messages, _words, budget=80)
    assert fitted is not None
    assert fitted[0] == system
    assert fitted[-1] == newest
    # A suffix of the turns, starting with a question: no reply without its question.
    kept = fitted[1:]
    assert kept == messages[len(messages) - len(kept):]
    assert kept[0]["role"] == "user"
    assert sum(_words(m["content"]) for m in fitted) <= 80
    # As many turns as fit: one more pair would not.
    assert sum(_words(m["content"]) for m in fitted) + 2 * 12 > 80


def test_fit_drops_a_question_with_its_answer() -> None:
    messages = [ChatMessage(role="system", content="s"), *_turns(2)]
    messages.append(ChatMessage(role="user", content="last"))
    total = sum(_words(m["content"]) for m in messages)
    fitted = fit_to_context(messages, _words, budget=total - 1)
    assert fitted is not None
    assert [m["content"].split()[:2] for m in fitted[1:]] == [
        ["question", "1"], ["answer", "1"], ["last"]
    ]


def test_fit_gives_up_when_the_system_prompt_and_the_newest_turn_do_not_fit() -> None:
    messages = [
        ChatMessage(role="system", content="rule " * 50),
        *_turns(2),
        ChatMessage(role="user", content="hello"),
    ]
    assert fit_to_context(messages, _words, budget=40) is None
    assert fit_to_context(messages[:1] + messages[-1:], _words, budget=55) is not None
