"""Multiple choice as lm-evaluation-harness scores it: a question, its options, the gold one.

A record offers options in one of two ways:

- explicitly: `choices` (a list of option texts) and `answer`, the gold option's text or its
  0-based index; the question is the record's `question` or `instruction`;
- in the LLM-Adapters instruction: enumerated options ("Answer1: ... Answer2: ...",
  "Solution1:", "Ending1:", "Option1:"; ARC, OpenBookQA, SIQA, PIQA, HellaSwag, WinoGrande)
  with the gold label `answer2`, or only an "Answer format: true/false" line whose words are
  the options (BoolQ, a labelled table written as instructions); the question is the
  instruction without its lead-in ("Please choose the correct answer to the question:"), its
  options and its answer-format line.

Scoring (`CausalLMTask.option_scores` in tasks.py, the harness's `multiple_choice` output type): the
context is "Question: {question}\\nAnswer:", each option's continuation is " {option}", and
an option's score is the summed log-probability of its continuation tokens. `acc` takes the
highest score, `acc_norm` the highest score divided by the option's length in characters
(the harness's normalisation: characters of the option text, not tokens). Which of the two is
a record's reported accuracy follows the harness's choice per task: `acc_norm` for enumerated
text options (ARC, OpenBookQA, PIQA, HellaSwag, SIQA) and explicit `choices`, `acc` for
word options from an answer-format line (BoolQ, SST-2) and WinoGrande's `Option1/2`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CONTEXT = "Question: {question}\nAnswer:"
DELIMITER = " "  # between the context and an option (the harness's target_delimiter)

_ENUMERATED = re.compile(r"\b(answer|solution|ending|option)\s*(\d+)\s*:\s*", re.IGNORECASE)
_ANSWER_FORMAT = re.compile(r"\n*\s*answer format:\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)
_LEAD_IN = re.compile(r"^\s*please (?:choose|answer)\b[^:\n]*?\b(?:question|sentence)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Choice:
    """One multiple-choice item: what the model is asked, its options and the gold option."""

    question: str
    options: tuple[str, ...]
    gold: int
    metric: str  # "acc" or "acc_norm": the record's reported accuracy

    @property
    def context(self) -> str:
        return CONTEXT.format(question=self.question)

    def continuation(self, index: int) -> str:
        return DELIMITER + self.options[index]


class ChoiceError(ValueError):
    """A record that looks like multiple choice but whose options or gold answer cannot be read."""


def read_choice(record: dict[str, Any]) -> Choice | None:
    """The record's multiple-choice item; None when the record offers no options (a free answer);
    ChoiceError when it offers options that do not fit together with its answer."""
    if record.get("choices"):
        return _explicit(record)
    instruction = str(record.get("instruction") or "")
    text = f"{instruction}\n{record.get('input') or ''}".strip()
    fmt = _ANSWER_FORMAT.search(text)
    body = text[: fmt.start()] if fmt else text
    marks = list(_ENUMERATED.finditer(body))
    gold = str(record.get("answer") or "").strip()
    if marks:
        return _enumerated(body, marks, gold)
    if fmt:
        words = [w.strip() for w in fmt.group(1).split("/")]
        if len(words) < 2 or not all(words):
            raise ChoiceError(f"the answer format {fmt.group(1)!r} does not list two or more options")
        if not gold:
            return None
        lowered = [w.lower() for w in words]
        if gold.lower() not in lowered:
            raise ChoiceError(f"answer {gold!r} is not one of the answer format's options {words}")
        return Choice(_question(body), tuple(words), lowered.index(gold.lower()), "acc")
    return None


def _enumerated(body: str, marks: list[re.Match], gold: str) -> Choice:
    kind = marks[0].group(1).lower()
    numbers = [int(m.group(2)) for m in marks]
    if numbers != list(range(1, len(marks) + 1)) or any(m.group(1).lower() != kind for m in marks):
        raise ChoiceError(f"enumerated options are not {kind}1, {kind}2, ... in order: found "
                          f"{', '.join(m.group(1) + m.group(2) for m in marks)}")
    options = tuple(body[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(body)].strip()
                    for i, m in enumerate(marks))
    if len(options) < 2 or not all(options):
        raise ChoiceError(f"needs two or more non-empty {kind}N options; found {len(options)}")
    label = re.fullmatch(rf"{kind}\s*(\d+)", gold, re.IGNORECASE)
    if label is None or not 1 <= int(label.group(1)) <= len(options):
        raise ChoiceError(f"answer {gold!r} names none of the options {kind}1..{kind}{len(options)}")
    return Choice(_question(body[: marks[0].start()]), options, int(label.group(1)) - 1,
                  "acc" if kind == "option" else "acc_norm")


def _explicit(record: dict[str, Any]) -> Choice:
    options = record["choices"]
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise ChoiceError(f"`choices` is not a list: {options[:80]!r}") from None
    if not isinstance(options, list) or len(options) < 2 or not all(str(o).strip() for o in options):
        raise ChoiceError(f"`choices` must list two or more non-empty options; got {options!r}")
    options = tuple(str(o).strip() for o in options)
    question = str(record.get("question") or record.get("instruction") or "").strip()
    if not question:
        raise ChoiceError("a record with `choices` needs a `question` (or `instruction`)")
    gold = record.get("answer")
    if isinstance(gold, int) or (isinstance(gold, str) and gold.strip().isdigit() and gold.strip() not in options):
        index = int(gold)
        if not 0 <= index < len(options):
            raise ChoiceError(f"answer index {index} is outside the {len(options)} choices")
        return Choice(question, options, index, "acc_norm")
    if gold is None or str(gold).strip() not in options:
        raise ChoiceError(f"answer {gold!r} is neither one of the choices {list(options)} nor an index into them")
    return Choice(question, options, options.index(str(gold).strip()), "acc_norm")


def _question(text: str) -> str:
    return _LEAD_IN.sub("", text).strip()


def decide(scores: list[float], options: tuple[str, ...]) -> tuple[int, int]:
    """(acc's pick, acc_norm's pick) from the options' summed continuation log-likelihoods: the
    first highest score, and the first highest score per character of the option text."""
    raw = max(range(len(scores)), key=lambda i: (scores[i], -i))
    normed = max(range(len(scores)), key=lambda i: (scores[i] / max(len(options[i]), 1), -i))
    return raw, normed


def split_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as the harness makes them: the whole string is
    tokenized once and the continuation is what follows the context's own tokens, so a
    token that would merge across the boundary is not split differently from the text."""
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    head = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    if whole[: len(head)] != head:  # the boundary merged: fall back to separate tokenization
        return head, list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return head, whole[len(head):]
