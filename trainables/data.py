"""Sequence-classification tasks: where the examples come from and how they become tensors.

A task is a plain dict (from the experiment file's `task:` section):
`dataset` ("builtin:demo", "hf:<id>[:<config>]", a local file or a folder),
`text_fields` (None = auto), `label_field` (default "label"), `max_length`,
`max_train_examples`, `max_eval_examples`.

The synthetic `builtin:demo` task is generated in `demo_data.py`; instruction records
(causal LM) are read in `instruction_data.py`, with the helpers here.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from datasets import ClassLabel, Dataset, DatasetDict

from trainables.demo_data import demo_split, demo_task
from trainables.files import SUPPORTED_EXTENSIONS, VALIDATION_STEMS, find_split_file
from trainables.records import held_out_size, validation_size

AUTO_TEXT_FIELDS: tuple[str | tuple[str, ...], ...] = ("sentence", "text", ("sentence1", "sentence2"), ("question", "passage"))
FORMATS_HELP = (
    "expected builtin:demo, hf:<id>[:<config>], a file (.csv, .tsv, .json, .jsonl, .parquet) "
    "or a folder with train.* and validation.*/dev.*/val.* files"
)


def load_splits(task: dict[str, Any], seed: int = 0) -> DatasetDict:
    """Load "train" and "validation" (and "test" with `task.test_fraction`) with the text
    columns and int labels 0..K-1 in "labels"."""
    source = str(task["dataset"])
    label_field = task.get("label_field") or "label"
    held_out = TestSplit.of(task)
    if source.startswith("builtin:"):
        splits = _load_builtin(source, task)
    elif source.startswith("hf:"):
        splits = load_hub(source, label_field, seed, held_out)
    else:
        splits = load_local(source, seed, test=held_out)
    for split_name, split in splits.items():
        if label_field not in split.column_names:
            raise ValueError(
                f"dataset {source!r}: label column {label_field!r} not found in split {split_name!r}; "
                f"columns: {split.column_names}. Set task.label_field."
            )
    text_fields = resolve_text_fields(splits["train"], task.get("text_fields"), label_field)
    splits = _encode_labels(splits, label_field)
    splits = DatasetDict({name: split.select_columns([*text_fields, "labels"]) for name, split in splits.items()})
    return DatasetDict({name: limit_split(split, name, task, seed) for name, split in splits.items()})


def limit_split(split: Dataset, split_name: str, task: dict[str, Any], seed: int) -> Dataset:
    """At most `max_train_examples` / `max_eval_examples` / `max_test_examples` of the split;
    the test split's draw uses `test_seed`, so every trial and `raysearch evaluate` agree."""
    key = {"train": "max_train_examples", "validation": "max_eval_examples", "test": "max_test_examples"}[split_name]
    return subsample(split, task.get(key), TestSplit.of(task).seed if split_name == "test" else seed)


@dataclass(frozen=True)
class TestSplit:
    """`task.test_fraction` of a source's training file, drawn with `task.test_seed` before the
    validation split: what no trial trains on or is selected by, the same in every trial."""

    fraction: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, task: dict[str, Any]) -> TestSplit:
        return cls(float(task.get("test_fraction") or 0.0), int(task.get("test_seed") or 0))

    def carve(self, train: Dataset) -> tuple[Dataset, Dataset | None]:
        """(what is left for training and validation, the test split or None)."""
        if self.fraction <= 0:
            return train, None
        if len(train) < 3:
            raise ValueError(f"need at least 3 examples to carve a test split, got {len(train)}")
        n_test = held_out_size(len(train), self.fraction)
        parts = train.train_test_split(test_size=n_test, seed=self.seed)
        return parts["train"], parts["test"]


def _with_test(train: Dataset, seed: int, test: TestSplit, validation: Dataset | None = None) -> DatasetDict:
    """Test split first (its own seed), then validation from the rest unless a file gave one."""
    rest, held_out = test.carve(train)
    splits = DatasetDict(train=rest, validation=validation) if validation is not None else _carve_validation(rest, seed)
    if held_out is not None:
        splits["test"] = held_out
    return splits


