"""The spoken questions of ``python -m loadtest.accuracy``, with what counts as right.

Each question has a short answer a listener can check. ``accept`` patterns (any
one) and ``reject`` patterns (none) are searched in the reply after
``loadtest.scoring.normalize``: lower case, no punctuation, numbers as words
("8" and "eight" both read "eight"), so a pattern is written in words only.
``right`` and ``wrong`` are example replies: the tests check that every
question's patterns take its right example and refuse its wrong one.

The questions avoid digits and years in their own text, so the transcript's word
error rate is not moved by how Whisper writes numbers (it is normalised too).
"""

from __future__ import annotations

from dataclasses import dataclass

YES = r"^(yes|yeah|yep|yup|absolutely|indeed|correct|definitely|of course|sure)\b"
NO = r"^(no|nope|not really|not at all)\b"


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    kind: str
    """``fact``, ``arithmetic``, ``yes/no`` or ``instruction``."""
    accept: tuple[str, ...]
    right: str
    wrong: str
    reject: tuple[str, ...] = ()


def _yes(text: str, right: str, wrong: str, *also: str) -> Question:
    return Question(text, "yes/no", (YES, *also), right, wrong, (NO,))


def _no(text: str, right: str, wrong: str, *also: str) -> Question:
    return Question(text, "yes/no", (NO, *also), right, wrong, (YES,))


def _sum(text: str, answer: str, right: str, wrong: str) -> Question:
    return Question(text, "arithmetic", (rf"\b{answer}\b",), right, wrong)


def _fact(
    text: str, accept: str, right: str, wrong: str, reject: tuple[str, ...] = ()
) -> Question:
    return Question(text, "fact", (accept,), right, wrong, reject)


def _all_of(*words: str) -> str:
    """A pattern that needs every one of ``words``, in any order."""
    return "".join(rf"(?=.*\b{word}\b)" for word in words)


