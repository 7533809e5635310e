"""The spoken-QA benchmark's scoring: normalisation, word error rate, right or wrong.

Only the scoring runs here; the benchmark itself (``python -m loadtest.accuracy``)
is never run by the test suite.
"""

from __future__ import annotations

import math

import pytest

from loadtest.accuracy import (
    PREVIOUS_INSTRUCTIONS,
    VOICES,
    Asked,
    answer_of,
    interleave,
    parse_variant,
    plan,
    render,
    summarize,
    summarize_variants,
)
from loadtest.scoring import is_right, normalize, number_words, word_error_rate
from loadtest.spoken_questions import QUESTIONS, Question
from pipeline.errors import ConfigurationError


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (15, "fifteen"),
        (20, "twenty"),
        (56, "fifty six"),
        (100, "one hundred"),
        (212, "two hundred twelve"),
        (366, "three hundred sixty six"),
        (1000, "one thousand"),
        (1_000_001, "one million one"),
    ],
)
def test_number_words(value: int, words: str) -> None:
    assert number_words(value) == words


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Seven times eight is 56.", "seven times eight is fifty six"),
        ("three hundred and sixty-six", "three hundred sixty six"),
        ("It's 1,000 km, or 3.5%!", "it's one thousand km or three point five percent"),
        ("C-A-T.", "c a t"),
        ("Water boils at 100°C", "water boils at one hundred degrees c"),
        ("He said 'hello' — twice", "he said hello twice"),
        ("CO2 and the 21st", "co2 and the 21st"),
        ("  Mixed   CASE\n", "mixed case"),
    ],
)
def test_normalize(text: str, normal: str) -> None:
    assert normalize(text) == normal


def test_word_error_rate() -> None:
    assert word_error_rate(["What is two plus three?"], ["what is 2 plus 3"]) == 0.0
    # "free colors" for "three colors": one substitution in four words.
    assert word_error_rate(["Name the three colors"], ["Name the free colors."]) == 0.25
    # Corpus WER: edits over all reference words (1 + 2 edits over 4 + 2 words).
    assert word_error_rate(["a b c d", "e f"], ["a x c d", ""]) == pytest.approx(3 / 6)
    assert math.isnan(word_error_rate([""], ["anything"]))
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


@pytest.mark.parametrize("question", QUESTIONS, ids=lambda q: q.text)
def test_each_question_takes_its_right_answer_and_refuses_its_wrong_one(
    question: Question,
) -> None:
    assert is_right(question, question.right)
    assert not is_right(question, question.wrong)


def test_the_question_set() -> None:
    assert len(QUESTIONS) >= 40
    assert len({q.text for q in QUESTIONS}) == len(QUESTIONS)
    assert {q.kind for q in QUESTIONS} == {"fact", "arithmetic", "yes/no", "instruction"}
    assert all(not any(ch.isdigit() for ch in q.text) for q in QUESTIONS)


@pytest.mark.parametrize(
    ("reply", "right"),
    [
        ("Spiders have 8 legs.", True),
        ("A spider has four legs.", False),  # the 0.5B answer
        ("Eight, not four legs.", False),
    ],
)
def test_numbers_as_digits_or_words_and_rejections(reply: str, right: bool) -> None:
    spider = QUESTIONS[0]
    assert spider.text == "How many legs does a spider have?"
    assert is_right(spider, reply) is right


def test_boiling_point_in_fahrenheit_is_wrong() -> None:
    boiling = next(q for q in QUESTIONS if "boiling point" in q.text)
    assert is_right(boiling, "100 degrees Celsius.")
    assert not is_right(boiling, "The boiling point of water is 100 degrees Fahrenheit.")


def test_yes_no_answers_are_read_from_their_start() -> None:
    penguins = next(q for q in QUESTIONS if q.text == "Can penguins fly?")
    assert is_right(penguins, "No. Penguins are flightless birds.")
    assert is_right(penguins, "Penguins cannot fly, they swim.")
    assert not is_right(penguins, "Yes, but only short distances; no bird flies higher.")


def test_plan_rotates_voices_or_asks_in_each() -> None:
    voices = list(VOICES)
    rotated = plan(QUESTIONS[:5], voices, every_voice=False)
    assert [a.voice for a in rotated] == [voices[i % len(voices)] for i in range(5)]
    assert [a.question for a in rotated] == list(QUESTIONS[:5])
    every = plan(QUESTIONS[:5], voices[:2], every_voice=True)
    assert len(every) == 10 and {a.voice for a in every} == set(voices[:2])
    with pytest.raises(ValueError):
        plan(QUESTIONS[:5], [], every_voice=False)


