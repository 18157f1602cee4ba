"""Sequence-classification tasks: where the examples come from and how they become tensors.

A task is a plain dict (from the experiment file's `task:` section):
`dataset` ("builtin:demo", "hf:<id>[:<config>]", a local file or a folder),
`text_fields` (None = auto), `label_field` (default "label"), `max_length`,
`max_train_examples`, `max_eval_examples`.

`builtin:demo` is SYNTHETIC, generated from templates, for demos and tests
only: movie-review-like sentences whose sentiment hinges on negation ("was not
good"), contrast ("dull at first, but the ending was moving": the clause after
"but" decides), intensifiers and irrelevant distractor clauses, with 5% of labels
flipped so accuracy stays below 100%. A bag of words cannot solve it, which is
what makes adapter configurations differ after a short fine-tune of MiniLM.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from trainables.files import SUPPORTED_EXTENSIONS, VALIDATION_STEMS, find_split_file, source_name

AUTO_TEXT_FIELDS: tuple[str | tuple[str, ...], ...] = ("sentence", "text", ("sentence1", "sentence2"), ("question", "passage"))
VALIDATION_FRACTION = 0.1
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
        splits = _load_hub(source, label_field, seed, held_out)
    else:
        splits = _load_local(source, seed, test=held_out)
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
    return _subsample(split, task.get(key), TestSplit.of(task).seed if split_name == "test" else seed)


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
        n_test = max(1, round(self.fraction * len(train)))
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
    column (datasets >= 4) that decodes one row at a time: 1.1 s per pass over SST-2's 67k
    training rows, against a few milliseconds here."""
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
        splits["test"] = _demo_split(0, 2, task.get("max_test_examples") or 500, 0.05)
    return splits


def _load_hub(source: str, label_field: str, seed: int, test: TestSplit = TestSplit()) -> DatasetDict:
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


def _load_local(source: str, seed: int, read: Callable[[Path], Dataset] | None = None,
                test: TestSplit = TestSplit()) -> DatasetDict:
    read = read or _read_file
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


def _read_file(path: Path) -> Dataset:
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
    n_validation = max(1, round(VALIDATION_FRACTION * len(train)))
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


def _subsample(split: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(limit)).flatten_indices()


# ---------------------------------------------------------------- instruction records (causal_lm)

INSTRUCTION_FIELDS = ("instruction", "input", "output", "answer")  # plus `source`, added per source


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
        splits = _load_hub(path, source.get("label_field") or "label" if templated else "output", seed, held_out)
    else:
        splits = _load_local(path, seed, read=_read_file if templated else _read_records, test=held_out)
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
    split = _instruction_columns(_subsample(_read_records(path), limit, seed), str(path), "test")
    return split.add_column("source", [source_name(str(path))] * len(split))


