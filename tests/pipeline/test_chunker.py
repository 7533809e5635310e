"""The text chunker and speakable text: text in, chunks out, no event loop."""

from __future__ import annotations

import random

import pytest

from pipeline.chunker import ChunkerConfig, TextChunk, TextChunker, make_speakable

ANSWER = (
    "The capital of France, as you know, is Paris. It has about 2.1 million people, "
    "e.g. more than 1,000 per square km. Dr. Smith moved there from the U.S. last year. "
    "Wait... is that right? Yes!\n\nHere is how:\n- Take the train from London\n"
    "- Pay about $50 for it\n\nAnd some code:\n```python\nprint('Hello. World, again.')\n"
    "x = 3.5\n```\nThat prints a greeting. It is 100°C outside — hot."
)


def chunk_all(text: str, deltas: list[str] | None = None) -> tuple[list[TextChunk], str]:
    chunker = TextChunker()
    chunks: list[TextChunk] = []
    for delta in [text] if deltas is None else deltas:
        chunks += chunker.push(delta)
    chunks += chunker.flush()
    return chunks, chunker.unspoken_tail


def spoken(text: str) -> list[str]:
    return [chunk.text for chunk in chunk_all(text)[0]]


def random_deltas(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    deltas, start = [], 0
    while start < len(text):
        size = rng.randint(1, 12)
        deltas.append(text[start : start + size])
        start += size
    return deltas


# --- the first chunk ends early -------------------------------------------------------


def test_first_chunk_ends_at_first_clause_with_enough_words() -> None:
    assert spoken("The capital of France, as you know, is Paris.") == [
        "The capital of France,",
        "as you know, is Paris.",
    ]


def test_first_chunk_needs_three_words_before_a_clause() -> None:
    assert spoken("Sure, I can help with that. The capital is Paris.") == [
        "Sure, I can help with that.",
        "The capital is Paris.",
    ]


def test_first_chunk_min_words_is_configurable() -> None:
    chunker = TextChunker(ChunkerConfig(first_chunk_min_words=1))
    assert [c.text for c in chunker.push("Sure, I can help.")] == ["Sure,"]


@pytest.mark.parametrize("dash", [" \u2014 ", "\u2014", " - ", " \u2013 "])
def test_first_chunk_ends_at_a_dash(dash: str) -> None:
    assert spoken(f"It is very hot outside{dash}stay in.")[0] == "It is very hot outside,"


def test_hyphens_and_bullets_are_not_dashes() -> None:
    assert spoken("A well-known fact is true.") == ["A well-known fact is true."]


# --- later chunks are sentences -------------------------------------------------------


def test_later_chunks_are_sentences_not_clauses() -> None:
    chunks = spoken("Well, here we go now. First, we open it, then we read it. Then we close it.")
    assert chunks == [
        "Well, here we go now.",
        "First, we open it, then we read it.",
        "Then we close it.",
    ]


def test_short_sentences_merge_with_the_next() -> None:
    assert spoken("Here is my answer. Yes. No. It depends on you.") == [
        "Here is my answer.",
        "Yes. No. It depends on you.",
    ]


@pytest.mark.parametrize(
    "sentence",
    [
        "It costs 3.5 euros in total today.",
        "There are 1,000 people here right now.",
        "Dr. Smith and Mr. Jones came along.",
        "Fruit, e.g. apples, is healthy for you.",
        "That is, i.e. in short, the whole point.",
        "The U.S. economy grew this year.",
        "Well... maybe we should go later.",
        "J. K. Rowling wrote that book.",
        "Please open the file.txt now.",
    ],
)
def test_no_split_inside_a_sentence(sentence: str) -> None:
    text = f"This is the first one. {sentence} This is the last one."
    assert [c.display_text.strip() for c in chunk_all(text)[0]] == [
        "This is the first one.",
        sentence,
        "This is the last one.",
    ]


def test_sentence_end_inside_quotes_and_emphasis() -> None:
    assert spoken('He said "Hi there." Then he **left the room.** Then we sat down.') == [
        'He said "Hi there."',
        "Then he left the room.",
        "Then we sat down.",
    ]


def test_abbreviation_ends_a_sentence_before_a_capital() -> None:
    assert spoken("We bought apples, pears, etc. Then we went home.") == [
        "We bought apples,",
        "pears, et cetera.",
        "Then we went home.",
    ]


def test_long_sentence_is_split_at_a_clause() -> None:
    text = "Then " + "we walk a long way, " * 20 + "and rest."
    chunks = chunk_all("Fine, here we go now. " + text)[0]
    assert all(len(c.display_text) <= 250 for c in chunks)
    assert [c.display_text.endswith(",") for c in chunks[1:-1]] == [True] * (len(chunks) - 2)
    assert len(chunks) >= 3


def test_long_run_without_punctuation_is_split_at_whitespace() -> None:
    chunks = chunk_all("word " * 100)[0]
    assert len(chunks) == 2
    assert len(chunks[0].display_text) <= 251
    assert " ".join(c.text for c in chunks).split() == ["word"] * 100


@pytest.mark.parametrize("deltas", [1, 7, 4000])
def test_a_run_with_no_space_is_cut_at_the_hard_maximum(deltas: int) -> None:
    """A 4000-character "word" (an /v1/audio/speech input, a hostile LLM output) must
    not reach the TTS as one prompt: a batched TTS pads every call to the longest."""
    text = "Hello there. " + "x" * 4000
    chunks = chunk_all(text, [text[i : i + deltas] for i in range(0, len(text), deltas)])[0]
    assert max(len(c.display_text) for c in chunks) <= 2 * ChunkerConfig().max_chunk_chars
    assert "".join(c.display_text for c in chunks) == text
    assert len(chunks) >= 4000 // 500
    assert all(c.joins_next for c in chunks[1:-1])


def test_an_unspeakable_run_is_not_re_read_at_every_character() -> None:
    """Markup with nothing to say cannot be cut into a chunk; the hard cut is then
    tried again a soft maximum later, so the chunker's work stays linear."""
    chunker = TextChunker()
    calls = 0
    original = chunker._emit

    def counting(*args: object, **kwargs: object) -> TextChunk | None:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    chunker._emit = counting  # type: ignore[method-assign]
    for _ in range(100):
        assert chunker.push("*" * 100) == []
    assert calls <= 10_000 // ChunkerConfig().max_chunk_chars + 1


# --- streaming ------------------------------------------------------------------------


def test_boundary_waits_for_the_next_character() -> None:
    chunker = TextChunker()
    assert chunker.push("Now the price is 3.") == []
    assert chunker.push("5 euros. Fine") == [
        TextChunk("Now the price is 3.5 euros.", "Now the price is 3.5 euros.", 0)
    ]
    assert [c.text for c in chunker.flush()] == ["Fine"]


@pytest.mark.parametrize("seed", range(20))
def test_chunks_do_not_depend_on_deltas(seed: int) -> None:
    whole = chunk_all(ANSWER)
    assert chunk_all(ANSWER, list(ANSWER)) == whole
    assert chunk_all(ANSWER, random_deltas(ANSWER, seed)) == whole


def test_display_text_concatenates_to_the_input() -> None:
    for deltas in (None, list(ANSWER), random_deltas(ANSWER, 7)):
        chunks, tail = chunk_all(ANSWER, deltas)
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert "".join(c.display_text for c in chunks) + tail == ANSWER
        assert "".join(c.display_text for c in chunks).split() == ANSWER.split()


FUZZ_PIECES = [
    *("Hello", "there", "word", "the", "a", "3.5", "1,000", "Dr.", "e.g.", "U.S.", "etc."),
    *("...", "\u2014", " - ", ",", ".", "!", "?", ":", "\n", "\n\n", "\n- ", "\n1. ", "\n# "),
    *("**", "`", "$5", "100°C", "km/h", "\U0001f600", "https://x.com/a.", "| a | b |"),
    *("\n```python\nSECRET. x, y\n```\n", "\n~~~\nSECRET, z\n~~~\n"),
]


@pytest.mark.parametrize("seed", range(50))
def test_properties_hold_on_random_markdown(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [rng.choice(FUZZ_PIECES) + rng.choice(["", " ", "  "]) for _ in range(60)]
    text = "".join(pieces)
    chunks, tail = whole = chunk_all(text)
    assert "".join(c.display_text for c in chunks) + tail == text
    assert all(c.text and c.text == c.text.strip() for c in chunks)
    assert all("SECRET" not in c.text for c in chunks)
    assert chunk_all(text, list(text)) == whole
    assert chunk_all(text, random_deltas(text, seed)) == whole


def test_flush_emits_the_rest_and_resets() -> None:
    chunker = TextChunker()
    assert chunker.push("No punctuation at the end") == []
    assert chunker.flush() == [
        TextChunk("No punctuation at the end", "No punctuation at the end", 0)
    ]
    assert chunker.flush() == []
    assert chunker.push("A new answer starts, again.")[0].index == 0


def test_flush_confirms_a_waiting_boundary() -> None:
    chunker = TextChunker()
    assert chunker.push("This is the first sentence. And the second one ends here.") == [
        TextChunk("This is the first sentence.", "This is the first sentence.", 0)
    ]
    assert [c.text for c in chunker.flush()] == ["And the second one ends here."]


# --- code blocks ----------------------------------------------------------------------


def test_code_block_streamed_across_many_deltas_emits_nothing_from_inside() -> None:
    code = "Here is the code:\n```python\n" + "total = add(1, 2). Then, go: on\n" * 30
    code += "```\nThat adds two numbers. Hope it helps you."
    chunker = TextChunker()
    chunks: list[TextChunk] = []
    for char in code:
        chunks += chunker.push(char)
        assert not any("total" in c.text for c in chunks)
    chunks += chunker.flush()
    assert [c.text for c in chunks] == [
        "Here is the code:",
        "That adds two numbers.",
        "Hope it helps you.",
    ]
    assert "```python" in chunks[1].display_text  # the code stays in the transcript


def test_nothing_is_emitted_while_a_fence_is_open() -> None:
    chunker = TextChunker()
    assert [c.text for c in chunker.push("Run this command now:\n```\n")] == [
        "Run this command now:"
    ]
    assert chunker.push("echo one. echo two, three.\nls -l. done.\n") == []
    assert chunker.push("```") == []
    assert [c.text for c in chunker.push("\nThat lists the files.\n")] == ["That lists the files."]


def test_trailing_code_block_is_kept_as_unspoken_tail() -> None:
    text = "Here is the code for you.\n```\nprint(1)\n```\n"
    chunks, tail = chunk_all(text)
    assert [c.text for c in chunks] == ["Here is the code for you."]
    assert tail == "\n```\nprint(1)\n```\n"


def test_unclosed_fence_is_never_read() -> None:
    assert spoken("Here is the code for you:\n```\nprint('never read')") == [
        "Here is the code for you:"
    ]


def test_inline_triple_backticks_are_not_a_fence() -> None:
    assert spoken("```ls``` lists the files here.") == ["ls lists the files here."]


# --- markdown -------------------------------------------------------------------------


def test_markdown_list_items_become_sentences() -> None:
    text = "Here are the options:\n- First option here\n* Second option here\n3. Third option here"
    assert spoken(text) == [
        "Here are the options:",
        "First option here.",
        "Second option here.",
        "Third option here.",
    ]


def test_chunk_keeps_markdown_in_display_text() -> None:
    chunks, _ = chunk_all("This is **really** important. See [the docs](https://a.io/x) now.")
    assert chunks[0] == TextChunk("This is really important.", "This is **really** important.", 0)
    assert chunks[1].text == "See the docs now."


# --- symbols --------------------------------------------------------------------------


def test_symbols_become_words_in_chunks() -> None:
    assert spoken("It is 100°C outside. We drove at 60 km/h. Prices fell 50% at AT&T.") == [
        "It is 100 degrees Celsius outside.",
        "We drove at 60 kilometers per hour.",
        "Prices fell 50 percent at AT and T.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 100°C outside.", "It is 100 degrees Celsius outside."),
        ("It is -5°F.", "It is minus 5 degrees Fahrenheit."),
        ("Turn 90° left.", "Turn 90 degrees left."),
        (
            "60 km/h and 3 m/s and 1 km",
            "60 kilometers per hour and 3 meters per second and 1 kilometer",
        ),
        ("50%", "50 percent"),
        ("AT&T", "AT and T"),
        ("$5", "5 dollars"),
        ("$1 or $5.50 or $0.99", "1 dollar or 5 dollars and 50 cents or 99 cents"),
        ("$2 million", "2 million dollars"),
        ("€20 and 30€ and £3", "20 euros and 30 euros and 3 pounds"),
        ("$10/month", "10 dollars per month"),
        ("2 + 2 = 4", "2 plus 2 equals 4"),
        ("x² or 2^3", "x squared or 2 cubed"),
        ("~5 minutes", "about 5 minutes"),
        ("mail me @ bob@example.com", "mail me at bob at example dot com"),
        ("yes/no", "yes or no"),
        ("e.g. this, i.e. that, etc.", "for example this, that is that, et cetera."),
        ("cats vs. dogs", "cats versus dogs"),
        ("Dr. Smith", "Doctor Smith"),
        ("3.5 and 1,000", "3.5 and 1,000"),
        ("C++ is #1", "C plus plus is number 1"),
        ("1\u20135 people", "1 to 5 people"),
        ("Great job \U0001f600\U0001f44d\U0001f3fd!", "Great job!"),
        ("a_b *c* {d} [e] \\f | g", "a b c d e f g"),
        ("if x < 5 or y >= 2", "if x less than 5 or y greater than or equal to 2"),
    ],
)
def test_make_speakable_symbols(text: str, expected: str) -> None:
    assert make_speakable(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**bold** and __bold__ and *it* and _it_", "bold and bold and it and it"),
        ("Use `ls -l` here.", "Use ls -l here."),
        ("# Title\nSome text", "Title. Some text"),
        ("## Steps:", "Steps:"),
        ("See [the docs](https://docs.x.io/a).", "See the docs."),
        ("![a cat](cat.png) Nice.", "Nice."),
        ("> quoted words", "quoted words"),
        ("| a | b |\n|---|:---:|\n| 1 | 2 |", "a, b. 1, 2."),
        ("- one\n- two!\n1. three", "one. two! three."),
        ("Text\n\n---\n\nMore", "Text. More"),
        ("Before\n```js\nlet a = 1;\n```\nafter", "Before. after"),
        ("Visit https://www.example.com/a/b?q=1.", "Visit example dot com."),
        ("Go to example.org now", "Go to example dot org now"),
        ("~~old~~ new", "old new"),
        ("a <br> tag", "a tag"),
        ("  lots   of\tspace  ", "lots of space"),
        ("", ""),
        ("```\nonly code\n```", ""),
    ],
)
def test_make_speakable_markdown(text: str, expected: str) -> None:
    assert make_speakable(text) == expected


