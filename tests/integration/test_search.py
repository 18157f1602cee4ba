"""A real search end to end on local Ray: YAML -> Tune/Optuna/MOASHA -> Train -> MLflow."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from raysearch.cli import app
from raysearch.records.tables import number
from raysearch.records.pareto import pareto_mask
from raysearch.experiment.spec import load_spec
from tiny_search import write_experiment

pytestmark = pytest.mark.integration


def write_space(tmp_path: Path, model_dir: Path, **search) -> Path:
    return write_experiment(tmp_path / "itest.yaml", model_dir, name="itest", eval_every_steps=2, search={
        "sampler": "random",
        "seed": 0,  # the same draw every run: three adapter sizes, so fANOVA has something to split
        "num_trials": 4,
        "max_concurrent": 2,
        "early_stopping": {"grace_period": 1, "reduction_factor": 2},  # MOASHA: the default for two objectives
        "space": {
            "variant": {"choice": ["lora", "dora"]},
            "rank": {"choice": [2, 8]},
            "scaling": {"choice": ["lora", "rora"]},
            "lr": {"loguniform": [1e-3, 1e-2]},
        },
        **search,
    }, resources={"workers_per_trial": 1, "cpus_per_worker": 1})


def test_search_end_to_end_records_every_trial_in_mlflow(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root ./mlruns is relative to the working dir
    space = write_space(tmp_path, tiny_model_dir)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(tmp_path / "results"),
                                      "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("itest")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raysearch.role") == "search"]
    children = [r for r in runs if "raysearch.trial_id" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert len({r.data.tags["raysearch.trial_id"] for r in children}) == 4
    assert all(r.info.status != "RUNNING" for r in runs)
    for run in children:
        assert {"variant", "rank", "scaling", "lr"} <= set(run.data.params)
        assert run.data.tags["raysearch.status"] in {"completed", "early_stopped"}
        assert {"val_loss", "val_accuracy", "adapter_params", "train_loss"} <= set(run.data.metrics)
        assert run.data.tags["raysearch.pareto"] in {"true", "false"}
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == sorted(m.step for m in history) and history[0].step == 2
    assert any(r.data.tags["raysearch.pareto"] == "true" for r in children)
    # MOASHA judged the trials at its rungs; the front is the non-dominated set of the trials
    # that ran to the end, whatever the stopped ones reported
    rungs = json.loads((tmp_path / "results" / "itest" / "moasha.json").read_text())["brackets"][0]
    judged = {trial for recorded in rungs.values() for trial in recorded}
    assert {r.data.tags["raysearch.trial_id"] for r in children} <= judged
    ran_out = [r for r in children if r.data.tags["raysearch.status"] == "completed"]
    on_front = pareto_mask(np.array([[r.data.metrics["val_accuracy"], r.data.metrics["adapter_params"]]
                                     for r in ran_out]), ["max", "min"])
    assert {r.data.tags["raysearch.trial_id"] for r in children if r.data.tags["raysearch.pareto"] == "true"} \
        == {r.data.tags["raysearch.trial_id"] for r, front in zip(ran_out, on_front) if front}
    completed = [r for r in children if r.data.tags["raysearch.status"] == "completed"]
    assert completed, "no trial ran to the end"
    for run in completed:
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "adapter")]
        assert "adapter/adapter_config.json" in artifacts
        ranks = [a.path for a in client.list_artifacts(run.info.run_id, "ranks")]
        assert {"ranks/ranks.json", "ranks/ranks.png"} <= set(ranks)
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.csv", "pareto.png", "pareto.html"} <= parent_artifacts

    # The Optuna study was told about every trial, with two objective values each.
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "itest" / "optuna.journal")))
    study = optuna.load_study(study_name="itest", storage=journal)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 4 and all(len(t.values) == 2 for t in finished)

    board = CliRunner().invoke(app, ["leaderboard", "itest", "--mlflow-uri", uri, "--pareto"])
    assert board.exit_code == 0, board.output
    assert "Pareto front" in board.output

    # report: one page from this search's MLflow runs and Optuna journal, logged on its parent run
    reported = CliRunner().invoke(app, ["report", "itest", "--storage", str(tmp_path / "results"), "--mlflow-uri", uri])
    assert reported.exit_code == 0, reported.output
    page = (tmp_path / "results" / "itest" / "report.html").read_text()
    assert page.count('class="plotly-graph-div"') >= 4 and "fANOVA" in page  # front, curves, importance
    assert all(r.data.tags["raysearch.trial_id"] in page for r in children)  # each trial in the leaderboard
    assert "report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {r.data.params["scaling_rule"] for r in children} <= {"alpha/r", "alpha/sqrt(r)"}
    assert all(r.data.params["scaling_rule"] == ("alpha/sqrt(r)" if r.data.params["scaling"] == "rora" else "alpha/r")
               for r in children)

    # export: the best trial's adapter loads with plain peft; its experiment file retrains it
    out = tmp_path / "export"
    exported = CliRunner().invoke(app, ["export", "itest", str(out), "--best", "--mlflow-uri", uri])
    assert exported.exit_code == 0, exported.output
    best = min(completed, key=lambda r: (-r.data.metrics["val_accuracy"], r.data.metrics["adapter_params"]))
    retrain = load_spec(out / "experiment.yaml")
    sampled = {name: dim.choice[0] for name, dim in retrain.search.space.items()}
    assert sampled == {k: number(v) for k, v in best.data.params.items() if k in retrain.search.space}
    assert set(sampled) == {"variant", "rank", "scaling", "lr"}
    assert retrain.search.sampler == "grid" and retrain.search.num_trials == 1
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, out / "adapter")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    again = CliRunner().invoke(app, ["export", "itest", str(out), "--best", "--mlflow-uri", uri])
    assert again.exit_code == 2 and "not empty" in again.output


def test_a_search_whose_trials_all_fail_alike_stops_early_and_exits_3(tmp_path, tiny_model_dir, monkeypatch):
    """Input that fails every trial the same way and that preflight cannot see (a hub dataset,
    which it does not look up offline; every row of a local file is checked before start, see
    tests/unit/test_preflight.py): fail-fast stops the search after search.fail_fast trials,
    the summary gives the cause once, and the exit code is 3."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the trials may not reach a hub
    space = write_experiment(tmp_path / "bad.yaml", tiny_model_dir, name="bad-targets", search={
        "sampler": "random", "num_trials": 8, "max_concurrent": 1, "fail_fast": 2,
        "early_stopping": {"scheduler": "none"}, "space": {"rank": {"choice": [2, 4]}},
    }, resources={"workers_per_trial": 1, "cpus_per_worker": 1})
    text = space.read_text().replace("builtin:demo", "hf:raysearch-tests/no-such-dataset")
    space.write_text(text)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(tmp_path / "results"),
                                      "--mlflow-uri", uri])
    output = " ".join(result.output.split())
    assert result.exit_code == 3, result.output
    assert "2 x trainables.trial.TrialFailed: " in output and "no-such-dataset" in output, output
    assert "(after no retries; train.max_failures)" in output
    traceback = tmp_path / "results" / "bad-targets" / "tune"  # the traceback's file, named in the summary
    assert f"(traceback: {traceback}/run_trial_" in output and "/error.txt and the trial's MLflow run)" in output
    assert "search.fail_fast" in output
    assert output.count("Traceback (most recent call last)") == 0  # one line per failed trial instead
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("bad-targets").experiment_id])
    errored = [r for r in runs if r.data.tags.get("raysearch.status") == "error"]
    assert len(errored) == 2 and all(r.info.status != "RUNNING" for r in runs)