def test_summary_counts_right_answers_by_kind_and_voice() -> None:
    spider, paris = QUESTIONS[0], QUESTIONS[4]
    answers = [
        answer_of(Asked(spider, "piper"), "How many legs does a spider have?",
                  "Eight legs.", "completed", 900.0, 800.0),
        answer_of(Asked(paris, "espeak-us"), "What is the capital of fans?",
                  "Paris.", "completed", 1100.0, 1000.0),
        # Right words, but the reply was cut off: not counted as answered.
        answer_of(Asked(spider, "espeak-us"), "How many legs does a spider have?",
                  "Eight", "cancelled", None, None),
    ]
    assert [a.right for a in answers] == [True, True, False]
    summary = summarize(answers)
    assert (summary["asked"], summary["right"], summary["completed"]) == (3, 2, 2)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    # One error ("fans") in 7 + 6 + 7 reference words.
    assert summary["transcript_wer"] == pytest.approx(1 / 20)
    assert summary["by_kind"]["fact"]["right"] == 2
    assert summary["by_voice"]["espeak-us"] == {
        "asked": 2, "right": 1, "accuracy": 0.5, "transcript_wer": pytest.approx(1 / 13)
    }
    assert summary["acoustic_latency_ms"]["p50"] == pytest.approx(1000.0)


def test_variants_are_summarised_side_by_side() -> None:
    spider = QUESTIONS[0]
    variants = [parse_variant("small/previous"), parse_variant("medium")]
    answers = [
        answer_of(Asked(spider, "piper"), "How many legs does a spider have?",
                  "Four legs.", "completed", 1000.0, 900.0, "small/previous"),
        answer_of(Asked(spider, "piper"), "How many legs does a spider have?",
                  "Eight legs.", "completed", 1100.0, 1000.0, "medium"),
    ]
    summary = summarize_variants(variants, answers, {"small": 2**30, "medium": 2**31})
    small, medium = summary["variants"]["small/previous"], summary["variants"]["medium"]
    assert (small["right"], medium["right"]) == (0, 1)
    assert (small["instructions"], medium["instructions"]) == ("previous", "default")
    assert medium["p50_ratio"] == pytest.approx(1.1) and small["p50_ratio"] == 1.0
    assert (small["rss_mb_max"], medium["rss_mb_max"]) == (1024.0, 2048.0)
    assert medium["setup_bytes"] > small["setup_bytes"] > 0
    table = render(summary)
    assert "small/previous" in table and "medium" in table and "1.10" in table


def test_parse_variant() -> None:
    assert parse_variant("large").instructions is None
    assert parse_variant("small/previous").instructions == PREVIOUS_INSTRUCTIONS
    assert parse_variant("server").tier == "server"
    with pytest.raises(ValueError, match="only /previous"):
        parse_variant("small/other")
    with pytest.raises(ConfigurationError, match="unknown tier"):
        parse_variant("huge")
    # Session fields after the tier: the variant shares the tier's server.
    chunked = parse_variant("medium/previous+first_chunk_max_words=4+voice=joe")
    assert chunked.tier == "medium" and chunked.name.endswith("+voice=joe")
    assert chunked.instructions == PREVIOUS_INSTRUCTIONS
    assert dict(chunked.session) == {"first_chunk_max_words": 4, "voice": "joe"}
    assert parse_variant("small").session == ()
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_variant("small+first_chunk_max_words")


def test_interleave_asks_each_block_of_every_variant_in_rotating_order() -> None:
    order = interleave(count=5, per_session=2, variants=3)
    assert [(v, list(block)) for v, block in order] == [
        (0, [0, 1]), (1, [0, 1]), (2, [0, 1]),
        (1, [2, 3]), (2, [2, 3]), (0, [2, 3]),
        (2, [4]), (0, [4]), (1, [4]),
    ]


@pytest.mark.parametrize("voice", list(VOICES))
def test_every_voice_speaks(voice: str) -> None:
    from loadtest.acoustic import acoustic_end_ms

    audio = VOICES[voice].speak("What is two plus three?")
    assert audio.dtype.name == "float32" and audio.ndim == 1
    end = acoustic_end_ms(audio)
    assert end is not None and 800 < end < 4000


@pytest.mark.parametrize(
    ("question_text", "reply"),
    [
        ("Are whales fish?", "Whales are not fish."),
        ("Is the Earth flat?", "The Earth isn't flat."),
        ("Does the moon make its own light?", "The moon doesn't make its own light."),
        ("Count from one to five.", "One to five is 1, 2, 3, 4, and 5."),
        ("Is ice colder than boiling water?", "Ice is generally colder than boiling water."),
    ],
)
def test_right_answers_said_another_way(question_text: str, reply: str) -> None:
    """Replies the models gave that are right but were first scored wrong."""
    question = next(q for q in QUESTIONS if q.text == question_text)
    assert is_right(question, reply)


def test_a_run_stopped_early_compares_the_variants_on_the_same_questions() -> None:
    from loadtest.accuracy import answered_by_all

    small, medium = parse_variant("small"), parse_variant("medium")
    answers = [
        answer_of(Asked(q, "piper"), q.text, q.right, "completed", 900.0, 800.0, v.name)
        for q, v in [(QUESTIONS[0], small), (QUESTIONS[0], medium), (QUESTIONS[1], small)]
    ]
    kept = answered_by_all([small, medium], answers)
    assert [(a.variant, a.question) for a in kept] == [
        ("small", QUESTIONS[0].text), ("medium", QUESTIONS[0].text)
    ]
