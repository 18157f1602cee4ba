"""Instruction records for causal-LM tasks: `instruction`, `input`, `output`, `answer` and
`source`, read from .json/.jsonl files, folders, labelled tables (through templates) or the hub,
one or several sources per task. Prompts are built from them in `instructions.py`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from trainables.data import TestSplit, limit_split, load_hub, load_local, read_file, subsample
from trainables.files import read_json_records, source_name

INSTRUCTION_FIELDS = ("instruction", "input", "output", "answer", "choices")  # plus `source`, added per source
# `choices`: a multiple-choice record's options as a JSON list ("" for none); see choices.py.


def load_instruction_splits(task: dict[str, Any], seed: int = 0) -> DatasetDict:
    """"train" and "validation" (and "test" with `task.test_fraction`) instruction records:
    `instruction`, `input`, `output`, `answer`, and `source` (the source's name).

    `input` and `answer` are optional in the files and come back as "" when absent;
    every value is a string. Sources as for classification: a .json/.jsonl (or
    csv/tsv/parquet) file, a folder with train.* and validation.*/dev.*/val.*, or
    `hf:<id>[:<config>]`; without a validation split, 10% of train is held out.
    `task.dataset` may list several sources: each is split (and limited by the
    `max_*_examples`) on its own, then the splits are concatenated.
    """
    from datasets import concatenate_datasets

    per_source = [_instruction_source(source, task, seed) for source in instruction_sources(task)]
    names = [name for name in ("train", "validation", "test") if all(name in splits for splits in per_source)]
    if len(per_source) == 1:
        return per_source[0]
    return DatasetDict({name: concatenate_datasets([splits[name] for splits in per_source]) for name in names})


def instruction_sources(task: dict[str, Any]) -> list[dict[str, Any]]:
    """`task.dataset` as a list of source dicts (path, name, instruction, output, label_field, label_names)."""
    items = task["dataset"] if isinstance(task["dataset"], list) else [task["dataset"]]
    sources = []
    for item in items:
        source = {"path": item} if isinstance(item, str) else dict(item)
        source.setdefault("name", None)
        source["name"] = source["name"] or source_name(source["path"])
        sources.append(source)
    return sources


def _instruction_source(source: dict[str, Any], task: dict[str, Any], seed: int) -> DatasetDict:
    path, templated = str(source["path"]), bool(source.get("instruction"))
    if path.startswith("builtin:"):
        raise ValueError(f"dataset {path!r}: causal_lm tasks have no built-in dataset; "
                         "give a .json/.jsonl file of instruction records, a folder, or hf:<id>")
    held_out = TestSplit.of(task)
    if path.startswith("hf:"):
        splits = load_hub(path, source.get("label_field") or "label" if templated else "output", seed, held_out)
    else:
        splits = load_local(path, seed, read=read_file if templated else _read_records, test=held_out)
    out = DatasetDict()
    limits = {**task, **{k: source[k] for k in ("max_train_examples", "max_eval_examples") if source.get(k)}}
    for name, split in splits.items():
        split = limit_split(split, name, limits, seed)
        if templated:
            split = _records_from_columns(split, source, path)
        split = _instruction_columns(split, path, name)
        out[name] = split.add_column("source", [source["name"]] * len(split))
    return out


def _records_from_columns(split: Dataset, source: dict[str, Any], path: str) -> Dataset:
    """A labelled table as instruction records: the templates filled from each row's columns,
    `{answer}` the label's name (`label_names[label]`, or the label itself when it is a word)."""
    label_field, names = source.get("label_field") or "label", source.get("label_names")
    if label_field not in split.column_names:
        raise ValueError(f"dataset {path!r}: no label column {label_field!r}; columns: {split.column_names}")

    def answer_of(label: Any) -> str:
        if names is None:
            return str(label)
        try:
            return str(names[int(label)])
        except (ValueError, IndexError):
            raise ValueError(f"dataset {path!r}: label {label!r} has no entry in label_names {names}") from None

    def record(row: dict[str, Any]) -> dict[str, str]:
        answer = answer_of(row[label_field])
        try:
            values = {**{k: "" if v is None else str(v).strip() for k, v in row.items()}, "answer": answer}
            return {"instruction": source["instruction"].format(**values),
                    "output": str(source.get("output") or "{answer}").format(**values), "input": "", "answer": answer}
        except KeyError as missing:
            raise ValueError(f"dataset {path!r}: template field {missing} is not a column; "
                             f"columns: {split.column_names}") from None

    return split.map(record, remove_columns=split.column_names)


def read_instruction_file(path: Path, limit: int | None = None, seed: int = 0) -> Dataset:
    """Instruction records from one file (`raysearch evaluate --data`), named by the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    split = _instruction_columns(subsample(_read_records(path), limit, seed), str(path), "test")
    return split.add_column("source", [source_name(str(path))] * len(split))


def _read_records(path: Path) -> Dataset:
    """JSON/JSON lines through `json`, so "true" or "42" stay strings (pandas would convert them)."""
    import json

    if path.suffix.lower() not in (".json", ".jsonl"):
        return read_file(path)
    records = read_json_records(path)
    # Only the instruction fields: other keys may mix types across records.
    return Dataset.from_list([{k: r[k] for k in INSTRUCTION_FIELDS if k in r} for r in map(_explicit_choices, records)])


def _explicit_choices(record: dict[str, Any]) -> dict[str, Any]:
    """A record with `choices` (harness style: `question`, `choices`, `answer` as the gold text or
    index) as an instruction record: the question as `instruction`, the gold option as `output`
    when it has none, the options as one JSON string (every field stays a string)."""
    choices = record.get("choices")
    if not isinstance(choices, list):
        return record
    import json

    out = {**record, "choices": json.dumps([str(c) for c in choices])}
    out.setdefault("instruction", record.get("question") or "")
    answer = record.get("answer")
    if "output" not in record and answer is not None:
        index = int(answer) if isinstance(answer, int) or str(answer).strip().isdigit() else None
        gold = str(answer) if index is None or not 0 <= index < len(choices) else str(choices[index])
        out["output"] = gold
    return out


def _instruction_columns(split: Dataset, source: str, split_name: str) -> Dataset:
    missing = [f for f in ("instruction", "output") if f not in split.column_names]
    if missing:
        raise ValueError(
            f"dataset {source!r}, split {split_name!r}: instruction records need {missing}; "
            f"columns: {split.column_names} (expected instruction, optional input, output, optional answer)"
        )

    def as_strings(record: dict[str, Any]) -> dict[str, str]:
        return {f: "" if record.get(f) is None else str(record[f]) for f in INSTRUCTION_FIELDS}

    drop = [c for c in split.column_names if c not in INSTRUCTION_FIELDS]
    return split.map(as_strings, remove_columns=drop).select_columns(list(INSTRUCTION_FIELDS))