# --- the first chunk cut at a word count ----------------------------------------------


def chunk_with(config: ChunkerConfig, deltas: list[str]) -> list[TextChunk]:
    chunker = TextChunker(config)
    chunks: list[TextChunk] = []
    for delta in deltas:
        chunks += chunker.push(delta)
    return chunks + chunker.flush()


@pytest.mark.parametrize("seed", range(20))
def test_a_long_first_clause_is_cut_after_the_word_limit_however_it_streams(seed: int) -> None:
    reply = "The capital city of France is Paris, and it is lovely. It has a river."
    config = ChunkerConfig(first_chunk_max_words=4)
    chunks = chunk_with(config, random_deltas(reply, seed))
    assert [chunk.text for chunk in chunks] == [
        "The capital city of",
        "France is Paris, and it is lovely.",
        "It has a river.",
    ]
    assert "".join(chunk.display_text for chunk in chunks) == reply


def test_without_a_word_limit_the_first_chunk_waits_for_a_boundary() -> None:
    reply = "The capital city of France is Paris. It has a river."
    chunks = chunk_with(ChunkerConfig(), [reply])
    assert chunks[0].text == "The capital city of France is Paris."


def test_a_clause_inside_the_limit_still_ends_the_first_chunk_first() -> None:
    reply = "Well now, the capital city of France is Paris."
    chunks = chunk_with(ChunkerConfig(first_chunk_max_words=6, first_chunk_min_words=2), [reply])
    assert [chunk.text for chunk in chunks] == ["Well now,", "the capital city of France is Paris."]


