"""`raysearch export`'s retraining file: the search's experiment fixed at one trial."""
from __future__ import annotations

from pathlib import Path

import yaml

from raysearch.records.export_trial import experiment_text, retrain_experiment
from raysearch.experiment.spec import load_spec, spec_from_dict

SPACES = Path(__file__).parents[2] / "search_spaces"


def test_experiment_text_round_trips_to_the_same_spec():
    spec = load_spec(SPACES / "demo.yaml")
    assert spec_from_dict(yaml.safe_load(experiment_text(spec))) == spec


def test_retrain_experiment_fixes_every_sampled_value():
    experiment = yaml.safe_load(experiment_text(load_spec(SPACES / "demo.yaml")))
    params = {"variant": "dora", "rank": "8", "alpha": "32", "scaling": "0.75", "lr": "0.0021"}
    retrain = spec_from_dict(retrain_experiment(experiment, params, "abcdef123456789"))
    assert {name: dim.choice for name, dim in retrain.search.space.items()} == {
        "variant": ["dora"], "rank": [8], "alpha": [32], "scaling": [0.75], "lr": [0.0021]}
    assert retrain.search.sampler == "grid" and retrain.search.num_trials == 1
    assert retrain.search.early_stopping.scheduler == "none"
    assert retrain.name == "demo-abcdef123456"
    # everything the search did not sample is the search's own setting
    assert retrain.train == load_spec(SPACES / "demo.yaml").train
    assert retrain.task == load_spec(SPACES / "demo.yaml").task


def test_redacted_mlflow_uri_is_left_for_the_user_to_supply():
    experiment = yaml.safe_load(experiment_text(load_spec(SPACES / "demo.yaml")))
    experiment.setdefault("tracking", {})["mlflow_uri"] = "https://***@mlflow.example.com"
    retrain = retrain_experiment(experiment, {"rank": "4"}, "t1")
    assert "mlflow_uri" not in retrain["tracking"]


def test_experiment_text_keeps_explicit_nulls():
    spec = load_spec(SPACES / "commonsense_cpu.yaml", ["task.max_generation_examples=null"])
    again = spec_from_dict(yaml.safe_load(experiment_text(spec)))
    assert again == spec and again.task.max_generation_examples is None
