"""Answer extraction: from a model's generated response to the answer it gives.

A causal-LM task is scored the way LLM-Adapters and DoRA score the commonsense
suite: generate greedily after the prompt, pull the answer out of the text with
a pattern, and compare it to the record's `answer`. `task.answer_pattern` is one
of the built-ins below, `auto` (the first built-in that reads back every gold
answer of the validation set), or a regular expression (group 1 if it has
groups, else the whole match; the first match counts).

Built-ins, on the seeds' "the correct answer is ..." outputs:
- `true_false`: the first `true`/`false` word (BoolQ), case-insensitive.
- `choice`: the first `answer1..5`, `solution1..2`, `ending1..4` or `option1..2`
  (ARC, OpenBookQA, SIQA, PIQA, HellaSwag, WinoGrande), case-insensitive.
- `commonsense`: whichever of the two above comes first (the commonsense_170k mix).
- `letter`: a capital option letter A-E: the one after "answer is"/"answer:" if
  the text has one, else the first standalone one (AQuA-style). Lower-case
  letters never count: "a" is an article.
- `number`: the last number, commas dropped, compared as a float within 1e-3
  (GSM8K-style math).
`auto` falls back to `gold_words` when no built-in reads every gold answer but they are
at most 32 distinct words: the first of those words in the text (a mix of sources).

Also here: `AnswerComplete`, generation's stopping rule once the pattern has matched, and
the label candidates `loglik` compares (`candidate_response`, `common_prefix_length`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

NUMBER_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AnswerPattern:
    """Regexes tried in order: the first that matches gives the answer (its first or last match)."""

    name: str
    regexes: tuple[re.Pattern[str], ...]
    pick: str = "first"  # "first" | "last"
    case: str | None = None  # "lower" | "upper": compare case-insensitively
    numeric: bool = False

    def extract(self, text: str) -> str | None:
        """The answer in `text`, normalized; None when the text holds none."""
        if self.numeric:
            text = text.replace(",", "")
        for regex in self.regexes:
            matches = list(regex.finditer(text))
            if matches:
                match = matches[0] if self.pick == "first" else matches[-1]
                answer = (match.group(1) if regex.groups else match.group(0)).strip()
                return self.normalize(answer)
        return None

    def match_end(self, text: str) -> int | None:
        """Where the first regex's first match that gives the answer ends; None without one."""
        for regex in self.regexes:
            match = regex.search(text)
            if match:
                return match.end()
        return None

    def normalize(self, answer: str) -> str:
        answer = answer.strip()
        if self.numeric:
            try:
                return _canonical_number(float(answer.replace(",", "")))
            except ValueError:
                return answer
        if self.case == "lower":
            return answer.lower()
        return answer.upper() if self.case == "upper" else answer

    def is_correct(self, predicted: str | None, gold: str) -> bool:
        if predicted is None:
            return False
        gold = self.normalize(str(gold))
        if self.numeric:
            try:
                return math.isclose(float(predicted), float(gold), rel_tol=0.0, abs_tol=NUMBER_TOLERANCE)
            except ValueError:
                return predicted == gold
        return predicted == gold


def _canonical_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


_TRUE_FALSE = r"true|false"
_CHOICE = r"answer[1-5]|solution[12]|ending[1-4]|option[12]"


def _word(alternatives: str) -> re.Pattern[str]:
    """The alternatives as a whole word ("untrue" is not "true", "answer12" is not "answer1")."""
    return re.compile(rf"(?<![A-Za-z0-9_])({alternatives})(?![A-Za-z0-9_])", re.IGNORECASE)


