"""`raysearch report`: the page's parts from a search record and an Optuna study built here
(the whole command on a real search is in tests/integration/test_search.py)."""
from __future__ import annotations

import json
import re

import optuna
import pytest

from raysearch.records.report_page import build_report, curves_figure, importances, pareto_figure, rank_figures, run_url

OBJECTIVES = {"val_accuracy": "max", "adapter_params": "min"}


def row(trial_id: str, status: str, accuracy: float | None, params: int, pareto: bool, **config) -> dict:
    metrics = {"adapter_params": params, **({"val_accuracy": accuracy} if accuracy is not None else {})}
    return {"trial_id": trial_id, "run_id": f"run-{trial_id}", "run_name": trial_id, "status": status,
            "pareto": pareto, "val_accuracy": accuracy, "adapter_params": params, "metrics": metrics,
            "params": {"variant": "lora", "rank": "8", **{k: str(v) for k, v in config.items()}}}


def record() -> dict:
    rows = [row("a", "completed", 0.9, 2000, True, lr=0.01), row("b", "completed", 0.8, 1000, True),
            row("c", "early_stopped", 0.6, 4000, False), row("d", "completed", 0.7, 3000, False, variant="adalora"),
            row("e", "error", None, 1000, False)]
    curves = {r["trial_id"]: {"val_loss": [(4, 0.7), (8, 0.6)], "val_accuracy": [(4, 0.5), (8, r["val_accuracy"] or 0)]}
              for r in rows if r["status"] != "error"}
    curves["c"] = {"val_loss": [(4, 0.9)], "val_accuracy": [(4, 0.6)]}  # cut by the scheduler after one evaluation
    ranks = {"d": {"encoder.layer.0.attention.query": 4, "encoder.layer.0.attention.value": 12,
                   "encoder.layer.1.attention.query": 0, "encoder.layer.1.attention.value": 8},
             "a": {"encoder.layer.0.attention.query": 8, "encoder.layer.0.attention.value": 8}}  # LoRA: uniform
    return {"experiment_id": "7", "parent_run_id": "parent", "objectives": dict(OBJECTIVES), "rows": rows,
            "curves": curves, "ranks": ranks}


def study_where_rank_matters() -> optuna.Study:
    """val_accuracy rises with lr alone; adapter_params is rank x 100."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    rng = optuna.samplers.RandomSampler(seed=0)
    study.sampler = rng
    for _ in range(24):
        trial = study.ask()
        rank = trial.suggest_int("rank", 1, 64, log=True)
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, [lr * 100, rank * 100])
    return study


def test_the_front_is_drawn_apart_from_the_other_trials():
    figure = pareto_figure(record(), "http://127.0.0.1:5000")
    traces = {trace.name: trace for trace in figure.data if trace.name}
    front = traces["Pareto front (finished)"]
    assert sorted(front.x) == [1000, 2000] and sorted(front.y) == [0.8, 0.9]
    assert list(traces["stopped early (partial training)"].x) == [4000]
    assert list(traces["finished, dominated"].x) == [3000]
    texts = [text for trace in figure.data if trace.text for text in trace.text]
    assert not any(text.startswith("trial e ") for text in texts)  # an errored trial has no objective: no point
    for text, url in zip(front.text, front.customdata):  # a click opens the point's own MLflow run
        assert url == run_url("http://127.0.0.1:5000", "7", "run-" + text.split()[1])


def test_a_stopped_trial_is_drawn_apart_and_never_on_the_front():
    """Issue 18: a trial stopped early by the scheduler that beats every completed one (its partial-training
    values) is drawn with its own marker; the front and its line are the completed trials', decided by status
    even where a row's pareto flag says otherwise."""
    data = record()
    data["rows"].append(row("s", "early_stopped", 0.95, 500, True))  # flagged as the old rule did
    figure = pareto_figure(data, "http://127.0.0.1:5000")
    traces = {trace.name: trace for trace in figure.data if trace.name}
    stopped = traces["stopped early (partial training)"]
    assert sorted(stopped.x) == [500, 4000] and stopped.marker.symbol == "x"
    assert sorted(traces["Pareto front (finished)"].x) == [1000, 2000]
    line = next(trace for trace in figure.data if trace.mode == "lines")
    assert list(line.x) == [1000, 2000]


