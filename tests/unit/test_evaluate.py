"""`raysearch evaluate`'s scoring (trainables/evaluation.py), without Ray or MLflow: the test
split it reads, answers by log-likelihood checked against a plain forward pass, intervals,
baselines, and the errors a user gets for bad input (exit code 2 through the CLI)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import binomtest
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.records.score_trial import worker_experiment
from raysearch.experiment.spec import spec_from_dict
from trainables.instruction_data import load_instruction_splits
from trainables.evaluation import evaluate, proportion_interval
from trainables.instructions import build_prompt
from trainables.models import tiny_llama

TEMPLATE = "Q: {instruction}\nA: "


def write_records(path: Path, n: int, kind: str) -> Path:
    """n records of a true/false source or a four-option source, answers spread over the options."""
    records = []
    for i in range(n):
        if kind == "tf":
            answer = "true" if i % 3 else "false"  # 2/3 true: the majority answer
            records.append({"instruction": f"is {i} a number?\n\nAnswer format: true/false", "input": "",
                            "output": f"the correct answer is {answer}", "answer": answer})
        else:
            answer = f"answer{i % 4 + 1}"
            records.append({"instruction": f"pick {i}\n\nAnswer format: answer1/answer2/answer3/answer4",
                            "input": "", "output": f"the correct answer is {answer}", "answer": answer})
    path.write_text(json.dumps(records))
    return path


def experiment(tmp_path: Path, **task: Any) -> dict[str, Any]:
    spec = spec_from_dict({
        "name": "eval", "model": "builtin:tiny-llama",
        "task": {"type": "causal_lm", "max_length": 48, "prompt_template": TEMPLATE, "scoring": "loglik",
                 "test_fraction": 0.25, "test_seed": 3,
                 "dataset": [str(write_records(tmp_path / "tf.json", 40, "tf")),
                             str(write_records(tmp_path / "mc.json", 40, "mc"))], **task},
        "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}},
    })
    return worker_experiment(spec)


def full_loglik_choice(model: torch.nn.Module, tokenizer: Any, record: dict[str, str], options: list[str]) -> str:
    """The option whose whole response has the highest summed log-probability, one forward each."""
    prompt = tokenizer(build_prompt(record, TEMPLATE), add_special_tokens=True)["input_ids"]
    scores = []
    for option in options:
        response = tokenizer(record["output"].replace(record["answer"], option), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        scores.append(sum(logprobs[len(prompt) - 1 + j, token].item() for j, token in enumerate(response)))
    return options[int(np.argmax(scores))]


def test_loglik_accuracy_matches_a_plain_forward_pass_per_source(tmp_path):
    exp = experiment(tmp_path)
    result = evaluate(exp, None)
    test = load_instruction_splits(exp["task"], seed=0)["test"]
    assert result.overall.n == len(test) == 20  # 25% of 40 records, twice
    model, tokenizer = tiny_llama()
    model.eval()
    expected: dict[str, list[bool]] = {}
    for record in test:
        options = ["true", "false"] if record["source"] == "tf" else [f"answer{k}" for k in range(1, 5)]
        expected.setdefault(record["source"], []).append(
            full_loglik_choice(model, tokenizer, record, options) == record["answer"])
    assert [s.source for s in result.per_source] == ["mc", "tf"]
    for score in result.per_source:
        assert score.value == pytest.approx(np.mean(expected[score.source]))
        assert score.chance == pytest.approx(0.25 if score.source == "mc" else 0.5)
    assert result.overall.value == pytest.approx(np.mean([v for vs in expected.values() for v in vs]))


def test_majority_baseline_is_the_most_frequent_training_answer(tmp_path):
    exp = experiment(tmp_path)
    result = evaluate(exp, None)
    test = load_instruction_splits(exp["task"], seed=0)["test"]
    tf = [r["answer"] for r in test if r["source"] == "tf"]
    (tf_score,) = [s for s in result.per_source if s.source == "tf"]
    assert tf_score.majority == pytest.approx(tf.count("true") / len(tf))  # "true" is 2/3 of training


def test_the_test_split_is_the_same_whatever_the_training_seed(tmp_path):
    exp = experiment(tmp_path)
    first = load_instruction_splits(exp["task"], seed=0)
    other = load_instruction_splits(exp["task"], seed=7)
    assert list(first["test"]["instruction"]) == list(other["test"]["instruction"])
    assert not set(first["test"]["instruction"]) & {*other["train"]["instruction"], *other["validation"]["instruction"]}


def test_interval_is_wilsons():
    low, high = proportion_interval(37, 50)
    expected = binomtest(37, 50).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low < 37 / 50 < high and high - low == pytest.approx(0.24, abs=0.02)


def test_an_adapter_changes_the_answers_and_is_scored(tmp_path):
    exp = experiment(tmp_path)
    model, _ = tiny_llama()
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    with_adapter, base = evaluate(exp, tmp_path / "adapter"), evaluate(exp, None)
    assert with_adapter.overall.n == base.overall.n
    assert [s.value for s in with_adapter.per_source] != [s.value for s in base.per_source]


def test_generation_scoring_reads_answers_from_text(tmp_path):
    result = evaluate(experiment(tmp_path, scoring="generate", max_new_tokens=4), None)
    assert 0.0 <= result.overall.value <= 1.0 and result.overall.n == 20
    assert result.overall.low <= result.overall.value <= result.overall.high


def test_data_file_without_answers_is_an_error(tmp_path):
    data = tmp_path / "no_answers.json"
    data.write_text(json.dumps([{"instruction": "say hi", "output": "hello there"}]))
    with pytest.raises(ValueError, match="answer"):
        evaluate(experiment(tmp_path), None, data=data)


def test_adapter_of_another_base_model_is_an_error(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/other-model",
                                                             "peft_type": "LORA"}))
    with pytest.raises(ValueError, match="trained on 'org/other-model'"):
        evaluate(experiment(tmp_path), adapter)
    with pytest.raises(ValueError, match="not an adapter folder"):
        evaluate(experiment(tmp_path), tmp_path)


def test_classification_accuracy_with_interval_and_majority(tmp_path, tiny_model_dir):
    exp = worker_experiment(spec_from_dict({
        "name": "eval-cls", "model": str(tiny_model_dir),
        "task": {"dataset": "builtin:demo", "max_length": 24, "test_fraction": 0.2, "max_test_examples": 60},
        "search": {"space": {"rank": {"choice": [4]}}},
    }))
    result = evaluate(exp, None)
    assert result.metric == "accuracy" and result.overall.n == 60
    assert result.overall.majority == pytest.approx(0.5, abs=0.1)  # the demo test stream is balanced
    assert result.overall.low <= result.overall.value <= result.overall.high


def test_cli_rejects_bad_input_with_exit_code_2(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps({"name": "x", "model": "builtin:tiny-llama",
                                 "task": {"type": "causal_lm", "dataset": str(write_records(tmp_path / "tf.json", 8, "tf"))},
                                 "search": {"space": {"rank": {"choice": [4]}},
                                            "objectives": {"val_answer_accuracy": "max"}}}))
    runner = CliRunner()
    cases = [
        (["evaluate", "demo"], "exactly one of --best"),
        (["evaluate", "demo", "--best", "--base"], "exactly one of --best"),
        (["evaluate", "--base", "--space", str(space), "--data", str(tmp_path / "missing.json")], "no such file"),
        (["evaluate", "--adapter", str(tmp_path / "nope"), "--space", str(space)], "no such folder"),
        (["evaluate", "--base", "--space", str(space), "--scoring", "vibes"], "allowed: generate, loglik"),
        (["evaluate", "--base", "--space", str(space)], "no test split"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def test_paired_difference_interval_covers_the_difference_and_excludes_zero_when_clear():
    from trainables.evaluation import paired_difference

    before = [True] * 30 + [False] * 70
    after = [True] * 60 + [False] * 40  # 30 records more right, none less
    diff, low, high = paired_difference(before, after)
    assert diff == pytest.approx(0.30) and 0.2 < low < diff < high < 0.4
    diff, low, high = paired_difference(before, before)
    assert diff == 0.0 and low == high == 0.0
    with pytest.raises(ValueError, match="same records"):
        paired_difference(before, after[:10])
