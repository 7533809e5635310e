"""Speakable text and the streaming text chunker (sans-I/O).

The LLM streams text deltas; `TextChunker` turns them into `TextChunk`s for TTS.

* The first chunk is short so the first audio starts early: it ends at the first
  clause boundary (``,`` ``;`` ``:`` a spaced dash, or a sentence end) once it holds at
  least ``first_chunk_min_words`` words. With ``first_chunk_max_words`` set, a first
  clause still running at that many words is cut at the next word end instead
  (most replies of a small model are one sentence with no clause in it, so without
  this the first audio waits for the whole sentence).
* Later chunks are whole sentences. A sentence of fewer than three words is merged
  with the next one (list items such as "Mix." "Bake." would otherwise each cost a
  TTS call); a chunk that grows past ``max_chunk_chars`` without a sentence end is
  split at its last clause boundary, else at its last whitespace; one with neither
  (a 4000-character "word") is cut where it stands at twice that, so no chunk, and no
  TTS prompt, grows with the input.
* A line break outside a code block is a sentence boundary: list items, headings and
  table rows are read as sentences.
* A boundary is confirmed only by the character after it ("3." may become "3.5");
  `flush` confirms whatever is left. Decimals, "1,000", ellipses and abbreviations
  ("Dr.", "e.g.", "U.S. economy") do not end a sentence. So the chunks depend on the
  text only, never on how it was cut into deltas.

Code blocks (fenced with ``` or ~~~) are not read out: `make_speakable` replaces each
by nothing. A phrase such as "I've put the code in the chat" would be false on a phone
line, which has no chat. The chunker never cuts inside a fence, and a cut that would
leave a chunk with nothing to say is not taken, so a code block's markdown stays in
the ``display_text`` of the chunk that follows it. Only unspeakable text at the very
end of the stream (a closing code block) follows no chunk: `flush` leaves it in
`TextChunker.unspoken_tail`. Over a stream, the ``display_text``s followed by
``unspoken_tail`` are exactly the input text.

URLs are read as their domain ("example dot com"): the caller hears where to go, not
a path nobody can note down.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["ChunkerConfig", "TextChunk", "TextChunker", "make_speakable"]


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str
    """What the caller should hear (speakable), non-empty."""
    display_text: str
    """The original LLM text of this chunk, markdown intact, for transcripts/history."""
    index: int
    """0, 1, 2 ... within one response."""
    joins_next: bool = False
    """Cut between two words of one clause (``first_chunk_max_words``): the speech
    should run on into the next chunk without the pause a TTS leaves at an end."""


# --- speakable text -----------------------------------------------------------------

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^#{1,6}(\s+|$)")
_BLOCKQUOTE = re.compile(r"^(>\s?)+")
_BULLET = re.compile(r"^([-*+]|\d{1,3}[.)])\s+")
_RULE = re.compile(r"^([-*_]\s*){3,}$")
_TABLE_SEPARATOR = re.compile(r"^\|?(\s*:?-{2,}:?\s*\|)+\s*:?-*:?\s*\|?$")
_TERMINAL = ".!?:;,"

_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"\*(?=\S)([^*]+?)(?<=\S)\*")
_ITALIC_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)([^_]+?)(?<=\S)_(?!\w)")
_STRIKE = re.compile(r"~~(.+?)~~")
_CODE_SPAN = re.compile(r"`+([^`]*)`+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_PER = re.compile(r"(?<=\d)\s*/\s*(?=[A-Za-z])")
_TIMES_STAR = re.compile(r"(?<=\d)\s*\*\s*(?=\d)")

_URL = re.compile(
    r"\b(?:https?://|www\.)(?:www\.)?([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
    r"(?:[/?#:](?:[^\s<>\"')\]]*[^\s<>\"')\].,;:!?])?)?",
    re.IGNORECASE,
)
_TLDS = "com|org|net|io|dev|ai|edu|gov|co|uk|de|fr|app|info"
_BARE_DOMAIN = re.compile(rf"\b(?:[A-Za-z0-9-]+\.)+(?:{_TLDS})\b", re.IGNORECASE)

_ABBREVIATIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), spoken)
    for pattern, spoken in (
        (r"(?<!\w)e\.g\.", "for example"),
        (r"(?<!\w)i\.e\.", "that is"),
        (r"\betc\.(?=\s*$|\s+(?-i:[A-Z]))", "et cetera."),
        (r"\betc\.", "et cetera"),
        (r"\bvs\.?(?=\s)", "versus"),
        (r"\bDr\.(?=\s)", "Doctor"),
        (r"\bMrs\.(?=\s)", "Missus"),
        (r"\bMr\.(?=\s)", "Mister"),
        (r"\bProf\.(?=\s)", "Professor"),
        (r"\band/or\b", "and or"),
    )
)

_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
_UNITS: tuple[tuple[str, str, str], ...] = (
    # (written, singular, plural); longest first so "km/h" wins over "km".
    ("km/h", "kilometer per hour", "kilometers per hour"),
    ("m/s", "meter per second", "meters per second"),
    ("mph", "mile per hour", "miles per hour"),
    ("km", "kilometer", "kilometers"),
    ("kg", "kilogram", "kilograms"),
    ("cm", "centimeter", "centimeters"),
    ("mm", "millimeter", "millimeters"),
    ("ms", "millisecond", "milliseconds"),
)
_UNIT = re.compile(
    _NUMBER + r"\s*(" + "|".join(re.escape(unit) for unit, _, _ in _UNITS) + r")(?![\w/])"
)
_UNIT_WORDS = {unit: (singular, plural) for unit, singular, plural in _UNITS}
_TEMPERATURE = re.compile(r"\s*°\s*([CF])\b")
_CURRENCY_WORDS = {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds")}
_CURRENCY_BEFORE = re.compile(
    r"([$€£])\s?" + _NUMBER + r"(?:\s*(thousand|million|billion|trillion|[kKmMbB]n?)\b)?"
)
_CURRENCY_AFTER = re.compile(_NUMBER + r"\s?([€£])")
_MAGNITUDES = {"k": "thousand", "m": "million", "mn": "million", "b": "billion", "bn": "billion"}

_SYMBOLS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), spoken)
    for pattern, spoken in (
        (r"(?<![\w-])-(?=\d)", " minus "),
        (r"(?<=\d)\s*[x\u00d7]\s*(?=\d)", " times "),
        (r"÷", " divided by "),
        (r"(?<=[A-Za-z])/(?=[A-Za-z])", " or "),
        (r"\^2|²", " squared"),
        (r"\^3|³", " cubed"),
        (r"\^", " to the power of "),
        (r"°", " degrees"),
        (r"%", " percent"),
        (r"&", " and "),
        (r"@", " at "),
        (r"C\+\+", "C plus plus"),
        (r"\+", " plus "),
        (r">=|≥", " greater than or equal to "),
        (r"<=|≤", " less than or equal to "),
        (r"->|→|=>", " to "),
        (r"!=|≠", " is not equal to "),
        (r"==?", " equals "),
        (r"(?<=\s)>(?=\s)", " greater than "),
        (r"(?<=\s)<(?=\s)", " less than "),
        (r"~\s*(?=\d)|≈", " about "),
        (r"#(?=\d)", "number "),
        (r"(?<=\d)[\u2013-](?=\d)", " to "),
        (r"\s+[\u2014\u2013-]{1,2}(?:\s+|$)|\u2014", ", "),
    )
)
_LEFTOVER = re.compile(r"[*#|<>{}\[\]\\`~^]")
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cs", "Co", "Cn"})
_DROPPED_CHARACTERS = frozenset("\u200d\ufe0e\ufe0f\u20e3")


def make_speakable(text: str) -> str:
    """LLM text (markdown) to words a TTS engine can read; whitespace collapsed."""
    lines = [_speakable_line(line) for line in _drop_code_blocks(text).splitlines()]
    sentences = [line for line in lines if line]
    # A line break ends a sentence: every line but the last gets terminal punctuation
    # (list items, headings and table rows always do, in `_speakable_line`).
    spoken = " ".join(
        line if i == len(sentences) - 1 or line[-1] in _TERMINAL else line + "."
        for i, line in enumerate(sentences)
    )
    return _tidy(spoken)


def _drop_code_blocks(text: str) -> str:
    kept: list[str] = []
    fence = ""
    for line in text.splitlines():
        if fence:
            stripped = line.strip()
            if stripped and stripped == fence[0] * len(stripped) and len(stripped) >= len(fence):
                fence = ""
            continue
        opened = _FENCE_OPEN.match(line)
        if opened and not _is_inline_code(opened.group(1), line[opened.end() :]):
            fence = opened.group(1)
            continue
        kept.append(line)
    return "\n".join(kept)


def _is_inline_code(fence: str, info: str) -> bool:
    """A backtick "fence" followed by a backtick on its line is inline code (CommonMark)."""
    return fence[0] == "`" and "`" in info


def _speakable_line(line: str) -> str:
    line = line.strip()
    if _RULE.match(line) or _TABLE_SEPARATOR.match(line):
        return ""
    line = _BLOCKQUOTE.sub("", line)
    is_item = False
    for marker in (_HEADING, _BULLET):
        stripped = marker.sub("", line, count=1)
        is_item = is_item or stripped != line
        line = stripped
    if line.startswith("|") or line.endswith("|"):
        line = ", ".join(cell.strip() for cell in line.strip("|").split("|") if cell.strip())
        is_item = True
    line = _speak_words(line).strip().lstrip(",;:")
    if is_item and line and line[-1] not in _TERMINAL:
        line += "."
    return line


def _speak_words(text: str) -> str:
    text = _HTML_TAG.sub(" ", text)
    text = _TIMES_STAR.sub(" times ", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(lambda m: _spoken_domain(m.group(1)), text)
    text = _CODE_SPAN.sub(r"\1", text)
    text = _BOLD.sub(r"\2", text)
    text = _ITALIC_STAR.sub(r"\1", text)
    text = _ITALIC_UNDERSCORE.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
    for pattern, spoken in _ABBREVIATIONS:
        text = pattern.sub(spoken, text)
    text = _BARE_DOMAIN.sub(lambda m: _spoken_domain(m.group(0)), text)
    text = _TEMPERATURE.sub(lambda m: " degrees " + _TEMPERATURE_SCALES[m.group(1)], text)
    text = _UNIT.sub(_spoken_unit, text)
    text = _PER.sub(" per ", text)
    text = _CURRENCY_BEFORE.sub(_spoken_currency, text)
    text = _CURRENCY_AFTER.sub(lambda m: _spoken_amount(m.group(1), m.group(2), None), text)
    for pattern, spoken in _SYMBOLS:
        text = pattern.sub(spoken, text)
    text = _LEFTOVER.sub("", text).replace("_", " ")
    return "".join(
        char
        for char in text
        if char not in _DROPPED_CHARACTERS and unicodedata.category(char) not in _DROPPED_CATEGORIES
    )


_TEMPERATURE_SCALES = {"C": "Celsius", "F": "Fahrenheit"}


def _spoken_domain(domain: str) -> str:
    domain = domain.strip(".-")
    if domain.lower().startswith("www."):
        domain = domain[4:]
    return " dot ".join(part for part in domain.split(".") if part)


def _spoken_unit(match: re.Match[str]) -> str:
    singular, plural = _UNIT_WORDS[match.group(2)]
    return f"{match.group(1)} {singular if match.group(1) == '1' else plural}"


def _spoken_currency(match: re.Match[str]) -> str:
    return _spoken_amount(match.group(2), match.group(1), match.group(3))


def _spoken_amount(amount: str, symbol: str, magnitude: str | None) -> str:
    singular, plural = _CURRENCY_WORDS[symbol]
    if magnitude:
        magnitude = _MAGNITUDES.get(magnitude.lower(), magnitude)
        return f"{amount} {magnitude} {plural}"
    whole, _, cents = amount.partition(".")
    unit = singular if whole == "1" else plural
    if len(cents) == 2 and cents != "00":
        cent_unit = "pence" if symbol == "£" else "cents"
        spoken_cents = f"{int(cents)} {cent_unit}"
        return spoken_cents if whole == "0" else f"{whole} {unit} and {spoken_cents}"
    return f"{whole if cents in ('', '00') else amount} {unit}"


_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")
_REPEATED_COMMA = re.compile(r",(\s*,)+")
_COMMA_BEFORE_STOP = re.compile(r",\s*([.;:!?])")


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = _REPEATED_COMMA.sub(",", text)
    text = _COMMA_BEFORE_STOP.sub(r"\1", text)
    return text.lstrip(" ,;:.!?")


# --- the streaming chunker ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    first_chunk_min_words: int = 3
    """The first chunk ends at the first clause boundary that follows this many words."""
    first_chunk_at_clause: bool = True
    """False: the first chunk waits for a sentence end, like the later ones (loadtest
    measures what the early clause saves)."""
    first_chunk_max_words: int = 0
    """Above 0: a first chunk with no boundary yet is cut after this many words, at
    the end of a plain word (never after an abbreviation's dot, inside markdown
    emphasis or code). 0: only boundaries cut it. Ignored when
    ``first_chunk_at_clause`` is off."""
    max_chunk_chars: int = 250
    """Soft maximum: a longer chunk is split at a clause boundary or whitespace. Text
    with neither is cut where it stands at twice this (a hard maximum): a batched TTS
    pads every call's prompt to the longest one, so one caller's unbroken run must not
    grow everybody's step."""


