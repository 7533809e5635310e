"""Does a transcript end where an English sentence cannot? The learned policy's word cue.

The end-of-turn model (Smart Turn) hears prosody and leans on the silence; it lets
many cut-off sentences through. The speculative transcript arrives at the pause
anyway, so ``pipeline.turn_policy`` reads it: a transcript that ends *open* holds
the turn to the policy's maximum whatever the model says. Open means:

* the last word needs more after it: a conjunction, an article, "to", "of", a
  possessive, "um" (``OPEN_ENDINGS``), or a digit (a number being read out);
* a verb still waits for its object: "help me find", "please order", "I forgot to
  pick up" (``AWAITING_OBJECT``), unless the object came first, as in a question or
  a relative clause ("what should I buy", "that's all I need", "the one I want"),
  or the verb is a noun ("thanks for the call");
* a list is still being read out: items after such a verb, separated by commas,
  with no "and"/"or" before the last one yet ("please add some apples, a bag of
  onions").

A complete turn that looks open only waits for the policy's maximum (2 s by
default): the cheaper mistake, against answering half a request. The rules are
about English grammar, not about any benchmark's sentences; the examples in the
tests (tests/pipeline/test_turn_words.py) are phrasings the turn-taking corpus
does not use.
"""

from __future__ import annotations

import itertools
import re

OPEN_ENDINGS = frozenset(
    "and or but because the a an my your our their his her to of for with um uh".split()
)
"""Last words after which an English sentence is almost never finished. "in", "on",
"at" and "is" are left out: questions end on them ("what is it in?")."""
SPOKEN_DIGITS = frozenset("zero oh one two three four five six seven eight nine".split())
AWAITING_OBJECT = frozenset(
    """find buy order bring book reserve send get pay text email remind tell show give add
    put need want grab fetch schedule call cancel""".split()
)
"""Verbs that, last in a request, still wait for their object ("please call", "I
need"). Verbs that often end a sentence on their own ("stop", "close", "help",
"check", "leave") are left out."""
AWAITING_PARTICLE = frozenset({("pick", "up"), ("look", "up"), ("drop", "off"),
                               ("write", "down"), ("fill", "out")})
"""Phrasal verbs whose particle ends the words and still waits for an object ("I
forgot to pick up")."""
FRONTED = frozenset(
    """what which who whom whose where when why how whatever that everything anything
    something nothing all if as""".split()
)
"""Words that put a verb's object before it ("what do you want", "all I need") or
leave it understood ("if you want"): with one of them in the turn, a verb at the
end is not waiting."""
DETERMINERS = frozenset(
    "the a an my your our their his her its this that these those some any no every each".split()
)
"""Before one of the verbs, they make it a noun ("thanks for the call", "my order")."""
SUBJECTS = frozenset("i you we they he she".split())
CLAUSE_START = frozenset(
    """i you we they he she it that's it's i'm we're you're can could would will should
    do does is are thanks thank please bye goodbye""".split()
)
"""Words that start a new clause rather than another item of a list."""
CONJUNCTIONS = frozenset({"and", "or", "nor", "plus"})
LIST_ITEM_MAX_WORDS = 5
_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def verb_awaits_object(words: list[str]) -> bool:
    """The words end on a verb (or phrasal verb) whose object has not been said."""
    if not words:
        return False
    if len(words) >= 2 and (words[-2], words[-1]) in AWAITING_PARTICLE:
        verb_at = len(words) - 2
    elif words[-1] in AWAITING_OBJECT:
        verb_at = len(words) - 1
    else:
        return False
    if verb_at > 0 and words[verb_at - 1] in DETERMINERS:
        return False
    # "the one I want": a noun phrase, then its clause's subject and verb.
    if (verb_at >= 2 and words[verb_at - 1] in SUBJECTS
            and any(word in DETERMINERS for word in words[: verb_at - 1])):
        return False
    return not any(word in FRONTED for word in words[:verb_at])


def list_in_progress(text: str) -> bool:
    """Items after a verb, separated by commas, with no conjunction before the last
    yet: "I need butter, two lemons"."""
    if text.rstrip().endswith("?"):
        return False
    parts = [_words(part) for part in text.split(",")]
    if len(parts) < 2 or not all(parts):
        return False
    head, last = parts[0], parts[-1]
    if len(last) > LIST_ITEM_MAX_WORDS or last[0] in CLAUSE_START:
        return False
    if any(word in CONJUNCTIONS for part in parts[1:] for word in part):
        return False
    # The first item follows a verb that takes objects ("add", "need") or "of" ("out of").
    return any(word in AWAITING_OBJECT or word == "of" for word in head[:-1]) or any(
        pair in AWAITING_PARTICLE for pair in itertools.pairwise(head)
    )


def ends_open(text: str) -> bool:
    """True when ``text`` stops where a sentence cannot end: on a word that needs
    more after it, on a digit (a number being read out), on a verb still waiting for
    its object, or inside a list: "my number is four one five", "bread and", "help
    me find", "I need butter, two lemons"."""
    words = _words(text)
    if not words:
        return False
    last = words[-1]
    if last in OPEN_ENDINGS or last in SPOKEN_DIGITS or last[-1].isdigit():
        return True
    return verb_awaits_object(words) or list_in_progress(text)
