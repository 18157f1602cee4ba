"""A comparison end to end (search.compare, issue 20): every cell trains the same design of
points, MOASHA judges each trial only against its own cell, and `leaderboard --by` shows
each cell's best."""
from __future__ import annotations

import json

import mlflow
import pytest
from typer.testing import CliRunner

from raysearch.cli import app
from tiny_search import write_experiment

pytestmark = pytest.mark.integration


def test_every_cell_gets_its_trials_and_no_trial_is_judged_against_another_cell(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_experiment(tmp_path / "cmp.yaml", tiny_model_dir, name="cmp", eval_every_steps=2, train_examples=48,
                             eval_examples=24, search={
        "max_concurrent": 2, "compare": ["scaling"], "trials_per_cell": 2,
        "early_stopping": {"grace_period": 1, "reduction_factor": 2},  # MOASHA, per cell
        "space": {"scaling": {"choice": ["lora", "rora"]}, "lr": {"loguniform": [1e-3, 1e-2]}},
    }, resources={"workers_per_trial": 1, "cpus_per_worker": 1})
    uri, results = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "results"
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(results), "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("cmp")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "raysearch.trial_id" in r.data.tags]
    cell_of = {r.data.tags["raysearch.trial_id"]: r.data.params["scaling"] for r in children}
    assert sorted(cell_of.values()) == ["lora", "lora", "rora", "rora"]  # 2 cells x 2 trials
    lrs = {cell: sorted(r.data.params["lr"] for r in children if r.data.params["scaling"] == cell)
           for cell in ("lora", "rora")}
    assert lrs["lora"] == lrs["rora"] and len(set(lrs["lora"])) == 2  # the same design in both cells
    states = sorted((results / "cmp").glob("moasha-*.json"))
    assert len(states) == 2  # one MOASHA per cell, each with its own rungs
    for state in states:
        judged = {t for recorded in json.loads(state.read_text())["rungs"].values() for t in recorded}
        assert judged and len({cell_of[t] for t in judged}) == 1, (state.name, judged)

    parent = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("raysearch.role") == "search")
    assert {"comparison.png", "comparison.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    table = CliRunner().invoke(app, ["leaderboard", "cmp", "--by", "scaling", "--mlflow-uri", uri])
    assert table.exit_code == 0, table.output
    assert "best of each cell" in table.output and "lora" in table.output and "rora" in table.output
    bad = CliRunner().invoke(app, ["leaderboard", "cmp", "--by", "nope", "--mlflow-uri", uri])
    assert bad.exit_code == 2 and "no trial of search 'cmp' has ['nope']" in bad.output
