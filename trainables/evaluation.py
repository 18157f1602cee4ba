"""Scoring a trained adapter (or the bare model) on data no trial saw: `raysearch evaluate`.

The records are the experiment's test split (`task.test_fraction` of every source's training
file, drawn with `task.test_seed` before the validation split, so it is the same split every
trial left alone) or a file given on the command line. The score is the task's own metric:
answer accuracy for causal_lm (by `task.scoring`: greedy generation, the likeliest offered
label, or the likeliest option text), accuracy / F1 / Matthews for classification, each with a
95% interval (Wilson's for a proportion, a bootstrap percentile interval for F1 and Matthews,
both scipy's) and, for causal_lm, per source beside two baselines that need no model: always
giving the source's most frequent training answer (majority) and picking uniformly among the
offered answers (chance). Whatever `task.scoring` is, records that offer options are also
scored by option text (choices.py), `acc` and `acc_norm` per source, so both readings exist.
With several sources, "all" is the mean of the sources' accuracies (each source counts the
same, whatever its size), its interval from the sources' binomial variances.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class Score:
    """One metric on `n` records, with its 95% interval and the model-free baselines."""

    source: str
    n: int
    value: float
    low: float
    high: float
    majority: float | None = None
    chance: float | None = None
    acc: float | None = None  # option-text reading (records that offer options): likeliest option
    acc_norm: float | None = None  # ... likeliest per character of the option text
    reading: str = ""  # what `value` is per record: "acc", "acc_norm", "label", "generate" or "mixed"


@dataclass
class Evaluation:
    metric: str  # "answer_accuracy", "accuracy", "f1" or "matthews"
    data: str  # which records: "test split (...)" or a file
    overall: Score
    per_source: list[Score] = field(default_factory=list)
    predictions: list[str | None] = field(default_factory=list)  # per record (causal_lm: the answer given)
    correct: list[bool] = field(default_factory=list)  # per record, for paired comparisons
    sources: list[str] = field(default_factory=list)  # per record
    option_correct: dict[str, list[bool | None]] = field(default_factory=dict)  # "acc"/"acc_norm" per record (None: no options)
    option_picks: list[tuple[int, int] | None] = field(default_factory=list)  # (acc's, acc_norm's) option index per record



def paired_difference(first: list[bool], second: list[bool],
                      weights: list[float] | None = None) -> tuple[float, float, float]:
    """Accuracy of `second` minus `first` on the same records, with a 95% paired bootstrap
    percentile interval (resampling records keeps each record's pair together). `weights`: a
    weighted accuracy, e.g. 1 / (sources x the record's source size) for the mean of sources."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(a) != len(b) or not len(a):
        raise ValueError("a paired difference needs two scorings of the same records")
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=float)
    low, high = paired_bootstrap(a, b, lambda x, y, v: float(np.sum(v * (y - x)) / np.sum(v)), w)
    return float(np.sum(w * (b - a)) / np.sum(w)), low, high


def paired_bootstrap(first: np.ndarray, second: np.ndarray, statistic: Any, *more: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of `statistic(first, second, *more)` over records resampled together (scipy, seeded)."""
    from scipy.stats import bootstrap

    result = bootstrap((first, second, *more), statistic, paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES,
                       confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def proportion_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's binomtest)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def metric_interval(metric: str, labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Accuracy: Wilson; F1 / Matthews: bootstrap percentile interval over the records (seeded)."""
    if metric == "accuracy":
        return proportion_interval(int((labels == predicted).sum()), len(labels))
    from trainables.tasks import score

    return paired_bootstrap(labels, predicted, lambda y, p: score(metric, y, p))


def check_adapter(adapter_dir: Path, model_path: str) -> None:
    """A clear error for a folder that is not a PEFT adapter, or one trained on another base model."""
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{adapter_dir} is not an adapter folder (no adapter_config.json); give a folder "
                         "written by `raysearch export` or PEFT's save_pretrained")
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if base and Path(base).name != Path(model_path).name and base != model_path:
        raise ValueError(f"the adapter in {adapter_dir} was trained on {base!r}, not on this experiment's "
                         f"model {model_path!r}")


def attach_adapter(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as error:  # shape mismatches, missing modules
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"the adapter in {adapter_dir} does not fit this model (trained on another base "
                         f"model?): {first}") from None


def evaluate(experiment: dict[str, Any], adapter_dir: Path | None, *, data: Path | None = None,
             scoring: str | None = None, max_examples: int | None = None, batch_size: int = 16) -> Evaluation:
    """Score the experiment's model, with the adapter in `adapter_dir` (None: the bare model),
    on its test split or on the records in `data`."""
    task_cfg = dict(experiment["task"])
    if scoring:
        task_cfg["scoring"] = scoring
    if max_examples:
        task_cfg["max_test_examples"] = max_examples
    seed = int(experiment.get("train", {}).get("seed", 0))
    if data is None and not task_cfg.get("test_fraction"):
        raise ValueError("the experiment has no test split (task.test_fraction is 0): pass --data FILE, "
                         "or set task.test_fraction and run the search again")
    torch.manual_seed(seed)
    if task_cfg.get("type", "classification") == "causal_lm":
        return _evaluate_causal_lm(experiment, task_cfg, adapter_dir, data, seed, batch_size)
    return _evaluate_classification(experiment, task_cfg, adapter_dir, data, seed, batch_size)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _describe(task_cfg: dict[str, Any], data: Path | None) -> str:
    if data is not None:
        return str(data)
    return (f"test split: {task_cfg['test_fraction']:g} of each training file, test_seed "
            f"{task_cfg.get('test_seed', 0)}" + (f", at most {task_cfg['max_test_examples']} per source"
                                               if task_cfg.get("max_test_examples") else ""))


def _evaluate_causal_lm(experiment: dict[str, Any], task_cfg: dict[str, Any], adapter_dir: Path | None,
                        data: Path | None, seed: int, batch_size: int) -> Evaluation:
    from trainables.answers import answer_pattern
    from trainables.instruction_data import load_instruction_splits, read_instruction_file
    from trainables.contract import IN_MEMORY_BUILTINS
    from trainables.models import load_causal_lm, resolve_model_path
    from trainables.pruning import model_source
    from trainables.tasks import CausalLMTask, gold_answers_by_source

    device = _device()
    task = CausalLMTask(task_cfg, device, seed)
    splits = load_instruction_splits(task_cfg, seed=seed) if task_cfg.get("test_fraction") else None
    test = read_instruction_file(data, task_cfg.get("max_test_examples"), seed) if data is not None else splits["test"]
    source = model_source(experiment)  # the pruned base when the experiment prunes (trainables/pruning.py)
    model, task.tokenizer = load_causal_lm(source, dtype=task.dtype,
                                           trust_remote_code=experiment.get("trust_remote_code", False))
    if adapter_dir is not None:
        in_memory = source in IN_MEMORY_BUILTINS  # no folder to compare with
        check_adapter(adapter_dir, source if in_memory else resolve_model_path(source))
        model = attach_adapter(model, adapter_dir)
    model.to(device).eval()
    encoded = task.encode(test)
    golds = [a for a in encoded.answers if a]
    if not golds and not any(encoded.outputs):
        raise ValueError(f"{_describe(task_cfg, data)}: no record has an `answer` or an `output` to score against")
    task.pattern = answer_pattern(task_cfg.get("answer_pattern", "auto"), golds or encoded.outputs)
    train = task.encode(splits["train"]) if splits is not None else None
    task.source_answers = gold_answers_by_source([s for s in (train, encoded) if s is not None], task.pattern)
    records = task.to_answer_records(encoded)
    if not records:
        raise ValueError(f"{_describe(task_cfg, data)}: the answer pattern finds no gold answer in any record; "
                         "records need an `answer` (or one in `output`)")
    picks = task.option_picks(model, records, batch_size) if any(r.choice for r in records) else {}
    option_correct = {
        "acc": [picks[i][0] == r.choice.gold if i in picks else None for i, r in enumerate(records)],
        "acc_norm": [picks[i][1] == r.choice.gold if i in picks else None for i, r in enumerate(records)],
    } if picks else {}
    if task_cfg.get("scoring", "generate") == "options":
        correct, _ = task.judge(model, records, batch_size, picks=picks)
        predicted = [r.choice.options[picks[i][1 if r.choice.metric == "acc_norm" else 0]] if i in picks else None
                     for i, r in enumerate(records)]
        readings = [r.choice.metric if r.choice else "generate" for r in records]
    else:
        predicted = task.answers(model, records, batch_size)
        correct = [task.pattern.is_correct(p, r.gold) for p, r in zip(predicted, records)]
        readings = ["label" if task_cfg.get("scoring") == "loglik" else "generate"] * len(records)
    majority = _majority_answers(train, task) if train is not None else {}
    by_source: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_source.setdefault(record.source, []).append(i)
    per_source = [_accuracy(name, rows, correct, records, majority.get(name), task, option_correct, readings)
                  for name, rows in sorted(by_source.items())]
    if len(per_source) > 1:
        overall = _mean_of_sources(per_source)
    else:
        overall = _accuracy("all", list(range(len(records))), correct, records, None, task, option_correct, readings)
        overall.majority = per_source[0].majority if per_source else None
    return Evaluation("answer_accuracy", _describe(task_cfg, data), overall, per_source if len(per_source) > 1 else [],
                      predictions=predicted, correct=correct, sources=[r.source for r in records],
                      option_correct=option_correct, option_picks=[picks.get(i) for i in range(len(records))])


def _mean_of_sources(per_source: list[Score]) -> Score:
    """The sources' accuracies averaged, each source weighing the same; 95% normal interval from
    the sources' binomial variances (var = sum p(1-p)/n over sources / k^2)."""
    from scipy.stats import norm

    k = len(per_source)
    value = float(np.mean([s.value for s in per_source]))
    spread = float(np.sqrt(sum(s.value * (1 - s.value) / max(s.n, 1) for s in per_source)) / k)
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))

    def mean(name: str) -> float | None:
        values = [getattr(s, name) for s in per_source]
        return None if any(v is None for v in values) else float(np.mean(values))

    readings = {s.reading for s in per_source}
    return Score("mean of sources", sum(s.n for s in per_source), value, max(0.0, value - z * spread),
                 min(1.0, value + z * spread), mean("majority"), mean("chance"), mean("acc"), mean("acc_norm"),
                 readings.pop() if len(readings) == 1 else "mixed")


