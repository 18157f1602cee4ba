"""trainables.data: the demo task, local files and folders, label mapping, tokenization."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset

from trainables.data import column, demo_task, load_splits, num_labels, tokenize_splits

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"  # ../shared beside the checkout


def _rows(n: int = 40) -> list[dict]:
    return [{"text": f"example number {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(n)]


def test_demo_task_is_deterministic_and_seed_dependent():
    first, again, other = demo_task(seed=3, n_train=300, n_validation=100), demo_task(seed=3, n_train=300, n_validation=100), demo_task(seed=4, n_train=300, n_validation=100)
    for split in ("train", "validation"):
        assert first[split]["sentence"] == again[split]["sentence"]
        assert first[split]["label"] == again[split]["label"]
    assert first["train"]["sentence"] != other["train"]["sentence"]


def test_demo_task_is_balanced_binary_with_sentence_and_label():
    task = demo_task(n_train=1000, n_validation=400)
    assert task["train"].column_names == ["sentence", "label"]
    assert len(task["train"]) == 1000 and len(task["validation"]) == 400
    for split in ("train", "validation"):
        labels = task[split]["label"]
        assert set(labels) == {0, 1}
        assert labels.count(1) == len(labels) // 2


def test_demo_task_has_label_noise_on_the_same_sentences():
    clean, noisy = demo_task(n_train=1000, label_noise=0.0), demo_task(n_train=1000)
    assert clean["train"]["sentence"] == noisy["train"]["sentence"]
    flipped = sum(a != b for a, b in zip(clean["train"]["label"], noisy["train"]["label"]))
    assert flipped == 50  # 5% of 1000, half from each class


def test_demo_task_needs_more_than_words():
    sentences = demo_task(n_train=1000)["train"]["sentence"]
    assert sum(" but " in s or "however" in s or "although" in s for s in sentences) > 200
    assert sum(" not " in s or " never " in s for s in sentences) > 100


def test_demo_validation_mostly_disjoint_from_train():
    task = demo_task()
    train = set(task["train"]["sentence"])
    overlap = sum(s in train for s in task["validation"]["sentence"])
    assert overlap / len(task["validation"]) < 0.05


def test_builtin_demo_through_load_splits_respects_limits():
    splits = load_splits({"dataset": "builtin:demo", "max_train_examples": 200, "max_eval_examples": 50})
    assert (len(splits["train"]), len(splits["validation"])) == (200, 50)
    assert num_labels(splits) == 2
    assert splits["train"].column_names == ["sentence", "labels"]


def _write(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == ".parquet":
        frame.to_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_file_loads_with_validation_carved(tmp_path, suffix):
    path = tmp_path / f"reviews{suffix}"
    _write(path, _rows(40))
    splits = load_splits({"dataset": str(path)}, seed=1)
    assert (len(splits["train"]), len(splits["validation"])) == (36, 4)
    assert set(splits["train"]["text"]).isdisjoint(splits["validation"]["text"])
    assert num_labels(splits) == 2
    assert load_splits({"dataset": str(path)}, seed=1)["validation"]["text"] == splits["validation"]["text"]


def test_folder_with_train_and_dev(tmp_path):
    _write(tmp_path / "train.tsv", _rows(30))
    _write(tmp_path / "dev.tsv", _rows(6))
    splits = load_splits({"dataset": str(tmp_path)})
    assert (len(splits["train"]), len(splits["validation"])) == (30, 6)


def test_folder_without_train_file_is_an_error(tmp_path):
    _write(tmp_path / "dev.csv", _rows(6))
    with pytest.raises(ValueError, match="no train file"):
        load_splits({"dataset": str(tmp_path)})


def test_unsupported_extension_and_missing_path(tmp_path):
    path = tmp_path / "reviews.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match="unsupported file extension"):
        load_splits({"dataset": str(path)})
    with pytest.raises(ValueError, match="no such file or folder"):
        load_splits({"dataset": str(tmp_path / "nope.csv")})


def test_missing_label_column_names_the_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    _write(path, _rows(20))
    with pytest.raises(ValueError, match=r"'sentiment'.*columns: \['text', 'label'\]"):
        load_splits({"dataset": str(path), "label_field": "sentiment"})


def test_string_labels_mapped_in_sorted_order(tmp_path):
    rows = [{"sentence": f"s{i}", "mood": ["pos", "neg", "neutral"][i % 3]} for i in range(30)]
    path = tmp_path / "moods.jsonl"
    _write(path, rows)
    splits = load_splits({"dataset": str(path), "label_field": "mood"})
    assert num_labels(splits) == 3
    assert splits["train"].features["labels"].names == ["neg", "neutral", "pos"]
    for example in splits["train"]:
        original = rows[int(example["sentence"][1:])]["mood"]
        assert splits["train"].features["labels"].int2str(example["labels"]) == original


def test_text_fields_auto_pair_and_explicit_check(tmp_path):
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2} for i in range(20)]
    path = tmp_path / "pairs.csv"
    _write(path, rows)
    assert load_splits({"dataset": str(path)})["train"].column_names == ["sentence1", "sentence2", "labels"]
    with pytest.raises(ValueError, match="text_fields"):
        load_splits({"dataset": str(path), "text_fields": ["premise"]})


@pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason=f"SST-2 not present at {SST2}")
def test_sst2_folder_loads_with_limit():
    splits = load_splits({"dataset": str(SST2), "max_train_examples": 500, "max_eval_examples": 100}, seed=0)
    assert (len(splits["train"]), len(splits["validation"])) == (500, 100)
    assert num_labels(splits) == 2
    assert splits["train"].column_names == ["sentence", "labels"]
    again = load_splits({"dataset": str(SST2), "max_train_examples": 500}, seed=0)
    assert column(again["train"], "sentence") == column(splits["train"], "sentence")


def test_column_reads_the_rows_a_shuffled_selection_holds():
    """A split after shuffle/select is an index mapping over the file's table: the column
    must come back in the selection's order, not the table's."""
    table = Dataset.from_dict({"n": list(range(100)), "label": [i % 3 for i in range(100)]})
    selection = table.shuffle(seed=1).select(range(10, 30))
    assert column(selection, "n") == [row["n"] for row in selection]
    assert column(selection, "n") != list(range(10, 30))
    assert column(selection, "label") == [n % 3 for n in column(selection, "n")]


def test_tokenize_splits_fixed_length_tensors():
    from transformers import AutoTokenizer

    from trainables.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    splits = load_splits({"dataset": "builtin:demo", "max_train_examples": 64, "max_eval_examples": 16})
    tokenized = tokenize_splits(splits, tokenizer, ["sentence"], max_length=24)
    batch = tokenized["train"][:8]
    assert batch["input_ids"].shape == (8, 24) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].shape == (8, 24)
    assert "token_type_ids" in batch
    assert batch["labels"].tolist() == splits["train"]["labels"][:8]
    assert set(tokenized["validation"].column_names) >= {"input_ids", "attention_mask", "labels"}
