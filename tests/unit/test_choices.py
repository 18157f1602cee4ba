"""Multiple choice scored as lm-evaluation-harness scores it (trainables/choices.py and
`CausalLMTask.option_scores`): options read from the LLM-Adapters instructions and from explicit
`choices`, each option's continuation log-likelihood checked against a plain forward pass per
option, acc_norm's normalisation by the option's characters, training on the option text, and
records whose options cannot be read refused before anything starts (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.records.score_trial import worker_experiment
from raysearch.experiment.spec import spec_from_dict
from trainables.choices import Choice, ChoiceError, decide, read_choice
from trainables.evaluation import evaluate
from trainables.instruction_data import load_instruction_splits
from trainables.instructions import IGNORE_INDEX, encode_records
from trainables.models import tiny_llama
from trainables.tasks import CausalLMTask

COMMONSENSE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "commonsense"

ARC = {"instruction": "Please choose the correct answer to the question: Which factor will most likely cause a "
                      "person to develop a fever?\n\nAnswer1: a leg muscle relaxing after exercise Answer2: a "
                      "bacterial population in the bloodstream Answer3: several viral particles on the skin "
                      "Answer4: carbohydrates being digested in the stomach\n\nAnswer format: "
                      "answer1/answer2/answer3/answer4",
       "input": "", "output": "the correct answer is answer2", "answer": "answer2"}
BOOLQ = {"instruction": "Please answer the following question with true or false, question: do iran and "
                        "afghanistan speak the same language?\n\nAnswer format: true/false",
         "input": "", "output": "the correct answer is true", "answer": "true"}


def test_llm_adapters_enumerated_options_are_read_with_the_question_alone():
    choice = read_choice(ARC)
    assert choice.question == "Which factor will most likely cause a person to develop a fever?"
    assert choice.options == ("a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
                              "several viral particles on the skin", "carbohydrates being digested in the stomach")
    assert choice.gold == 1 and choice.metric == "acc_norm"
    assert choice.context == f"Question: {choice.question}\nAnswer:"
    assert choice.continuation(1) == " a bacterial population in the bloodstream"


def test_answer_format_words_are_the_options_of_a_true_false_record():
    choice = read_choice(BOOLQ)
    assert choice == Choice("do iran and afghanistan speak the same language?", ("true", "false"), 0, "acc")


def test_explicit_choices_take_the_gold_text_or_its_index():
    by_text = read_choice({"question": "2 + 2?", "choices": ["three", "four"], "answer": "four"})
    by_index = read_choice({"question": "2 + 2?", "choices": json.dumps(["three", "four"]), "answer": "1"})
    assert by_text == by_index == Choice("2 + 2?", ("three", "four"), 1, "acc_norm")


@pytest.mark.parametrize("record, why", [
    ({**ARC, "answer": "answer5"}, "names none of the options"),
    ({**ARC, "instruction": ARC["instruction"].replace("Answer3:", "Answer7:")}, "in order"),
    ({**BOOLQ, "answer": "maybe"}, "not one of the answer format"),
    ({"question": "2 + 2?", "choices": ["three", "four"], "answer": "five"}, "neither one of the choices"),
    ({"question": "2 + 2?", "choices": ["four"], "answer": "four"}, "two or more"),
])
def test_options_that_cannot_be_read_are_an_error_saying_why(record, why):
    with pytest.raises(ChoiceError, match=why):
        read_choice(record)


def test_a_record_without_options_is_a_free_answer():
    assert read_choice({"instruction": "What is 6 x 7?", "output": "42", "answer": "42"}) is None


@pytest.mark.skipif(not COMMONSENSE.is_dir(), reason="../shared/data/commonsense is not here")
def test_every_record_of_the_shared_commonsense_files_is_read():
    for name, count in (("ARC-Easy", 4), ("ARC-Challenge", 4), ("openbookqa", 4), ("boolq", 2)):
        records = json.loads((COMMONSENSE / f"{name}.train.json").read_text())
        choices = [read_choice(r) for r in records]
        assert all(c is not None for c in choices), name
        assert sum(len(c.options) == count for c in choices) >= 0.95 * len(records), name  # a few ARC items have 3 or 5
        assert all(c.question and "Answer1" not in c.question and "Answer format" not in c.question for c in choices)


def test_acc_takes_the_highest_sum_and_acc_norm_divides_by_the_options_characters():
    options = ("aaaa", "b")
    # acc: -0.6 > -2.0 picks "b". acc_norm per character: -2.0/4 = -0.5 > -0.6/1 picks "aaaa".
    # Normalising by the continuation with its leading space instead (-2.0/5 = -0.4 < -0.6/2 = -0.3)
    # would pick "b": the test fails when the wrong length is used.
    assert decide([-2.0, -0.6], options) == (1, 0)
    # token counts are not characters: "aaaa" may be one token; per token -2.0 < -0.6 would pick "b".
    assert decide([-2.0, -0.6], ("aaaa", "b"))[1] == 0
    assert decide([-1.0, -1.0], ("x", "y")) == (0, 0)  # ties: the first option, as numpy's argmax


def option_task(records: list[dict]) -> tuple[CausalLMTask, torch.nn.Module, list]:
    model, tokenizer = tiny_llama()
    model.eval()
    task = CausalLMTask({"type": "causal_lm", "max_length": 128, "scoring": "options"}, torch.device("cpu"), 0)
    task.tokenizer = tokenizer
    split = task.encode([{**r, "source": "s"} for r in records])
    from trainables.answers import answer_pattern

    task.pattern = answer_pattern("auto", split.answers)
    task.source_answers = {}
    return task, model, task.to_answer_records(split)


def plain_option_scores(model: torch.nn.Module, tokenizer, choice: Choice) -> list[float]:
    """Each option's continuation log-likelihood from its own forward pass over context + option."""
    scores = []
    for k in range(len(choice.options)):
        context = tokenizer(choice.context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(choice.context + " " + choice.options[k], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
        scores.append(sum(logprobs[j - 1, whole[j]].item() for j in range(len(context), len(whole))))
    return scores


def test_option_scores_match_a_plain_forward_pass_per_option():
    records = [ARC, BOOLQ, {"question": "Which is a colour?", "choices": ["a red", "blue sky", "the number seven"],
                            "answer": 1, "instruction": "Which is a colour?", "output": "blue sky"}]
    task, model, answer_records = option_task(records)
    batched = task.option_scores(model, answer_records, batch_size=3)  # options of different records share batches
    for index, record in enumerate(answer_records):
        expected = plain_option_scores(model, task.tokenizer, record.choice)
        assert batched[index] == pytest.approx(expected, abs=1e-4)
    picks = task.option_picks(model, answer_records, batch_size=3)
    assert picks == {i: decide(batched[i], r.choice.options) for i, r in enumerate(answer_records)}


def test_option_text_training_writes_the_gold_option_after_the_harness_context():
    _, tokenizer = tiny_llama()
    split = encode_records([ARC], "alpaca", tokenizer, 128, train_on="option_text")
    ids, labels = split.tensors["input_ids"][0], split.tensors["labels"][0]
    labelled = ids[labels != IGNORE_INDEX].tolist()
    assert labelled[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labelled[:-1]).strip() == "a bacterial population in the bloodstream"
    assert tokenizer.decode(split.prompts[0]).replace(" ", "").startswith("question:whichfactor")
    label_form = encode_records([ARC], "alpaca", tokenizer, 128)  # the record as written
    assert "answer2" in tokenizer.decode(label_form.tensors["input_ids"][0][label_form.tensors["labels"][0] != -100])


def write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def options_experiment(tmp_path: Path, **task) -> dict:
    arc = [{**ARC, "instruction": ARC["instruction"].replace("fever", f"fever {i}"),
            "answer": f"answer{i % 4 + 1}", "output": f"the correct answer is answer{i % 4 + 1}"} for i in range(24)]
    boolq = [{**BOOLQ, "answer": "true" if i % 3 else "false"} for i in range(24)]
    spec = spec_from_dict({
        "name": "mc", "model": "builtin:tiny-llama",
        "task": {"type": "causal_lm", "max_length": 128, "scoring": "options", "test_fraction": 0.25,
                 "dataset": [str(write(tmp_path / "arc.json", arc)), str(write(tmp_path / "boolq.json", boolq))],
                 **task},
        "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}},
    })
    return worker_experiment(spec)


def test_evaluate_reports_each_sources_reading_and_the_mean_of_sources(tmp_path):
    exp = options_experiment(tmp_path)
    result = evaluate(exp, None)
    test = load_instruction_splits(exp["task"], seed=0)["test"]
    task, model, records = option_task([r for r in test])
    scores = task.option_scores(model, records, batch_size=8)
    by_source = {}
    for record, row, values in zip(records, test, [scores[i] for i in range(len(records))]):
        raw, normed = decide(values, record.choice.options)
        by_source.setdefault(row["source"], []).append(((normed if record.choice.metric == "acc_norm" else raw)
                                                         == record.choice.gold, raw == record.choice.gold))
    per = {s.source: s for s in result.per_source}
    assert per["arc"].reading == "acc_norm" and per["boolq"].reading == "acc"
    for source, pairs in by_source.items():
        assert per[source].value == pytest.approx(sum(p for p, _ in pairs) / len(pairs))
        assert per[source].acc == pytest.approx(sum(a for _, a in pairs) / len(pairs))
    assert result.overall.source == "mean of sources"
    assert result.overall.value == pytest.approx((per["arc"].value + per["boolq"].value) / 2)
    assert result.overall.low < result.overall.value < result.overall.high


def test_label_scoring_still_reports_the_option_text_reading_beside_it(tmp_path):
    result = evaluate(options_experiment(tmp_path, scoring="loglik"), None)
    assert all(s.reading == "label" and s.acc is not None and s.acc_norm is not None for s in result.per_source)


def test_option_text_training_needs_option_scoring():
    from raysearch.experiment.problems import SpecError

    with pytest.raises(SpecError, match="task.train_on"):
        spec_from_dict({"name": "x", "model": "builtin:tiny-llama",
                        "task": {"type": "causal_lm", "dataset": "x.json", "train_on": "option_text"},
                        "search": {"space": {"rank": {"choice": [4]}}}})


def test_a_record_whose_options_cannot_be_read_stops_the_run_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write(tmp_path / "arc.json", [ARC, ARC, {**ARC, "answer": "answer9"}])
    space = tmp_path / "mc.yaml"
    space.write_text(json.dumps({"name": "mc", "model": "builtin:tiny-llama",
                                 "task": {"type": "causal_lm", "dataset": str(data), "scoring": "options"},
                                 "search": {"space": {"rank": {"choice": [4]}}, "num_trials": 1,
                                            "objectives": {"val_answer_accuracy": "max"}}}))
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(tmp_path / "results"),
                                      "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert result.exit_code == 2, result.output
    assert "task.dataset" in result.output and "arc.json" in result.output and "record 3" in result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
