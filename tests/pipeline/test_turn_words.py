"""The learned policy's word cue: where a transcript cannot be a whole turn.

The phrasings below are not the turn-taking corpus's (loadtest/turn_corpus.py): the
rules are meant to be English grammar, not that set's sentences. Each open case has
complete ones beside it that share its last word, so a rule that simply lists the
corpus's endings fails here.
"""

from __future__ import annotations

import pytest

from pipeline.turn_words import ends_open, list_in_progress, verb_awaits_object


@pytest.mark.parametrize(
    ("text", "open_"),
    [
        # A last word that needs more.
        ("Where can I buy fresh bread and", True),
        ("I need to buy eggs, milk, and...", True),
        ("What is the capital of?", True),
        ("I would like to book a table for", True),
        ("So, um", True),
        ("What is the capital of Australia?", False),
        ("What is it in?", False),
        # Digits being read out.
        ("My phone number is 415.", True),
        ("my number is four one five", True),
        ("Can you set an alarm for 7.30 tomorrow morning?", False),
        # A verb still waiting for its object.
        ("Could you quickly send", True),
        ("I'd like you to reserve", True),
        ("Remember to grab", True),
        ("We should probably cancel", True),
        ("Can you look up", True),
        ("Don't forget to drop off", True),
        ("What should I bring?", False),
        ("Which one do you want?", False),
        ("That's everything I need.", False),
        ("Sure, if you want.", False),
        ("Thanks for the call.", False),
        ("I'd like to cancel my order.", False),
        ("Where do I pay?", False),
        ("Yes, that's the one I want.", False),
        # A list being read out.
        ("Could you get tomatoes, a jar of honey", True),
        ("Please send the invoice, the receipt", True),
        ("We ran out of sugar, paper towels", True),
        ("Could you get tomatoes, a jar of honey and some pasta?", False),
        ("I want pizza, please.", False),
        ("Thank you, goodbye.", False),
        ("Okay, sounds good.", False),
        ("Well, I think so.", False),
        ("Can you order pizza, pasta?", False),
        # Short turns.
        ("Yes.", False),
        ("No thanks.", False),
        ("", False),
        ("...", False),
    ],
)
def test_ends_open(text: str, open_: bool) -> None:
    assert ends_open(text) is open_


def test_the_verb_rule_needs_the_verb_last_and_no_object_before_it() -> None:
    assert verb_awaits_object(["please", "order"])
    assert not verb_awaits_object(["please", "order", "two"])
    assert not verb_awaits_object(["what", "did", "you", "order"])
    assert not verb_awaits_object(["my", "order"])
    assert not verb_awaits_object([])


def test_a_list_needs_a_verb_before_its_first_item() -> None:
    assert list_in_progress("I'd like to buy apples, pears")
    assert not list_in_progress("Apples, pears")
    assert not list_in_progress("I'd like to buy apples, pears and plums")
    # An item too long to be one is a new clause.
    assert not list_in_progress("I need butter, then we can go to the park together")
