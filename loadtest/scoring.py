"""Scoring spoken answers: text normalised for matching, word error rate, right or wrong.

``normalize`` puts a transcript or a reply in one form: lower case, numbers as
words ("24" → "twenty four", "3.5" → "three point five", "1,000" → "one
thousand"), hyphens as spaces, "and" dropped after "hundred", punctuation
removed except apostrophes inside words. Whisper writes "two plus three" as
"2 plus 3" as often as not, and a model answers "8" or "eight": neither should
count as an error or a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer

from loadtest.spoken_questions import Question

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))

_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])")


def number_words(value: int) -> str:
    """``value`` (≥ 0) in English words, without "and": 366 → "three hundred sixty six"."""
    if value < 0:
        raise ValueError(f"number_words takes a non-negative integer, got {value}")
    if value < 20:
        return _ONES[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for scale, name in _SCALES:
        if value >= scale:
            high, rest = divmod(value, scale)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable: every value ≥ 100 has a scale")


def _spell_number(match: re.Match[str]) -> str:
    whole = number_words(int(match.group(1).replace(",", "")))
    fraction = match.group(2)
    if fraction is None:
        return f" {whole} "
    return f" {whole} point {' '.join(_ONES[int(digit)] for digit in fraction)} "


def normalize(text: str) -> str:
    """``text`` in the one form transcripts, references and replies are compared in."""
    text = text.lower().replace("%", " percent ").replace("°", " degrees ")
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[-‐‑–—/]", " ", text)
    text = re.sub(r"[’‘`]", "'", text)
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    text = re.sub(r"\bhundred and\b", "hundred", text)
    return " ".join(text.split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (edits over reference words, all pairs together), on normalised text."""
    if len(references) != len(hypotheses):
        raise ValueError("one hypothesis per reference")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def is_right(question: Question, reply: str) -> bool:
    """Whether ``reply`` answers ``question``: an accepted pattern and no rejected one."""
    text = normalize(reply)
    accepted = any(re.search(pattern, text) for pattern in question.accept)
    return accepted and not any(re.search(pattern, text) for pattern in question.reject)
