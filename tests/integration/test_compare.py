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
    }, resources={"workers_per_trial": 1, "cpus_per_worker": 1},
        task={"dataset": "builtin:demo", "max_length": 24, "max_train_examples": 48, "max_eval_examples": 24,
              "test_fraction": 0.2, "max_test_examples": 32})
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
        judged = {t for recorded in json.loads(state.read_text())["brackets"][0].values() for t in recorded}
        assert judged and len({cell_of[t] for t in judged}) == 1, (state.name, judged)

    parent = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("raysearch.role") == "search")
    assert {"comparison.png", "comparison.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    table = CliRunner().invoke(app, ["leaderboard", "cmp", "--by", "scaling", "--mlflow-uri", uri])
    assert table.exit_code == 0, table.output
    assert "best of each cell" in table.output and "lora" in table.output and "rora" in table.output
    bad = CliRunner().invoke(app, ["leaderboard", "cmp", "--by", "nope", "--mlflow-uri", uri])
    assert bad.exit_code == 2 and "no trial of search 'cmp' has ['nope']" in bad.output

    # benchmarks/cell_study.py's scoring on this search: each cell's best scored on the test split
    # (recorded on its trial's run) and rora compared with lora on the same records.
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "cell_study.py"
    spec = importlib.util.spec_from_file_location("cell_study", path)
    study = importlib.util.module_from_spec(spec)
    sys.modules["cell_study"] = study
    spec.loader.exec_module(study)
    cells, data = study.score_cells(uri, "cmp", ["scaling"], None, tmp_path / "adapters")
    assert [c["scaling"] for c in cells] == ["lora", "rora"] and data.startswith("test split")
    assert all(len(c["test"]) == len(c["trial_ids"]) == 1 and len(c["correct"][0]) == 32 for c in cells)
    rows = study.print_table(cells, ["scaling"], {"scaling": "lora"})
    assert rows[0]["diff"] is None and rows[1]["diff"][0] == pytest.approx(rows[1]["test"] - rows[0]["test"])
    scored = client.get_run(next(r.info.run_id for r in children
                                 if r.data.tags["raysearch.trial_id"] == cells[1]["trial_ids"][0]))
    assert scored.data.metrics["test_accuracy"] == pytest.approx(cells[1]["test"][0])