BUILTIN_PATTERNS: dict[str, AnswerPattern] = {
    "true_false": AnswerPattern("true_false", (_word(_TRUE_FALSE),), case="lower"),
    "choice": AnswerPattern("choice", (_word(_CHOICE),), case="lower"),
    # The commonsense_170k mix: BoolQ's true/false and every option name, whichever comes first.
    "commonsense": AnswerPattern("commonsense", (_word(f"{_TRUE_FALSE}|{_CHOICE}"),), case="lower"),
    # "answer is B" first, so that a sentence starting with the article "A" does not count.
    "letter": AnswerPattern(
        "letter",
        (re.compile(r"(?i:answer)(?:\s+is)?\s*:?\s*\(?([A-E])(?![A-Za-z])"),
         re.compile(r"(?<![A-Za-z])\(?([A-E])\)?(?![A-Za-z])")),
        case="upper",
    ),
    "number": AnswerPattern("number", (re.compile(r"-?\d+(?:\.\d+)?"),), pick="last", numeric=True),
}
AUTO = "auto"
PATTERN_NAMES = (AUTO, *BUILTIN_PATTERNS)


def check_pattern(pattern: str) -> None:
    """Raise ValueError unless `pattern` is a built-in name, `auto`, or a valid regular expression."""
    if pattern in PATTERN_NAMES:
        return
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"not a built-in ({', '.join(PATTERN_NAMES)}) and not a valid regular expression: {error}"
        ) from None


def answer_pattern(pattern: str, gold_answers: Iterable[str] = ()) -> AnswerPattern:
    """The extractor for `task.answer_pattern`; `auto` looks at the gold answers to choose."""
    check_pattern(pattern)
    if pattern == AUTO:
        return infer_pattern(gold_answers)
    if pattern in BUILTIN_PATTERNS:
        return BUILTIN_PATTERNS[pattern]
    return AnswerPattern("regex", (re.compile(pattern),))


MAX_GOLD_WORDS = 32


def infer_pattern(gold_answers: Iterable[str]) -> AnswerPattern:
    """The first built-in that extracts every gold answer from itself; failing that, when the
    gold answers are a few distinct words (a mix such as BoolQ + ARC + sentiment labels), the
    first of those words as a whole word, case-insensitive."""
    answers = [str(a) for a in gold_answers if a is not None and str(a).strip()]
    if not answers:
        raise ValueError("answer_pattern 'auto' needs gold answers: the validation records have no `answer`")
    for candidate in BUILTIN_PATTERNS.values():
        if all(candidate.extract(a) == candidate.normalize(a) for a in answers):
            return candidate
    words = sorted({a.strip().lower() for a in answers}, key=lambda w: (-len(w), w))  # longest first
    if len(words) <= MAX_GOLD_WORDS and all(re.fullmatch(r"[\w-]+", w) for w in words):
        return AnswerPattern("gold_words", (_word("|".join(map(re.escape, words))),), case="lower")
    examples = ", ".join(repr(a) for a in answers[:3])
    raise ValueError(
        f"answer_pattern 'auto': no built-in ({', '.join(BUILTIN_PATTERNS)}) reads the gold answers "
        f"(e.g. {examples}); set task.answer_pattern to a regular expression"
    )


class AnswerComplete:
    """A `generate` stopping criterion: a row is done once the answer pattern has matched and at
    least one more character follows the match (so "true" is not cut from "trueish"). Only for
    patterns whose first match is the answer; `number` reads the last number and runs on."""

    def __init__(self, pattern: AnswerPattern, tokenizer: Any, prompt_width: int) -> None:
        self.pattern, self.tokenizer, self.prompt_width = pattern, tokenizer, prompt_width

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        import torch  # not at import time: the driver reads this module's patterns without torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.pattern.pick != "first" or self.pattern.numeric:
            return done
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            end = self.pattern.match_end(text)
            done[row] = end is not None and end < len(text)
        return done


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens all sequences share."""
    if not sequences:
        return 0
    length = min(len(s) for s in sequences)
    for i in range(length):
        if len({s[i] for s in sequences}) > 1:
            return i
    return length


def candidate_response(output: str, gold: str, candidate: str) -> str:
    """The gold response with the last occurrence of the gold answer replaced by `candidate`
    (case-insensitive); just the candidate when the response does not contain the answer."""
    at = output.lower().rfind(gold.lower())
    if at < 0:
        return candidate
    return output[:at] + candidate + output[at + len(gold):]
