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
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from trainables.files import SUPPORTED_EXTENSIONS, VALIDATION_STEMS, find_split_file

AUTO_TEXT_FIELDS: tuple[str | tuple[str, ...], ...] = ("sentence", "text", ("sentence1", "sentence2"), ("question", "passage"))
VALIDATION_FRACTION = 0.1
FORMATS_HELP = (
    "expected builtin:demo, hf:<id>[:<config>], a file (.csv, .tsv, .json, .jsonl, .parquet) "
    "or a folder with train.* and validation.*/dev.*/val.* files"
)


def load_splits(task: dict[str, Any], seed: int = 0) -> DatasetDict:
    """Load "train" and "validation" with the text columns and int labels 0..K-1 in "labels"."""
    source = str(task["dataset"])
    label_field = task.get("label_field") or "label"
    if source.startswith("builtin:"):
        splits = _load_builtin(source, task)
    elif source.startswith("hf:"):
        splits = _load_hub(source, label_field, seed)
    else:
        splits = _load_local(source, seed)
    for split_name, split in splits.items():
        if label_field not in split.column_names:
            raise ValueError(
                f"dataset {source!r}: label column {label_field!r} not found in split {split_name!r}; "
                f"columns: {split.column_names}. Set task.label_field."
            )
    text_fields = resolve_text_fields(splits["train"], task.get("text_fields"), label_field)
    splits = _encode_labels(splits, label_field)
    splits = DatasetDict({name: split.select_columns([*text_fields, "labels"]) for name, split in splits.items()})
    limits = {"train": task.get("max_train_examples"), "validation": task.get("max_eval_examples")}
    return DatasetDict({name: _subsample(split, limits[name], seed) for name, split in splits.items()})


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
    return demo_task(
        seed=0,
        n_train=task.get("max_train_examples") or 2000,
        n_validation=task.get("max_eval_examples") or 500,
    )


def _load_hub(source: str, label_field: str, seed: int) -> DatasetDict:
    from datasets import load_dataset

    dataset_id, _, config = source[len("hf:"):].partition(":")
    if not dataset_id:
        raise ValueError(f"dataset {source!r}: expected hf:<id> or hf:<id>:<config>")
    loaded = load_dataset(dataset_id, config or None)
    if "train" not in loaded:
        raise ValueError(f"dataset {source!r} has no 'train' split; splits: {list(loaded)}")
    for name in ("validation", "dev", "test"):
        if name in loaded and _is_labelled(loaded[name], label_field):
            return DatasetDict(train=loaded["train"], validation=loaded[name])
    return _carve_validation(loaded["train"], seed)


def _is_labelled(split: Dataset, label_field: str) -> bool:
    """GLUE-style test splits carry label -1 (or None) everywhere."""
    if label_field not in split.column_names:
        return False
    return any(label not in (None, -1) for label in column(split, label_field))


def _load_local(source: str, seed: int, read: Callable[[Path], Dataset] | None = None) -> DatasetDict:
    read = read or _read_file
    path = Path(source).expanduser()
    if path.is_file():
        return _carve_validation(read(path), seed)
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
    if validation_file is None:
        return _carve_validation(read(train_file), seed)
    return DatasetDict(train=read(train_file), validation=read(validation_file))


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

INSTRUCTION_FIELDS = ("instruction", "input", "output", "answer")


def load_instruction_splits(task: dict[str, Any], seed: int = 0) -> DatasetDict:
    """"train" and "validation" instruction records: `instruction`, `input`, `output`, `answer`.

    `input` and `answer` are optional in the files and come back as "" when absent;
    every value is a string. Sources as for classification: a .json/.jsonl (or
    csv/tsv/parquet) file, a folder with train.* and validation.*/dev.*/val.*, or
    `hf:<id>[:<config>]`; without a validation split, 10% of train is held out.
    """
    source = str(task["dataset"])
    if source.startswith("builtin:"):
        raise ValueError(f"dataset {source!r}: causal_lm tasks have no built-in dataset; "
                         "give a .json/.jsonl file of instruction records, a folder, or hf:<id>")
    if source.startswith("hf:"):
        splits = _load_hub(source, "output", seed)
    else:
        splits = _load_local(source, seed, read=_read_records)
    limits = {"train": task.get("max_train_examples"), "validation": task.get("max_eval_examples")}
    return DatasetDict({name: _instruction_columns(_subsample(split, limits[name], seed), source, name)
                        for name, split in splits.items()})


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