QUESTIONS: tuple[Question, ...] = (
    _fact("How many legs does a spider have?", r"\beight\b", "Spiders have eight legs.",
          "A spider has four legs.", (r"\b(four|six|ten) legs\b",)),
    _fact("What are the colors of the rainbow?",
          _all_of("red", "orange", "yellow", "green", "blue"),
          "Red, orange, yellow, green, blue, indigo and violet.", "Red, blue and white."),
    _fact("What is the boiling point of water in degrees Celsius?",
          r"\bone hundred\b", "Water boils at one hundred degrees Celsius.",
          "It boils at 100 degrees Fahrenheit.", (r"\bone hundred degrees fahrenheit\b",)),
    _no("Does the moon make its own light?", "No, it reflects light from the sun.",
        "Yes, the moon shines with its own light.", r"\breflects?\b",
        r"\b(does not|doesn't) (make|produce|have|emit)\b"),
    _fact("What is the capital of France?", r"\bparis\b", "The capital of France is Paris.",
          "The capital of France is Lyon."),
    _fact("What is the capital of Japan?", r"\btokyo\b", "Tokyo.", "Kyoto is the capital."),
    _fact("Which planet is known as the red planet?", r"\bmars\b", "Mars is the red planet.",
          "Jupiter is the red planet."),
    _fact("What is the largest ocean on Earth?", r"\bpacific\b", "The Pacific Ocean.",
          "The Atlantic Ocean."),
    _fact("Who wrote Romeo and Juliet?", r"\bshakespeare\b",
          "William Shakespeare wrote it.", "Charles Dickens wrote it."),
    _fact("How many days are there in a leap year?", r"\bthree hundred sixty six\b",
          "A leap year has three hundred and sixty-six days.", "It has 365 days."),
    _fact("At what temperature in Celsius does water freeze?", r"\bzero\b",
          "Water freezes at 0 degrees Celsius.", "Water freezes at thirty-two degrees."),
    _fact("What is the largest animal on Earth?", r"\bblue whales?\b",
          "The blue whale is the largest animal.", "The elephant is the largest animal."),
    _fact("How many continents are there?", r"\bseven\b", "There are seven continents.",
          "There are five continents."),
    _fact("What gas do plants take in from the air?", r"\bcarbon dioxide\b|\bco2\b|\bco two\b",
          "Plants take in carbon dioxide.", "Plants take in oxygen.",
          (r"^(plants take in )?oxygen\b",)),
    _fact("What is the tallest animal in the world?", r"\bgiraffes?\b",
          "The giraffe is the tallest animal.", "The elephant is the tallest."),
    _fact("How many hours are there in a day?", r"\btwenty four\b", "There are 24 hours in a day.",
          "There are twelve hours in a day."),
    _fact("In which country are the pyramids of Giza?", r"\begypt\b",
          "The pyramids of Giza are in Egypt.", "They are in Mexico."),
    _fact("What do bees make?", r"\bhoney\b", "Bees make honey.", "Bees make milk."),
    _fact("What is the largest planet in our solar system?", r"\bjupiter\b",
          "Jupiter is the largest planet.", "Saturn is the largest planet."),
    _fact("How many sides does a triangle have?", r"\bthree\b", "A triangle has three sides.",
          "A triangle has four sides."),
    _fact("What language do people speak in Brazil?", r"\bportuguese\b",
          "People in Brazil speak Portuguese.", "They speak Spanish."),
    _fact("How many minutes are there in an hour?", r"\bsixty\b", "There are 60 minutes.",
          "There are one hundred minutes."),
    _fact("What is the opposite of cold?", r"\b(hot|warm)\b", "The opposite of cold is hot.",
          "The opposite of cold is wet."),
    _fact("Which animal is known as the king of the jungle?", r"\blions?\b",
          "The lion is the king of the jungle.", "The tiger is the king of the jungle."),
    _sum("What is two plus three?", "five", "Two plus three is five.", "Two plus three is six."),
    _sum("What is seven times eight?", "fifty six", "Seven times eight is 56.",
         "Seven times eight is fifty-four."),
    _sum("What is ten minus four?", "six", "Ten minus four is six.", "Ten minus four is 14."),
    _sum("What is twelve divided by three?", "four", "Twelve divided by three is four.",
         "Twelve divided by three is three."),
    _sum("What is nine plus six?", "fifteen", "Nine plus six equals fifteen.",
         "Nine plus six equals sixteen."),
    _sum("What is half of fifty?", "twenty five", "Half of fifty is twenty-five.",
         "Half of fifty is twenty."),
    _sum("What is three times four?", "twelve", "Three times four is 12.",
         "Three times four is seven."),
    _sum("What is one hundred minus one?", "ninety nine", "One hundred minus one is 99.",
         "It is one hundred and one."),
    _sum("What is eleven plus eleven?", "twenty two", "Eleven plus eleven is twenty-two.",
         "Eleven plus eleven is twenty-one."),
    _sum("What is twenty divided by five?", "four", "Twenty divided by five is four.",
         "Twenty divided by five is five."),
    _yes("Is the sun a star?", "Yes, the sun is a star.", "No, the sun is a planet.",
         r"\bsun is a star\b(?!.*\bnot\b)"),
    _no("Can penguins fly?", "No, penguins cannot fly.", "Yes, penguins can fly.",
        r"\b(cannot|can ?not|can't|unable to|not (capable of|able to)) fly(ing)?\b",
        r"\bflightless\b"),
    _yes("Do fish breathe with gills?", "Yes, fish breathe through their gills.",
         "No, fish breathe with lungs."),
    _no("Is the Earth flat?", "No, the Earth is round.", "Yes, the Earth is flat.",
        r"\b(round|a sphere|spherical)\b", r"\b(is not|isn't) flat\b"),
    _no("Are whales fish?", "No, whales are mammals.", "Yes, whales are fish.",
        r"\bwhales are mammals\b", r"\b(are not|aren't) fish\b"),
    _no("Does a week have eight days?", "No, a week has seven days.",
        "Yes, a week has eight days.", r"\bseven days\b"),
    _yes("Is ice colder than boiling water?", "Yes, ice is colder.",
         "No, boiling water is colder.", r"^ice is (\w+ )?colder\b"),
    Question("Say the word banana.", "instruction", (r"\bbanana\b",), "Banana.", "Apple."),
    Question("Count from one to five.", "instruction", (r"\bone two three four (and )?five\b",),
             "One, two, three, four, five.", "One, two, four."),
    Question("Spell the word cat.", "instruction", (r"\bc a t\b",), "C-A-T.", "K-A-T."),
    Question("Name three colors.", "instruction",
             (r"(\b(red|blue|green|yellow|orange|purple|pink|black|white|brown|gr[ae]y|violet)"
              r"\b.*){3}",),
             "Red, blue and green.", "Red."),
    Question("Name a fruit that is yellow.", "instruction",
             (r"\b(bananas?|lemons?|pineapples?|mangos?|mangoes)\b",), "A banana.",
             "An apple."),
    Question("Which two days make up the weekend?", "instruction",
             (_all_of("saturday", "sunday"),), "Saturday and Sunday.", "Friday and Saturday."),
    Question("Give me a word that rhymes with cat.", "instruction",
             (r"\b(hat|bat|mat|rat|sat|fat|pat|chat|flat|vat|brat|splat|gnat|spat|that)\b",),
             "Hat rhymes with cat.", "Dog."),
)