def _majority_answers(train: Any, task: Any) -> dict[str, str]:
    """Each source's most frequent gold answer in its training split."""
    from trainables.tasks import gold_answers

    counts: dict[str, Counter] = {}
    for source, gold in zip(train.sources, gold_answers(train, task.pattern)):
        if gold:
            counts.setdefault(source, Counter())[task.pattern.normalize(gold)] += 1
    return {source: counter.most_common(1)[0][0] for source, counter in counts.items()}


def _accuracy(source: str, rows: list[int], correct: list[bool], records: list[Any], majority_answer: str | None,
              task: Any, option_correct: dict[str, list[bool | None]], readings: list[str]) -> Score:
    n, hits = len(rows), int(sum(correct[i] for i in rows))
    low, high = proportion_interval(hits, n)
    majority = None
    if majority_answer is not None:
        majority = sum(task.pattern.is_correct(majority_answer, records[i].gold) for i in rows) / max(n, 1)
    offered = [len(records[i].choice.options) if records[i].choice else len(records[i].candidates) for i in rows]
    chance = float(np.mean([1.0 / k for k in offered])) if n and all(offered) else None
    reading = {readings[i] for i in rows}
    score = Score(source, n, hits / max(n, 1), low, high, majority, chance,
                  reading=reading.pop() if len(reading) == 1 else "mixed")
    for name, values in option_correct.items():
        kept = [values[i] for i in rows if values[i] is not None]
        setattr(score, name, float(np.mean(kept)) if kept else None)
    return score


