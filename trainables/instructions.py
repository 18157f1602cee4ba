"""Instruction records -> prompts -> token ids whose labels cover the response only.

A record has `instruction`, optional `input`, `output` (what the model learns to
write) and optional `answer` (what answer accuracy compares against). The prompt
is `task.prompt_template`:

- `alpaca` (default): the Alpaca format LLM-Adapters and DoRA train and evaluate
  the commonsense suite with; the "### Input:" block only when the record has one.
  Their scripts also carry the source code's indentation inside the prompt
  (an accident of triple-quoted strings); a custom template can reproduce it.
- `chat`: the tokenizer's chat template, the instruction (and input) as the user
  turn, generation prompt added.
- any other string: a template with `{instruction}` and optionally `{input}`
  (literal braces doubled: `{{`), the response following it directly.

The training sequence is prompt tokens + response tokens + EOS, right-padded to
`max_length`; labels are -100 on the prompt and the padding, so the loss is on
the response (and its EOS) only.

`task.train_on` says what a multiple-choice record (choices.py) is trained to write:
`label`, the record as written (the LLM-Adapters "the correct answer is answer2" after the
prompt template), or `option_text`, the gold option's text after the harness context
"Question: ...\nAnswer:" (no template): the continuation option-text scoring reads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from trainables.choices import Choice, ChoiceError, read_choice, split_pair
from trainables.contract import check_template

IGNORE_INDEX = -100  # labels the loss skips (PyTorch's cross-entropy default)

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def build_prompt(record: dict[str, Any], template: str = "alpaca", tokenizer: Any = None) -> str:
    """The text the model sees before its response."""
    instruction, extra = str(record["instruction"]), str(record.get("input") or "")
    if template == "alpaca":
        chosen = ALPACA_WITH_INPUT if extra.strip() else ALPACA
        return chosen.format(instruction=instruction, input=extra)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_template 'chat' needs a tokenizer with a chat template; "
                             "this one has none: use 'alpaca' or a template string")
        content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
    check_template(template)
    return template.format(instruction=instruction, input=extra)


def prompt_ids(record: dict[str, Any], template: str, tokenizer: Any) -> list[int]:
    """Prompt tokens, with the tokenizer's own special tokens (a chat template writes its own)."""
    text = build_prompt(record, template, tokenizer)
    return list(tokenizer(text, add_special_tokens=template != "chat")["input_ids"])


def response_ids(record: dict[str, Any], tokenizer: Any) -> list[int]:
    """Response tokens + EOS: the model learns to stop."""
    ids = list(tokenizer(str(record["output"]), add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.eos_token_id]


def encode_record(
    record: dict[str, Any], template: str, tokenizer: Any, max_length: int
) -> dict[str, list[int]] | None:
    """input_ids / attention_mask / labels padded to `max_length`; labels only on the response.

    Too long: the end is cut (the prompt is kept whole). None when not one
    response token fits, since such a record teaches nothing.
    """
    prompt = prompt_ids(record, template, tokenizer)
    return fixed_length(prompt, response_ids(record, tokenizer), tokenizer.pad_token_id, max_length)


def fixed_length(
    prompt: list[int], response: list[int], pad_token_id: int, max_length: int
) -> dict[str, list[int]] | None:
    if len(prompt) >= max_length:
        return None
    ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    padding = max_length - len(ids)
    return {
        "input_ids": ids + [pad_token_id] * padding,
        "attention_mask": [1] * len(ids) + [0] * padding,
        "labels": labels + [IGNORE_INDEX] * padding,
    }


@dataclass
class EncodedSplit:
    """A split as fixed-length tensors, plus what generation needs (row i of each list is tensor row i)."""

    tensors: dict[str, torch.Tensor]
    prompts: list[list[int]]
    answers: list[str]  # the records' `answer` ("" when absent)
    outputs: list[str]  # the records' `output`
    dropped: int  # records whose prompt alone filled max_length
    sources: list[str] = field(default_factory=list)  # the records' `source` ("" when absent)
    options: list[list[str]] = field(default_factory=list)  # answers the instruction offers ([] when it names none)
    choices: list[Choice | None] = field(default_factory=list)  # the multiple-choice item (None: a free answer)


TRAIN_ON = ("label", "option_text")


def encode_records(records: Iterable[dict[str, Any]], template: str, tokenizer: Any, max_length: int,
                   train_on: str = "label") -> EncodedSplit:
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on {train_on!r}: allowed: {', '.join(TRAIN_ON)}")
    rows: list[dict[str, list[int]]] = []
    split = EncodedSplit({}, [], [], [], 0)
    for number, record in enumerate(records, start=1):
        try:
            choice = read_choice(record)
        except ChoiceError as error:
            raise ValueError(f"source {record.get('source') or '?'}, record {number}: {error}") from None
        if train_on == "option_text" and choice is not None:
            prompt, response = split_pair(tokenizer, choice.context, choice.continuation(choice.gold))
            response = response + [tokenizer.eos_token_id]
        else:
            prompt, response = prompt_ids(record, template, tokenizer), response_ids(record, tokenizer)
        row = fixed_length(prompt, response, tokenizer.pad_token_id, max_length)
        if row is None:
            split.dropped += 1
            continue
        rows.append(row)
        split.prompts.append(prompt)
        split.answers.append(str(record.get("answer") or ""))
        split.outputs.append(str(record["output"]))
        split.sources.append(str(record.get("source") or ""))
        split.options.append(offered_answers(record))
        split.choices.append(choice)
    if not rows:
        raise ValueError(f"every record's prompt is at least task.max_length={max_length} tokens; raise max_length")
    split.tensors = {key: torch.tensor([row[key] for row in rows], dtype=torch.long) for key in rows[0]}
    return split


_ANSWER_FORMAT = re.compile(r"answer format:\s*([^\s/]+(?:\s*/\s*[^\s/]+)+)", re.IGNORECASE)


def offered_answers(record: dict[str, Any]) -> list[str]:
    """The answers an instruction offers in an "Answer format: a/b/c" line (the LLM-Adapters
    commonsense files all end with one); [] when it has none."""
    match = _ANSWER_FORMAT.search(f"{record.get('instruction', '')}\n{record.get('input') or ''}")
    return [option.strip() for option in match.group(1).split("/")] if match else []


def left_padded(prompts: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A generation batch: prompts padded on the left, so every row continues at the same position."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