def num_labels(splits: DatasetDict) -> int:
    feature = splits["train"].features["labels"]
    if isinstance(feature, ClassLabel):
        return feature.num_classes
    return int(max(max(column(split, "labels")) for split in splits.values())) + 1


def column(split: Dataset, name: str) -> list:
    """A column's values as a list, read in one Arrow pass. `split[name]` alone is a lazy
    column (datasets >= 4) that decodes one row at a time, orders of magnitude slower over
    SST-2's 67k training rows."""
    return split[name][:]


def resolve_text_fields(dataset: Dataset, text_fields: list[str] | str | None, label_field: str = "label") -> list[str]:
    """The given fields (checked), else the first of AUTO_TEXT_FIELDS present, else the first string column."""
    columns = dataset.column_names
    if text_fields:
        fields = [text_fields] if isinstance(text_fields, str) else list(text_fields)
        missing = [field for field in fields if field not in columns]
        if missing:
            raise ValueError(f"text_fields {missing} not found; columns: {columns}")
        return fields
    for candidate in AUTO_TEXT_FIELDS:
        fields = [candidate] if isinstance(candidate, str) else list(candidate)
        if all(field in columns for field in fields):
            return fields
    for name, feature in dataset.features.items():
        if name not in (label_field, "labels") and getattr(feature, "dtype", None) in ("string", "large_string"):
            return [name]
    raise ValueError(f"no text column found; columns: {columns}. Set task.text_fields.")


def tokenize_splits(splits: DatasetDict, tokenizer: Any, text_fields: list[str] | None, max_length: int) -> DatasetDict:
    """Tokenize to fixed-length (padded to max_length) torch tensors plus "labels"."""
    fields = resolve_text_fields(splits["train"], text_fields)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers ship without one

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [[str(t) if t is not None else "" for t in batch[field]] for field in fields]
        if len(texts) > 2:  # tokenizers take one text or a pair: join the rest into the second
            separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
            texts = [texts[0], [separator.join(parts) for parts in zip(*texts[1:])]]
        return tokenizer(*texts, padding="max_length", truncation=True, max_length=max_length)

    tokenized = DatasetDict()
    for name, split in splits.items():
        drop = [column for column in split.column_names if column != "labels"]
        encoded = split.map(encode, batched=True, remove_columns=drop)
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in encoded.column_names]
        encoded.set_format("torch", columns=[*columns, "labels"])
        tokenized[name] = encoded
    return tokenized


# ---------------------------------------------------------------- sources

def _load_builtin(source: str, task: dict[str, Any]) -> DatasetDict:
    if source != "builtin:demo":
        raise ValueError(f"unknown built-in dataset {source!r}; built-in datasets: ['builtin:demo']")
    # The demo data stays the same across trials (seed 0); its size follows the limits.
    splits = demo_task(
        seed=0,
        n_train=task.get("max_train_examples") or 2000,
        n_validation=task.get("max_eval_examples") or 500,
    )
    if task.get("test_fraction"):  # generated, so the test split is a third stream of its own
        splits["test"] = demo_split(0, 2, task.get("max_test_examples") or 500, 0.05)
    return splits


def load_hub(source: str, label_field: str, seed: int, test: TestSplit = TestSplit()) -> DatasetDict:
    from datasets import load_dataset

    dataset_id, _, config = source[len("hf:"):].partition(":")
    if not dataset_id:
        raise ValueError(f"dataset {source!r}: expected hf:<id> or hf:<id>:<config>")
    loaded = load_dataset(dataset_id, config or None)
    if "train" not in loaded:
        raise ValueError(f"dataset {source!r} has no 'train' split; splits: {list(loaded)}")
    for name in ("validation", "dev", "test"):
        if name in loaded and _is_labelled(loaded[name], label_field):
            return _with_test(loaded["train"], seed, test, validation=loaded[name])
    return _with_test(loaded["train"], seed, test)


def _is_labelled(split: Dataset, label_field: str) -> bool:
    """GLUE-style test splits carry label -1 (or None) everywhere."""
    if label_field not in split.column_names:
        return False
    return any(label not in (None, -1) for label in column(split, label_field))