def read_labelled_file(path: Path, task: dict[str, Any], train: Dataset) -> Dataset:
    """A classification file (`raysearch evaluate --data`) with the training split's text columns
    and its labels coded as in training (by the label's name)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    split = _subsample(_read_file(path), task.get("max_test_examples"), 0)
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


def _read_records(path: Path) -> Dataset:
    """JSON/JSON lines through `json`, so "true" or "42" stay strings (pandas would convert them)."""
    import json

    if path.suffix.lower() not in (".json", ".jsonl"):
        return _read_file(path)
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{str(path)!r}: expected a JSON list of records (objects) or JSON lines")
    # Only the instruction fields: other keys may mix types across records.
    return Dataset.from_list([{k: r[k] for k in INSTRUCTION_FIELDS if k in r} for r in records])


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


# ---------------------------------------------------------------- the demo task

_SUBJECTS = [
    "the film", "this movie", "the story", "the plot", "the acting", "the script", "the soundtrack",
    "the dialogue", "the ending", "the cast", "the direction", "the cinematography", "the sequel",
    "the premise", "the pacing", "the lead performance", "the screenplay", "the humor", "the finale",
]
_POSITIVE = [
    "good", "great", "brilliant", "charming", "moving", "delightful", "clever", "gripping", "beautiful",
    "funny", "memorable", "engaging", "touching", "superb", "thoughtful", "stunning", "witty", "heartfelt",
]
_NEGATIVE = [
    "bad", "dull", "boring", "clumsy", "tedious", "awful", "forgettable", "lifeless", "predictable",
    "shallow", "messy", "painful", "bland", "tiresome", "weak", "pointless", "flat", "incoherent",
]
_VERBS = ["was", "is", "felt", "seemed", "turned out to be"]
_NEGATED_VERBS = ["was not", "is not", "was never", "never felt", "did not seem", "was far from", "is hardly"]
_INTENSIFIERS = ["", "", "", "very ", "really ", "truly ", "incredibly ", "quite ", "remarkably ", "rather "]
_CONTRASTS = [", but ", ", yet ", ". however, ", "; still, ", " - but in the end "]
_OPENERS = ["", "", "", "honestly, ", "overall, ", "in the end, ", "to be fair, ", "i have to say "]
# Irrelevant to the label, some on purpose with sentiment words about something else.
_DISTRACTORS = [
    "i saw it on a rainy sunday", "my cousin recommended it", "the theater was half empty",
    "it runs about two hours", "i went in with no expectations", "the popcorn was terrible",
    "the seats were great", "we arrived late", "the trailer gave away nothing", "it is based on a novel",
    "the parking was awful", "my friend loved the poster", "it opened last friday",
]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _clause(rng: np.random.Generator, positive: bool) -> str:
    """One clause with the given sentiment; a third are negated (the adjective has the opposite sign)."""
    subject = _pick(rng, _SUBJECTS)
    if rng.random() < 0.33:
        adjective = _pick(rng, _NEGATIVE if positive else _POSITIVE)
        return f"{subject} {_pick(rng, _NEGATED_VERBS)} {adjective}"
    adjective = _pick(rng, _POSITIVE if positive else _NEGATIVE)
    return f"{subject} {_pick(rng, _VERBS)} {_pick(rng, _INTENSIFIERS)}{adjective}"


def _demo_sentence(rng: np.random.Generator, label: int) -> str:
    positive = bool(label)
    kind = rng.random()
    if kind < 0.30:
        body = _clause(rng, positive)
    elif kind < 0.60:  # the clause after the contrast word decides; the first usually disagrees
        first = _clause(rng, not positive if rng.random() < 0.8 else positive)
        body = f"{first}{_pick(rng, _CONTRASTS)}{_clause(rng, positive)}"
    elif kind < 0.75:
        first = _clause(rng, not positive if rng.random() < 0.8 else positive)
        body = f"although {first}, {_clause(rng, positive)}"
    else:
        body = f"{_clause(rng, positive)} and {_clause(rng, positive)}"
    body = _pick(rng, _OPENERS) + body
    if rng.random() < 0.4:
        distractor = _pick(rng, _DISTRACTORS)
        body = f"{distractor}. {body}" if rng.random() < 0.5 else f"{body}. {distractor}"
    return body + " ."


def _demo_split(seed: int, stream: int, n: int, label_noise: float) -> Dataset:
    # Independent streams per split (stream) and for noise, so sizes and noise never shift the text.
    text_rng = np.random.default_rng([seed, stream, 0])
    noise_rng = np.random.default_rng([seed, stream, 1])
    labels = text_rng.permutation(np.arange(n) % 2)  # balanced: n // 2 of each (+1 if n is odd)
    sentences = [_demo_sentence(text_rng, int(label)) for label in labels]
    # Flip the same number of each class, so noise keeps the balance.
    n_flip_per_class = int(round(label_noise * n)) // 2
    noisy = labels.copy()
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        noisy[noise_rng.choice(members, size=min(n_flip_per_class, len(members)), replace=False)] = 1 - cls
    return Dataset.from_dict({"sentence": sentences, "label": noisy.tolist()})


def demo_task(seed: int = 0, n_train: int = 2000, n_validation: int = 500, label_noise: float = 0.05) -> DatasetDict:
    """The synthetic `builtin:demo` sentiment task (see the module docstring); same seed, same data."""
    return DatasetDict(
        train=_demo_split(seed, 0, n_train, label_noise),
        validation=_demo_split(seed, 1, n_validation, label_noise),
    )
