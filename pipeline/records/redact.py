"""Redaction of what call records keep: digits and e-mail addresses, written or spoken.

Applied to every text a record stores (transcripts, reply text, tool arguments and
results, error messages) before it leaves the process; what the caller hears and
what the model reads are untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REDACTABLE = ("digits", "emails")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPOKEN_EMAIL = re.compile(r"\b[\w.+-]+ at [\w-]+(?: dot [\w-]+)+\b", re.IGNORECASE)
"""How a transcript spells an address: "jane at example dot com"."""
_DIGIT = re.compile(r"\d")
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"
_SPOKEN_DIGITS = re.compile(
    rf"\b{_DIGIT_WORD}(?:[\s,-]+{_DIGIT_WORD}){{2,}}\b", re.IGNORECASE
)
"""Three or more digit words in a row ("four one five ..."): a number read out. Fewer
are ordinary speech ("one or two")."""
EMAIL_MARK = "[email]"
DIGIT_MARK = "#"
SPOKEN_DIGITS_MARK = "[digits]"


@dataclass(frozen=True, slots=True)
class Redaction:
    digits: bool = False
    emails: bool = False

    @classmethod
    def named(cls, names: tuple[str, ...] | list[str]) -> Redaction:
        """From setting values (``digits``, ``emails``); raises ValueError on others."""
        unknown = sorted(set(names) - set(REDACTABLE))
        if unknown:
            raise ValueError(f"cannot redact {unknown}; known: {list(REDACTABLE)}")
        return cls(digits="digits" in names, emails="emails" in names)

    @property
    def active(self) -> bool:
        return self.digits or self.emails

    def __call__(self, text: str) -> str:
        if self.emails:
            # First: an address holds digits, and its digits would leave it unmatched.
            text = _EMAIL.sub(EMAIL_MARK, text)
            text = _SPOKEN_EMAIL.sub(EMAIL_MARK, text)
        if self.digits:
            text = _DIGIT.sub(DIGIT_MARK, text)
            text = _SPOKEN_DIGITS.sub(SPOKEN_DIGITS_MARK, text)
        return text