def load_local(source: str, seed: int, read: Callable[[Path], Dataset] | None = None,
                test: TestSplit = TestSplit()) -> DatasetDict:
    read = read or read_file
    path = Path(source).expanduser()
    if path.is_file():
        return _with_test(read(path), seed, test)
    if not path.is_dir():
        raise ValueError(f"dataset {source!r}: no such file or folder; {FORMATS_HELP}")
    files = sorted(p for p in path.iterdir() if p.is_file())
    train_file = find_split_file(files, ("train",))
    if train_file is None:
        raise ValueError(
            f"dataset folder {str(path)!r} has no train file (train{'|'.join(SUPPORTED_EXTENSIONS)}); "
            f"found: {[p.name for p in files]}"
        )
    validation_file = find_split_file(files, VALIDATION_STEMS)
    validation = read(validation_file) if validation_file is not None else None
    return _with_test(read(train_file), seed, test, validation=validation)


def read_file(path: Path) -> Dataset:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=False)
    elif suffix == ".tsv":
        # GLUE-style TSV: quotes are text, not quoting ("it 's a "classic" ...").
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    elif suffix == ".jsonl":
        frame = pd.read_json(path, lines=True)
    elif suffix == ".json":
        try:
            frame = pd.read_json(path)
        except ValueError:  # many ".json" files are JSON lines
            frame = pd.read_json(path, lines=True)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"unsupported file extension {suffix!r} for {str(path)!r}; supported: {list(SUPPORTED_EXTENSIONS)}")
    return Dataset.from_pandas(frame, preserve_index=False)


def _carve_validation(train: Dataset, seed: int) -> DatasetDict:
    if len(train) < 2:
        raise ValueError(f"need at least 2 examples to carve a validation split, got {len(train)}")
    n_validation = validation_size(len(train))
    parts = train.train_test_split(test_size=n_validation, seed=seed)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def _encode_labels(splits: DatasetDict, label_field: str) -> DatasetDict:
    """Map labels to 0..K-1 in sorted order (ClassLabel features keep their own order)."""
    feature = splits["train"].features[label_field]
    missing = (None, -1) if isinstance(feature, ClassLabel) else (None,)
    splits = DatasetDict({name: _drop_unlabelled(split, label_field, missing) for name, split in splits.items()})
    labels = {name: column(split, label_field) for name, split in splits.items()}
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        index: dict[Any, int] = {i: i for i in range(len(names))}
    else:
        values = {v for split_labels in labels.values() for v in split_labels}
        try:
            ordered = sorted(values)
        except TypeError:  # mixed types: a stable order all the same
            ordered = sorted(values, key=str)
        names = [str(v) for v in ordered]
        index = {v: i for i, v in enumerate(ordered)}
    class_label = ClassLabel(names=names)
    encoded = DatasetDict()
    for name, split in splits.items():
        codes = [index[v] for v in labels[name]]
        encoded[name] = split.remove_columns(label_field).add_column("labels", codes, feature=class_label)
    return encoded


def _drop_unlabelled(split: Dataset, label_field: str, missing: tuple) -> Dataset:
    keep = [i for i, v in enumerate(column(split, label_field)) if v not in missing]
    return split if len(keep) == len(split) else split.select(keep).flatten_indices()


def subsample(split: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(limit)).flatten_indices()


# ---------------------------------------------------------------- instruction records (causal_lm)


def read_labelled_file(path: Path, task: dict[str, Any], train: Dataset) -> Dataset:
    """A classification file (`raysearch evaluate --data`) with the training split's text columns
    and its labels coded as in training (by the label's name)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    split = subsample(read_file(path), task.get("max_test_examples"), 0)
    label_field = task.get("label_field") or "label"
    text_fields = [c for c in train.column_names if c != "labels"]
    missing = [c for c in (*text_fields, label_field) if c not in split.column_names]
    if missing:
        raise ValueError(f"{str(path)!r}: no column(s) {missing}; its columns: {split.column_names}")
    names = train.features["labels"].names
    index = {name: i for i, name in enumerate(names)}
    labels = [str(v) for v in column(split, label_field)]
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{str(path)!r}: label(s) {unknown[:5]} were not seen in training; known: {names}")
    return split.select_columns(text_fields).add_column("labels", [index[v] for v in labels],
                                                        feature=ClassLabel(names=names))