_MIN_SENTENCE_WORDS = 3
"""A later sentence shorter than this is merged with the next one."""

_SENTENCE_ENDS = frozenset(".!?")
_CLAUSE_ENDS = frozenset(",;:")
_DASHES = frozenset("-\u2013\u2014")
_CLOSERS = frozenset("\"'\u201d\u2019»)]*_`")
_TOKEN_OPENERS = "\"'\u201c\u2018«([*_`"
_NEVER_SENTENCE_END = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "gen", "col", "capt", "lt", "sgt"}
    | {"fig", "vol", "approx", "cf", "vs", "e.g", "i.e", "eg", "ie"}
)
_SENTENCE_END_IF_CAPITAL = frozenset({"etc", "inc", "ltd", "co", "corp", "jr", "sr"})


@dataclass(frozen=True, slots=True)
class _Step:
    resume: int
    """Where scanning continues."""
    cut: int = -1
    """A boundary: the chunk would be ``buffer[:cut]``; -1 when there is none."""
    sentence: bool = False
    """The boundary ends a sentence (not only a clause)."""


class TextChunker:
    """LLM text deltas in, `TextChunk`s for TTS out. One response at a time.

    `flush` ends the response and leaves the chunker ready for the next one.
    """

    def __init__(self, config: ChunkerConfig = ChunkerConfig()) -> None:
        self._config = config
        self.unspoken_tail = ""
        """Text after the last chunk that has nothing to say (a closing code block);
        set by `flush`, so a transcript can keep it."""
        self._reset()

    def _reset(self) -> None:
        self._buffer = ""
        """Text of the chunk in progress, from the end of the last chunk."""
        self._pos = 0
        """Everything before this index of the buffer has been scanned."""
        self._index = 0
        self._line_start: int | None = 0
        """Buffer index where the current line starts; None when it began in a past chunk."""
        self._at_line_start = True
        self._fence = ""
        """The opening run (``` or ~~~) of the code block we are in, else empty."""
        self._prose_chars = 0
        """Characters of the chunk in progress outside code blocks (for the max)."""
        # Where a chunk that grew too long may be cut, and the pair last tried.
        self._last_clause: int | None = None
        self._last_space: int | None = None
        self._forced_tried: tuple[int | None, int | None] = (None, None)
        self._hard_cut_at = 2 * self._config.max_chunk_chars
        """Prose characters at which the chunk is cut where it stands."""

    def push(self, delta: str) -> list[TextChunk]:
        """Add an LLM delta; return the chunks it completed (often none)."""
        if delta:
            self.unspoken_tail = ""
        self._buffer += delta
        return self._scan(final=False)

    def flush(self) -> list[TextChunk]:
        """End of stream: the chunks left, the last one unconfirmed by following text."""
        chunks = self._scan(final=True)
        rest, index = self._buffer, self._index
        self._reset()
        spoken = make_speakable(rest)
        if spoken:
            chunks.append(TextChunk(spoken, rest, index))
        else:
            self.unspoken_tail = rest
        return chunks

    def _scan(self, *, final: bool) -> list[TextChunk]:
        chunks: list[TextChunk] = []
        while self._pos < len(self._buffer):
            if self._fence:
                if not self._skip_fence_line(final):
                    break
                continue
            if self._at_line_start:
                opened = self._open_fence(final)
                if opened is None:
                    break
                self._at_line_start = False
                if opened:
                    continue
            i = self._pos
            step = self._step(i, final)
            if step is None:
                break
            self._pos = step.resume
            self._prose_chars += step.resume - i
            char = self._buffer[i]
            if char == "\n":
                self._line_start, self._at_line_start = i + 1, True
            elif char.isspace():
                self._last_space = i
                if (chunk := self._cut_first_at_word(i)) is not None:
                    chunks.append(chunk)
                    continue
            if step.cut >= 0:
                chunk = self._cut(step.cut, step.sentence)
                if chunk is not None:
                    chunks.append(chunk)
                    continue
                self._last_clause = step.cut
            if self._prose_chars > self._config.max_chunk_chars:
                chunk = self._force_cut() or self._hard_cut()
                if chunk is not None:
                    chunks.append(chunk)
        return chunks

    def _step(self, i: int, final: bool) -> _Step | None:
        """Whether ``buffer[i]`` starts a boundary; None while the text after is unknown."""
        text, char = self._buffer, self._buffer[i]
        if char == "\n":
            return _Step(i + 1, cut=i, sentence=True)
        if char in _SENTENCE_ENDS:
            return self._sentence_end(i, final)
        if char in _CLAUSE_ENDS:
            if i + 1 == len(text):
                return _Step(i + 1, cut=i + 1) if final else None
            return _Step(i + 1, cut=i + 1 if text[i + 1].isspace() else -1)
        if char in _DASHES:
            return self._dash(i, final)
        return _Step(i + 1)

    def _sentence_end(self, i: int, final: bool) -> _Step | None:
        text = self._buffer
        end = _skip(text, i, _SENTENCE_ENDS)
        after = _skip(text, end, _CLOSERS)
        if after == len(text) and not final:
            return None
        punctuation = text[i:end]
        if punctuation.count(".") > 1 or (after < len(text) and not text[after].isspace()):
            return _Step(end)  # an ellipsis, "3.5", "e.g" or "file.txt"
        if punctuation == ".":
            token_start = i
            while token_start > 0 and not text[token_start - 1].isspace():
                token_start -= 1
            token = text[token_start:i].lstrip(_TOKEN_OPENERS).lower()
            if self._is_list_number(token, token_start) or token in _NEVER_SENTENCE_END:
                return _Step(end)
            if len(token) == 1 and text[i - 1].isupper():
                return _Step(end)  # an initial, "J. K. Rowling"
            if token in _SENTENCE_END_IF_CAPITAL or "." in token:
                # "etc." and "U.S." end a sentence only before a capital letter.
                following = after
                while following < len(text) and text[following].isspace():
                    following += 1
                if following == len(text) and not final:
                    return None
                if following < len(text) and not text[following].isupper():
                    return _Step(end)
        return _Step(after, cut=after, sentence=True)

    def _is_list_number(self, token: str, token_start: int) -> bool:
        line_start = self._line_start
        return (
            token.isdigit()
            and line_start is not None
            and not self._buffer[line_start:token_start].strip()
        )

    def _dash(self, i: int, final: bool) -> _Step | None:
        """A spaced dash, or an em dash, after words on its line is a clause boundary."""
        text = self._buffer
        end = _skip(text, i, _DASHES)
        if end == len(text) and not final:
            return None
        run = text[i:end]
        line_start = 0 if self._line_start is None else self._line_start
        words_before = self._line_start is None or bool(text[line_start:i].strip())
        spaced = i > 0 and text[i - 1].isspace() and (end == len(text) or text[end].isspace())
        if words_before and len(run) <= 2 and ("\u2014" in run or spaced):
            return _Step(end, cut=end)
        return _Step(end)

    def _open_fence(self, final: bool) -> bool | None:
        """At a line start: enter a code block if one opens here; None: not known yet."""
        text = self._buffer
        indent_end = _skip(text, self._pos, frozenset(" "))
        if indent_end - self._pos > 3:
            return False
        if indent_end == len(text):
            return None if not final else False
        marker = text[indent_end]
        if marker not in "`~":
            return False
        run_end = _skip(text, indent_end, frozenset(marker))
        if run_end - indent_end < 3:
            return False if run_end < len(text) or final else None
        line_end = text.find("\n", run_end)
        if line_end == -1 and not final:
            return None
        line_end = len(text) if line_end == -1 else line_end
        if _is_inline_code(marker, text[run_end:line_end]):
            return False
        self._fence = text[indent_end:run_end]
        self._pos = min(line_end + 1, len(text))
        return True

    def _skip_fence_line(self, final: bool) -> bool:
        """Inside a code block: pass one whole line; False while it is incomplete."""
        text = self._buffer
        line_end = text.find("\n", self._pos)
        if line_end == -1:
            if not final:
                return False
            line_end = len(text)
        line = text[self._pos : line_end].strip()
        fence = self._fence
        if line and line == fence[0] * len(line) and len(line) >= len(fence):
            self._fence = ""
            self._pos = line_end  # the newline after the fence is a boundary
        else:
            self._pos = min(line_end + 1, len(text))
        return True

    def _cut(self, cut: int, sentence: bool) -> TextChunk | None:
        """Emit ``buffer[:cut]`` if it is long enough to stand alone."""
        if self._index == 0 and (sentence or self._config.first_chunk_at_clause):
            min_words = self._config.first_chunk_min_words
        elif sentence:
            min_words = _MIN_SENTENCE_WORDS
        else:
            return None
        return self._emit(cut, min_words)

    def _cut_first_at_word(self, space: int) -> TextChunk | None:
        """The first chunk has reached ``first_chunk_max_words``: cut at this space if
        the word before it ends plainly (a letter or digit, outside markup)."""
        limit = self._config.first_chunk_max_words
        if self._index != 0 or limit <= 0 or not self._config.first_chunk_at_clause:
            return None
        head = self._buffer[:space]
        if not head or not head[-1].isalnum() or len(head.split()) < limit:
            return None
        if any(head.count(mark) % 2 for mark in ("**", "`", "__")) or head.count("*") % 2:
            return None  # emphasis or code still open: its closing mark comes later
        return self._emit(space, limit, joins_next=True)

    def _force_cut(self) -> TextChunk | None:
        """The chunk is too long: cut at its last clause boundary, else its last space."""
        candidates = (self._last_clause, self._last_space)
        if candidates == self._forced_tried:
            return None
        self._forced_tried = candidates
        clause, space = candidates
        half = self._config.max_chunk_chars // 2
        for cut in (clause if clause is not None and clause >= half else None, space, clause):
            if cut is not None and (chunk := self._emit(cut, 1)) is not None:
                return chunk
        return None

    def _hard_cut(self) -> TextChunk | None:
        """No boundary and no space in twice the soft maximum: cut here, mid-word.
        A run with nothing to say is tried again a soft maximum later (not at every
        character: each try reads the whole chunk)."""
        if self._prose_chars < self._hard_cut_at:
            return None
        chunk = self._emit(self._pos, 1, joins_next=True)
        if chunk is None:
            self._hard_cut_at = self._prose_chars + self._config.max_chunk_chars
        return chunk

    def _emit(self, cut: int, min_words: int, *, joins_next: bool = False) -> TextChunk | None:
        display = self._buffer[:cut]
        spoken = make_speakable(display)
        if not spoken or len(spoken.split()) < min_words:
            return None
        chunk = TextChunk(spoken, display, self._index, joins_next)
        self._index += 1
        self._buffer = self._buffer[cut:]
        self._pos -= cut
        if self._line_start is not None:
            self._line_start = self._line_start - cut if self._line_start >= cut else None
        self._prose_chars = self._pos
        self._last_clause = self._last_space = None
        self._forced_tried = (None, None)
        self._hard_cut_at = 2 * self._config.max_chunk_chars
        return chunk


def _skip(text: str, start: int, chars: frozenset[str]) -> int:
    """The first index from ``start`` whose character is not in ``chars``."""
    end = start
    while end < len(text) and text[end] in chars:
        end += 1
    return end
