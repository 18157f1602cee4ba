"""Bad input stops `raysearch run` before anything starts: exit code 2, the YAML path named,
no results folder, no MLflow store, no Ray."""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.experiment.preflight import columns_of, machine_problems, resource_problems
from raysearch.experiment.spec import spec_from_dict

SPACE = {"rank": {"choice": [4, 8]}}


def experiment(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "pre", "search": {"space": dict(SPACE)}}
    data.update(sections)
    return data


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    import raysearch.search.driver

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("bad input must stop the run before Ray or the search starts")

    monkeypatch.setattr(ray, "init", started)
    monkeypatch.setattr(raysearch.search.driver, "run_search", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def run_bad(tmp_path: Path, data: dict[str, Any] | str, *options: str, field: str) -> str:
    """`raysearch run` on `data`; asserts exit 2, `field` named, and nothing created. Returns the output."""
    space = tmp_path / "exp.yaml"
    space.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    before = set(tmp_path.iterdir())
    args = ["run", "--space", str(space), "--storage", str(tmp_path / "results"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert field in result.output, result.output
    assert set(tmp_path.iterdir()) == before  # no results folder, no mlflow.db
    return result.output


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("search: {space: {rank: {choice: [4, 8]}\n", "invalid YAML"),
        (experiment(bogus=1), "bogus"),
        (experiment(train={"lr": "fast"}), "train.lr"),
        ({"name": "pre", "search": {"space": {"rank": {"choice": []}}}}, "search.space.rank.choice"),
        ({"name": "pre", "search": {"space": {"lr": {"loguniform": [0.1, 0.01]}}}}, "search.space.lr.loguniform"),
        ({"name": "pre", "search": {"space": {"rank": {"choice": [0, 8]}}}}, "search.space.rank.choice[0]"),
        ({"name": "pre", "search": {"space": {"variant": {"choice": ["lora", "qlora"]}}}},
         "search.space.variant.choice[1]"),
        ({"name": "pre", "search": {"space": {"variant": {"choice": ["lora", "rora"]},
                                              "scaling": {"choice": ["lora", "rora"]}}}}, "search.space.scaling"),
        ({"name": "pre", "search": {"space": {"rank": {"choice": [4], "when": {"variant": ["lora"]}}}}},
         "search.space.rank.when.variant"),
    ],
    ids=["malformed-yaml", "unknown-key", "wrong-type", "empty-choice", "low-above-high", "non-positive-rank",
         "unknown-variant", "variant-cannot-use", "when-missing-dimension"],
)
def test_invalid_experiment_file_starts_nothing(tmp_path, data, field):
    run_bad(tmp_path, data, field=field)


def test_missing_experiment_file(tmp_path):
    result = CliRunner().invoke(app, ["run", "--space", str(tmp_path / "nope.yaml"),
                                      "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2 and "cannot read the experiment file" in result.output
    assert list(tmp_path.iterdir()) == []


def test_missing_data_file(tmp_path):
    output = run_bad(tmp_path, experiment(task={"dataset": str(tmp_path / "data" / "train.csv")}), field="task.dataset")
    assert "no such file or folder" in output


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_label_column_missing_from_a_local_file(tmp_path, suffix):
    data = tmp_path / "data"
    data.mkdir()
    write_records(data / f"train{suffix}", [{"sentence": "good", "target": 1}, {"sentence": "bad", "target": 0}])
    output = run_bad(tmp_path, experiment(task={"dataset": str(data)}), field="task.label_field")
    assert "'label'" in output and "sentence, target" in output


def test_text_field_missing_from_a_local_file(tmp_path):
    file = tmp_path / "reviews.csv"
    write_records(file, [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    run_bad(tmp_path, experiment(task={"dataset": str(file), "text_fields": ["sentence"]}), field="task.text_fields")


def test_local_data_with_the_right_columns_passes(tmp_path):
    file = tmp_path / "reviews.jsonl"
    write_records(file, [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    spec = spec_from_dict(experiment(task={"dataset": str(file)}, tracking={"mlflow_uri": f"sqlite:///{tmp_path}/m.db"}))
    assert machine_problems(spec, str(tmp_path / "results")) == []


def test_missing_model_folder(tmp_path):
    output = run_bad(tmp_path, experiment(model=str(tmp_path / "no-model")), field="model")
    assert "hub id" in output


def test_hub_ids_and_builtins_are_not_checked_offline():
    for model in ("builtin:minilm", "bert-base-uncased", "org/some-model"):
        spec = spec_from_dict(experiment(model=model, tracking={"mlflow_uri": "sqlite:///mlflow.db"}))
        assert not [p for p in machine_problems(spec, "/tmp/raysearch-preflight") if p.path == "model"]


def test_sqlite_folder_missing(tmp_path):
    output = run_bad(tmp_path, experiment(), "--mlflow-uri", f"sqlite:///{tmp_path}/nowhere/mlflow.db",
                     field="tracking.mlflow_uri")
    assert "does not exist" in output


def test_mlflow_server_not_answering_and_credentials_never_printed(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = run_bad(tmp_path, experiment(), "--mlflow-uri", f"http://alice:s3cret@127.0.0.1:{port}",
                     field="tracking.mlflow_uri")
    assert "does not answer" in output
    assert "s3cret" not in output and "alice" not in output


def test_storage_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    space = tmp_path / "exp.yaml"
    space.write_text(yaml.safe_dump(experiment()))
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(blocker / "results"),
                                      "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert result.exit_code == 2 and "storage" in result.output and "not a folder" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_trial_larger_than_the_machine(tmp_path):
    output = run_bad(tmp_path, experiment(resources={"workers_per_trial": 64, "cpus_per_worker": 1},
                                          train={"batch_size": 64}), field="resources.cpus_per_worker")
    assert "64 x 1 CPUs" in output


def test_gpus_beyond_the_machine(tmp_path):
    run_bad(tmp_path, experiment(resources={"workers_per_trial": 64, "cpus_per_worker": 0.01, "gpus_per_worker": 1},
                                 train={"batch_size": 64}), field="resources.gpus_per_worker")


def test_batch_not_divisible_by_workers(tmp_path):
    run_bad(tmp_path, experiment(resources={"workers_per_trial": 2, "cpus_per_worker": 0.5}, train={"batch_size": 5}),
            field="train.batch_size")


def test_resources_are_not_checked_against_this_machine_on_a_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    spec = spec_from_dict(experiment(resources={"workers_per_trial": 64, "cpus_per_worker": 1},
                                     train={"batch_size": 64}))
    assert resource_problems(spec) == []


def test_every_problem_is_reported_at_once(tmp_path):
    output = run_bad(tmp_path, experiment(model=str(tmp_path / "no-model"), task={"dataset": str(tmp_path / "x.csv")}),
                     "--mlflow-uri", f"sqlite:///{tmp_path}/nowhere/m.db", field="3 problems")
    for field in ("model", "task.dataset", "tracking.mlflow_uri"):
        assert field in output


def test_columns_of_reads_only_the_start_of_a_json_array(tmp_path):
    file = tmp_path / "big.json"
    file.write_text("[" + ",".join(json.dumps({"a": i, "b": "x" * 100}) for i in range(20_000)) + "]")
    assert columns_of(file) == ["a", "b"]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(records)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records")
    else:
        frame.to_parquet(path)


def test_target_modules_the_model_lacks_are_caught_before_start(tmp_path, tiny_model_dir):
    from raysearch.experiment.model_probe import target_problems

    base = {"name": "t", "model": str(tiny_model_dir), "task": {"dataset": "builtin:demo"},
            "search": {"space": {"rank": {"choice": [4]}}}}
    bad = spec_from_dict({**base, "adapter": {"target_modules": ["query", "no_such_proj"]}})
    (problem,) = target_problems(bad)
    assert problem.path == "adapter.target_modules" and problem.value == ["query", "no_such_proj"]
    assert "['no_such_proj'] match no nn.Linear/Conv1D layer" in problem.message and "'value'" in problem.message
    assert target_problems(spec_from_dict({**base, "adapter": {"target_modules": ["query", "value"]}})) == []
    causal = spec_from_dict({"name": "c", "model": "builtin:tiny-llama", "adapter": {"target_modules": ["up_proj", "w9"]},
                             "task": {"type": "causal_lm", "dataset": str(tmp_path)},
                             "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}}})
    (problem,) = target_problems(causal)
    assert "['w9']" in problem.message
    hub = spec_from_dict({**base, "model": "org/some-model", "adapter": {"target_modules": ["nope"]}})
    assert target_problems(hub) == []  # hub ids are not looked up offline


def _causal(model: str, tmp_path: Path, **task: Any) -> Any:
    return spec_from_dict({"name": "c", "model": model, "task": {"type": "causal_lm", "dataset": str(tmp_path), **task},
                           "search": {"space": {"rank": {"choice": [4]}}, "objectives": {"val_answer_accuracy": "max"}}})


def test_a_task_the_model_has_no_head_for_is_caught_before_start(tmp_path, tiny_model_dir):
    from transformers import AutoConfig

    from raysearch.experiment.model_probe import fit_problems

    (problem,) = fit_problems(_causal(str(tiny_model_dir), tmp_path))  # a BERT classifier cannot generate
    assert (problem.path, problem.value) == ("task.type", "causal_lm") and "bert" in problem.message
    assert fit_problems(_causal("builtin:tiny-llama", tmp_path)) == []
    clip = tmp_path / "clip"
    AutoConfig.for_model("clip").save_pretrained(clip)  # no sequence-classification head in transformers
    spec = spec_from_dict({"name": "k", "model": str(clip), "task": {"dataset": "builtin:demo"},
                           "search": {"space": {"rank": {"choice": [4]}}}})
    (problem,) = fit_problems(spec)
    assert (problem.path, problem.value) == ("task.type", "classification")


def test_a_trained_head_with_another_label_count_is_caught(tmp_path):
    from tiny_bert import save_tiny_bert

    from raysearch.experiment.model_probe import fit_problems

    def spec(labels: int) -> Any:
        return spec_from_dict({"name": "l", "model": str(save_tiny_bert(tmp_path / f"bert{labels}", num_labels=labels)),
                               "task": {"dataset": "builtin:demo"}, "search": {"space": {"rank": {"choice": [4]}}}})

    (problem,) = fit_problems(spec(3))  # the demo data has 2 labels
    assert problem.path == "model" and "trained for 3 labels" in problem.message and "has 2" in problem.message
    assert fit_problems(spec(2)) == []


def test_a_chat_prompt_needs_a_chat_template_and_an_answer_an_eos(tmp_path):
    from raysearch.experiment.model_probe import fit_problems

    (problem,) = fit_problems(_causal("builtin:tiny-llama", tmp_path, prompt_template="chat"))
    assert (problem.path, problem.value) == ("task.prompt_template", "chat") and "no chat template" in problem.message
    folder = tmp_path / "decoder"  # a decoder's folder, as save_pretrained writes it
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert len(fit_problems(_causal(str(folder), tmp_path, prompt_template="chat"))) == 1
    assert fit_problems(_causal(str(folder), tmp_path, prompt_template="alpaca")) == []
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "chat_template": "{{ x }}"}))
    assert fit_problems(_causal(str(folder), tmp_path, prompt_template="chat")) == []
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))  # no EOS anywhere
    (problem,) = fit_problems(_causal(str(folder), tmp_path, prompt_template="chat"))
    assert problem.path == "model" and "no EOS token" in problem.message


def test_gora_rank_cap_above_the_targeted_layers_is_caught(tmp_path):
    from raysearch.experiment.model_probe import fit_problems

    def spec(r_max: int) -> Any:  # tiny-llama: hidden 32; k/v project to 32 too (no grouped heads)
        return spec_from_dict({"name": "g", "model": "builtin:tiny-llama", "adapter": {"gora_r_max": r_max},
                               "task": {"type": "causal_lm", "dataset": str(tmp_path)},
                               "search": {"space": {"variant": {"choice": ["lora", "gora"]}, "rank": {"choice": [4]}},
                                          "objectives": {"val_answer_accuracy": "max"}}})

    (problem,) = fit_problems(spec(64))
    assert (problem.path, problem.value) == ("adapter.gora_r_max", 64) and "Allowed: 1..32" in problem.message
    assert fit_problems(spec(32)) == []


def test_preflight_builds_the_meta_model_once(tmp_path, tiny_model_dir, monkeypatch):
    """target_problems and the GoRA check read one model built from its config (issue 30)."""
    from raysearch.experiment import model_probe

    built = []
    build = model_probe._build_meta_model
    monkeypatch.setattr(model_probe, "_build_meta_model", lambda *a: built.append(a) or build(*a))
    monkeypatch.setattr(model_probe, "_META_MODELS", {})
    spec = spec_from_dict({"name": "g", "model": str(tiny_model_dir),
                           "adapter": {"target_modules": ["query"], "gora_r_max": 8},
                           "search": {"space": {"variant": {"choice": ["lora", "gora"]}, "rank": {"choice": [4]}}}})
    assert model_probe.target_problems(spec) == [] and model_probe.fit_problems(spec) == []
    assert len(built) == 1


def test_fit_problems_stop_the_cli_with_exit_2(tmp_path, tiny_model_dir):
    data = experiment(model=str(tiny_model_dir), task={"type": "causal_lm", "dataset": str(tmp_path)},
                      search={"space": dict(SPACE), "objectives": {"val_answer_accuracy": "max"}})
    output = run_bad(tmp_path, data, field="task.type")
    assert "cannot generate" in output


# --- what the data files hold (issue 29): every row, before anything starts --------------

INSTRUCTIONS = [{"instruction": "Is water wet?", "output": "the correct answer is true"},
                {"instruction": "Is fire cold?", "output": "the correct answer is false"}]


def causal(dataset: Any, **task: Any) -> dict[str, Any]:
    return experiment(model="builtin:tiny-llama", task={"type": "causal_lm", "dataset": dataset, **task},
                      search={"space": dict(SPACE), "objectives": {"val_answer_accuracy": "max", "adapter_params": "min"}})


@pytest.mark.parametrize(("rows", "says"), [
    ([], "has a header and no rows"),
    ([["good movie", "1"], ["bad movie", "0", "extra"]], "row 3 has 3 fields, the header 2"),
    ([["good movie", "1"], ["bad movie", ""]], "row 3 has no value for 'label'"),
    ([["good movie", "1"], ["", "0"]], "row 3 has no value for 'sentence'"),
], ids=["header-only", "field-too-many", "empty-label", "empty-text"])
def test_a_table_with_a_bad_row_stops_before_start(tmp_path, rows, says):
    file = tmp_path / "reviews.csv"
    file.write_text("\n".join(",".join(row) for row in [["sentence", "label"], *rows]) + "\n")
    output = run_bad(tmp_path, experiment(task={"dataset": str(file), "text_fields": ["sentence"]}), field="task.dataset")
    assert says in " ".join(output.split()) and str(file) in output.replace("\n", "")


@pytest.mark.parametrize(("records", "says"), [
    ([], "holds no records"),
    ([*INSTRUCTIONS, {"instruction": "Is ice hot?"}], "record 3 has no `output`"),
    ([INSTRUCTIONS[0], {"instruction": " ", "output": "x"}], "record 2 has no `instruction`"),
    ([INSTRUCTIONS[0], {"question": "Sky?", "choices": ["blue", "green"]}], "record 2 has `choices` but no `answer`"),
], ids=["no-records", "no-output", "empty-instruction", "choices-without-answer"])
def test_instruction_records_the_task_cannot_train_on_stop_before_start(tmp_path, records, says):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(INSTRUCTIONS))
    bad.write_text(json.dumps(records))
    output = run_bad(tmp_path, causal([str(good), str(bad)]), field="task.dataset[1]")  # the second source named
    assert says in " ".join(output.split()) and "task.dataset[0]" not in output


def test_a_templated_table_with_a_label_its_names_lack_stops_before_start(tmp_path):
    file = tmp_path / "train.tsv"
    file.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    source = {"path": str(file), "instruction": "Review: {sentence}", "label_names": ["negative", "positive"]}
    output = run_bad(tmp_path, causal([source]), field="task.dataset[0].path")
    assert "row 3 has label '7', beyond label_names" in " ".join(output.split())
    file.write_text("sentence\tlabel\ngood\t1\n")  # a template column the table lacks
    source["instruction"] = "Review: {review}"
    output = run_bad(tmp_path, causal([source]), field="task.dataset[0].path")
    assert "row 2 has no value for 'review'" in " ".join(output.split())


def test_a_data_file_that_is_not_utf8_stops_before_start(tmp_path):
    file = tmp_path / "reviews.csv"
    file.write_bytes("sentence,label\ncaf\u00e9,1\n".encode("latin-1"))
    output = run_bad(tmp_path, experiment(task={"dataset": str(file)}), field="task.dataset")
    assert "is not UTF-8 text" in " ".join(output.split())


def test_the_shipped_data_passes_the_record_checks():
    """Every row of the shared SST-2 and commonsense files passes (and quickly: streamed)."""
    from trainables.contract import data_problems

    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"no data at {shared}")
    assert data_problems(str(shared / "sst2" / "train.tsv"), fields=["sentence", "label"]) == []
    for file in sorted((shared / "commonsense").glob("*.json")):
        assert data_problems(str(file), instructions=True) == [], file


# The splits the worker carves, labels of one kind, parquet rows (issue 29, part 1).


@pytest.mark.parametrize(("rows", "fraction", "says"), [
    (2, 0.5, "has 2 record(s): carving a test split (task.test_fraction 0.5) needs at least 3"),
    (3, 0.9, "leaves 0 record(s) after the test split"),
    (1, 0.0, "leaves 1 record(s) after the test split: carving a validation split needs at least 2"),
], ids=["too-few-for-a-test-split", "test-takes-everything", "too-few-for-validation"])
def test_a_file_too_small_for_its_splits_stops_before_start(tmp_path, rows, fraction, says):
    file = tmp_path / "reviews.csv"
    file.write_text("sentence,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(rows)))
    task = {"dataset": str(file), "text_fields": ["sentence"], "test_fraction": fraction}
    output = run_bad(tmp_path, experiment(task=task), field="task.dataset")
    assert says in " ".join(output.split())


@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("validation_file", [False, True])
def test_the_split_check_agrees_with_the_workers_split(tmp_path, rows, fraction, validation_file):
    """split_problem says no exactly when the worker's load_local cannot split the file, or leaves
    a split empty (an independent computation: the worker's own carving)."""
    from trainables.data import TestSplit, load_local
    from trainables.records import split_problem

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(rows)))
    if validation_file:
        (folder / "dev.csv").write_text("sentence,label\nv,1\n")
    try:
        splits = load_local(str(folder), 0, test=TestSplit(fraction, 0))
        works = all(len(split) > 0 for split in splits.values())
    except ValueError:
        works = False
    assert (split_problem(rows, fraction, validation_file) is None) == works


@pytest.mark.parametrize(("suffix", "content", "says"), [
    (".csv", "sentence,label\ngood,1\nbad,0\nmeh,positive\n", "row 4 has label 'positive' (text), while row 2's is '1'"),
    (".json", json.dumps([{"sentence": "good", "label": 1}, {"sentence": "bad", "label": "0"}]),
     "record 2 has label '0' (str), while record 1's is 1 (number)"),
], ids=["csv-word-beside-numbers", "json-string-beside-int"])
def test_labels_of_two_kinds_stop_before_start(tmp_path, suffix, content, says):
    file = tmp_path / f"reviews{suffix}"
    file.write_text(content)
    output = run_bad(tmp_path, experiment(task={"dataset": str(file), "text_fields": ["sentence"]}),
                     field="task.dataset")
    assert says in " ".join(output.split())


def test_a_validation_label_the_training_file_lacks_stops_before_start(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"r{i}\t{i % 2}\n" for i in range(6)))
    (folder / "dev.tsv").write_text("sentence\tlabel\nv\t1\nw\t2\n")
    output = run_bad(tmp_path, experiment(task={"dataset": str(folder), "text_fields": ["sentence"]}),
                     field="task.dataset")
    assert "labels ['2'] are not in the training file" in " ".join(output.split())


def test_a_parquet_file_is_read_to_its_last_row(tmp_path):
    import pandas as pd

    file = tmp_path / "reviews.parquet"
    pd.DataFrame({"sentence": ["good", "bad", "", "fine"], "label": [1, 0, 1, 1]}).to_parquet(file)
    output = run_bad(tmp_path, experiment(task={"dataset": str(file), "text_fields": ["sentence"]}),
                     field="task.dataset")
    assert "row 3 has no value for 'sentence'" in " ".join(output.split())
    pd.DataFrame({"sentence": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(file)
    output = run_bad(tmp_path, experiment(task={"dataset": str(file), "text_fields": ["sentence"]}),
                     field="task.dataset")
    assert "holds no rows" in " ".join(output.split())


# hf: datasets in the local cache (issue 29, part 1): read offline, checked like a file.


def cached_hub_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, csv: str, name: str = "tiny") -> str:
    """`hf:raysearch-tests/<name>` as the datasets cache holds a dataset once downloaded: built
    here from a CSV with the packaged csv builder, then filed under the hub id."""
    import shutil

    import datasets
    import datasets.config

    (tmp_path / "train.csv").write_text(csv)
    built = tmp_path / "built"
    datasets.load_dataset("csv", data_files={"train": str(tmp_path / "train.csv")}, cache_dir=str(built))
    (version,) = [p for p in built.glob("csv/*/*/*") if p.is_dir()]
    cache = tmp_path / "hub-cache"
    target = cache / f"raysearch-tests___{name}" / "default" / "0.0.0" / "cached"
    shutil.copytree(version, target)
    for arrow in target.glob("csv-*.arrow"):
        arrow.rename(target / arrow.name.replace("csv-", f"{name}-", 1))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return f"hf:raysearch-tests/{name}"


def test_a_cached_hub_dataset_with_a_bad_row_stops_before_start(tmp_path, monkeypatch):
    source = cached_hub_dataset(tmp_path, monkeypatch, "sentence,label\ngood,1\n,0\nfine,1\nbad,0\n")
    output = run_bad(tmp_path, experiment(task={"dataset": source, "text_fields": ["sentence"]}), field="task.dataset")
    text = " ".join(output.split())
    assert "(cached, split train)" in text and "row 2 has no value for 'sentence'" in text


def test_a_cached_hub_dataset_that_is_fine_passes_and_an_uncached_one_is_not_looked_up(tmp_path, monkeypatch):
    from raysearch.experiment.preflight import record_problems
    from trainables import entry

    source = cached_hub_dataset(tmp_path, monkeypatch, "sentence,label\ngood,1\nbad,0\nfine,1\nmeh,0\n")
    spec = spec_from_dict(experiment(task={"dataset": source, "text_fields": ["sentence"]}))
    assert record_problems(spec) == []
    assert entry.cached_hub_splits("hf:raysearch-tests/not-cached") is None  # no folder: no load, no network
    spec = spec_from_dict(experiment(task={"dataset": "hf:raysearch-tests/not-cached", "text_fields": ["sentence"]}))
    assert record_problems(spec) == []