@pytest.mark.parametrize(
    ("reply", "first"),
    [
        # never after an abbreviation's dot, nor inside emphasis or code
        ("So we asked Dr. Smith about it today.", "So we asked Doctor Smith"),
        ("The **very best answer** is here today.", "The very best answer is"),
        ("Run `ls -la now` in a shell window please.", "Run ls -la now in"),
        ("The U.S. economy grew very fast that year.", "The U.S. economy grew"),
    ],
)
def test_the_word_cut_waits_for_a_plain_word_end(reply: str, first: str) -> None:
    chunks = chunk_with(ChunkerConfig(first_chunk_max_words=4), list(reply))
    assert chunks[0].text == first
    assert "".join(chunk.display_text for chunk in chunks) == reply


def test_the_word_limit_applies_to_the_first_chunk_only() -> None:
    reply = "Yes. The second sentence here is a rather long one without any clause at all."
    chunks = chunk_with(ChunkerConfig(first_chunk_max_words=2, first_chunk_min_words=1), [reply])
    assert [chunk.text for chunk in chunks] == [
        "Yes.",
        "The second sentence here is a rather long one without any clause at all.",
    ]


def test_the_word_limit_is_off_when_the_first_chunk_waits_for_a_sentence() -> None:
    reply = "The capital city of France is Paris."
    config = ChunkerConfig(first_chunk_max_words=3, first_chunk_at_clause=False)
    assert [chunk.text for chunk in chunk_with(config, [reply])] == [reply]
