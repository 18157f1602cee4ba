"""trainables.answers: every extractor on real-looking generations, malformed ones included."""
from __future__ import annotations

import pytest

from trainables.answers import BUILTIN_PATTERNS, answer_pattern, check_pattern, infer_pattern


def extract(name: str, text: str) -> str | None:
    return BUILTIN_PATTERNS[name].extract(text)


@pytest.mark.parametrize("text, expected", [
    ("the correct answer is true", "true"),
    ("the correct answer is false", "false"),
    ("The correct answer is False.", "false"),
    ("  TRUE  ", "true"),
    ("the correct answer is true false", "true"),        # the first one counts, as in LLM-Adapters
    ("the correct answer is untrue", None),              # not a word of its own
    ("the correct answer is truefalse", None),
    ("the correct answer is", None),                     # cut off by max_new_tokens
    ("", None),
    ("##titled ##titled ##titled", None),               # an untrained model's babble
    ("the correct answer is true[SEP] false", "true"),
])
def test_true_false(text, expected):
    assert extract("true_false", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("the correct answer is answer1", "answer1"),
    ("the correct answer is Answer3.", "answer3"),
    ("the correct answer is answer4 because answer2 is wrong", "answer4"),
    ("the correct answer is solution2", "solution2"),
    ("the correct answer is ending4", "ending4"),
    ("the correct answer is option1", "option1"),
    ("the correct answer is answer12", None),            # no such option
    ("the correct answer is answer6", None),
    ("the correct answer is answer", None),
    ("the correct answer is true", None),
])
def test_choice(text, expected):
    assert extract("choice", text) == expected


def test_commonsense_takes_whichever_comes_first():
    assert extract("commonsense", "the correct answer is true") == "true"
    assert extract("commonsense", "the correct answer is answer2, not true") == "answer2"
    assert extract("commonsense", "I do not know") is None


@pytest.mark.parametrize("text, expected", [
    ("The answer is B.", "B"),
    ("Answer: (C)", "C"),
    ("answer is D", "D"),
    ("A bird can fly, so the answer is E", "E"),   # "answer is" beats the article at the start
    ("I think (B) is right", "B"),
    ("B", "B"),
    ("the answer is a bird", None),                 # lower-case "a" is an article, never an option
    ("F is not an option", None),
    ("nothing here", None),
])
def test_letter(text, expected):
    assert extract("letter", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"),
    ("3 + 4 = 7. So the answer is 7", "7"),          # the last number counts
    ("Total: 1,234.5 dollars", "1234.5"),
    ("It drops to -3 degrees", "-3"),
    ("the answer is 12.0", "12"),
    ("no numbers at all", None),
    ("", None),
])
def test_number(text, expected):
    assert extract("number", text) == expected


def test_number_compares_as_a_float_within_tolerance():
    number = BUILTIN_PATTERNS["number"]
    assert number.is_correct(number.extract("so it is 18.0000"), "18")
    assert number.is_correct(number.extract("costs 1,000"), "1000")
    assert not number.is_correct(number.extract("18.01"), "18")
    assert not number.is_correct(None, "18")


def test_is_correct_normalizes_case_and_spaces_of_the_gold_answer():
    assert BUILTIN_PATTERNS["true_false"].is_correct("true", " True ")
    assert BUILTIN_PATTERNS["choice"].is_correct("answer2", "Answer2")
    assert not BUILTIN_PATTERNS["true_false"].is_correct("false", "true")


def test_custom_regex_uses_group_one_else_the_whole_match():
    grouped = answer_pattern(r"final answer: (\w+)")
    assert grouped.extract("reasoning... final answer: paris. final answer: rome") == "paris"
    assert grouped.extract("no final line") is None
    whole = answer_pattern(r"yes|no")
    assert whole.extract("well, no.") == "no"
    assert whole.is_correct("no", "no") and not whole.is_correct("No", "no")  # regexes compare exactly


def test_auto_picks_the_builtin_that_reads_the_gold_answers():
    assert infer_pattern(["true", "false", "true"]).name == "true_false"
    assert infer_pattern(["answer1", "answer4"]).name == "choice"
    assert infer_pattern(["true", "answer3"]).name == "commonsense"
    assert infer_pattern(["B", "D"]).name == "letter"
    assert infer_pattern(["42", "-3.5", "1,000"]).name == "number"
    assert answer_pattern("auto", ["false"]).name == "true_false"


def test_auto_reads_a_mix_of_few_gold_words_as_whole_words():
    pattern = infer_pattern(["true", "answer2", "positive", "negative", "Positive"])
    assert pattern.name == "gold_words"
    assert pattern.extract("the correct answer is Negative.") == "negative"
    assert pattern.extract("answer2, not true") == "answer2"  # the first word in the text
    assert pattern.extract("nonnegative") is None  # whole words only
    assert pattern.is_correct(pattern.extract("POSITIVE!"), "positive")


def test_auto_without_a_fitting_builtin_asks_for_a_regex():
    with pytest.raises(ValueError, match="set task.answer_pattern to a regular expression"):
        infer_pattern(["the capital is paris", "rome"])  # not words
    with pytest.raises(ValueError, match="set task.answer_pattern to a regular expression"):
        infer_pattern([f"city{i}x" for i in range(40)])  # too many distinct answers
    with pytest.raises(ValueError, match="no `answer`"):
        infer_pattern(["", None])


def test_check_pattern_accepts_names_and_regexes_and_explains_the_rest():
    for ok in ("auto", "true_false", "choice", "commonsense", "letter", "number", r"answer is (\d+)"):
        check_pattern(ok)
    with pytest.raises(ValueError, match=r"not a built-in \(auto, true_false, .*\) and not a valid regular expression"):
        check_pattern("answer is (")