def test_every_trial_has_curves_coloured_by_how_it_ended():
    figure = curves_figure(record())
    loss = [t for t in figure.data if t.xaxis == "x"]
    assert len(loss) == 4  # a, b, c, d; e never reported
    stopped = next(t for t in loss if "trial c" in t.text)
    assert list(stopped.x) == [4] and stopped.line.color != next(t for t in loss if "trial a" in t.text).line.color


def test_importance_finds_the_parameter_that_drives_the_objective():
    found = importances(study_where_rank_matters(), OBJECTIVES)
    assert set(found) == set(OBJECTIVES)
    assert found["val_accuracy"]["lr"] > 0.8 and found["adapter_params"]["rank"] > 0.8  # each its own objective


def test_too_few_trials_for_importance_say_so():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(params={"rank": 4}, distributions={
        "rank": optuna.distributions.IntDistribution(1, 64)}, values=[0.5, 400]))
    assert importances(study, OBJECTIVES) == {}
    assert "Needs at least 3 finished trials" in build_report("s", record(), study, "http://x")


def test_rank_heatmap_for_the_adaptive_variants_best_trial():
    (figure,) = rank_figures(record())  # not LoRA's: the same rank everywhere says nothing
    heat = figure.data[0]
    assert list(heat.x) == ["query", "value"] and list(heat.y) == ["layer 0", "layer 1"]
    assert heat.z.tolist() == [[4, 12], [0, 8]] and "adalora" in figure.layout.title.text


@pytest.mark.parametrize("plots", [("Pareto front", "Validation curves", "fANOVA", "live rank per module")])
def test_the_page_is_self_contained_and_holds_every_part(plots):
    page = build_report("demo", record(), study_where_rank_matters(), "http://127.0.0.1:5000")
    for text in plots:
        assert text in page
    assert page.count("<script src=") == 0  # plotly.js inlined: no network needed
    assert len(re.findall(r'class="plotly-graph-div"', page)) >= 6  # front, curves, 2 x (bars, slice), heatmap
    assert 'href="http://127.0.0.1:5000/#/experiments/7/runs/run-a?workflowType=machine_learning"' in page  # linked
    assert json.dumps("plotly_click")[1:-1] in page


def test_dashboard_serves_the_search_journal_on_loopback(tmp_path, monkeypatch):
    import optuna_dashboard
    from typer.testing import CliRunner

    from raysearch.cli import app

    missing = CliRunner().invoke(app, ["dashboard", "nothing", "--storage", str(tmp_path)])
    assert missing.exit_code == 2 and "no Optuna journal" in missing.output
    journal = tmp_path / "s" / "optuna.journal"
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    served = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: served.update(storage=storage, **kw))
    done = CliRunner().invoke(app, ["dashboard", "s", "--storage", str(tmp_path), "--port", "8123"])
    assert done.exit_code == 0, done.output
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert [s.study_name for s in optuna.get_all_study_summaries(served["storage"])] == ["s"]


def test_an_objective_no_trial_changed_says_so_instead_of_failing():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for rank in (2, 4, 8, 16):  # the tiny model's accuracy stays at chance whatever the rank
        study.add_trial(optuna.trial.create_trial(params={"rank": rank}, values=[0.5, rank * 100], distributions={
            "rank": optuna.distributions.IntDistribution(1, 64)}))
    found = importances(study, OBJECTIVES)
    assert found["val_accuracy"] == {} and found["adapter_params"]["rank"] == pytest.approx(1.0)
    assert "Every finished trial has the same val_accuracy" in build_report("s", record(), study, "http://x")