def _evaluate_classification(experiment: dict[str, Any], task_cfg: dict[str, Any], adapter_dir: Path | None,
                             data: Path | None, seed: int, batch_size: int) -> Evaluation:
    from trainables.data import load_splits, num_labels, read_labelled_file, tokenize_splits
    from trainables.models import load_classifier, resolve_model_path
    from trainables.tasks import score

    splits = load_splits(task_cfg, seed=seed)
    if data is not None:
        splits["test"] = read_labelled_file(data, task_cfg, splits["train"])
    names = splits["train"].features["labels"].names
    model, tokenizer = load_classifier(experiment["model"], num_labels(splits),
                                       trust_remote_code=experiment.get("trust_remote_code", False))
    if adapter_dir is not None:
        check_adapter(adapter_dir, resolve_model_path(experiment["model"]))
        model = attach_adapter(model, adapter_dir)
    device = _device()
    model.to(device).eval()
    # tokenize_splits reads the text columns off "train": the test split has the same ones.
    test = tokenize_splits(splits.__class__(train=splits["test"]), tokenizer, task_cfg.get("text_fields"),
                           task_cfg["max_length"])["train"]
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in test.column_names]
    tensors = test.with_format("torch", columns=[*columns, "labels"])[:]
    predictions = []
    with torch.no_grad():
        for start in range(0, len(tensors["labels"]), batch_size):
            batch = {k: tensors[k][start : start + batch_size].to(device) for k in columns}
            predictions.append(model(**batch).logits.argmax(-1).cpu())
    labels, predicted = tensors["labels"].numpy(), torch.cat(predictions).numpy()
    metric = task_cfg.get("metric", "accuracy")
    low, high = metric_interval(metric, labels, predicted)
    train_labels = np.asarray(splits["train"]["labels"])
    majority_label = int(np.bincount(train_labels, minlength=len(names)).argmax())
    majority = score(metric, labels, np.full_like(labels, majority_label))
    overall = Score("all", len(labels), score(metric, labels, predicted), low, high, majority,
                    1.0 / len(names) if metric == "accuracy" else None)
    return Evaluation(metric, _describe(task_cfg, data), overall, predictions=[names[int(p)] for p in predicted],
                      correct=(labels == predicted).tolist(), sources=["all"] * len(labels))
