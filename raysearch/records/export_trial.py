"""`raysearch export`: one trial's adapter plus an experiment file that retrains it.

The retraining file is the search's own experiment file (logged on the parent
MLflow run) with the search space narrowed to the trial's sampled values: every
dimension becomes a one-value `choice`, the sampler `grid` (one point) and early
stopping off, so `raysearch run --space` on it trains exactly that configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raysearch.experiment.redaction import is_redacted
from raysearch.experiment.spec import Spec, spec_from_dict


def experiment_text(spec: Spec) -> str:
    """The validated experiment as YAML (what the parent run records)."""
    # exclude_unset: what the file (and CLI) set, validated; defaults come back on load.
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_unset=True), sort_keys=False)


def retrain_experiment(experiment: dict[str, Any], params: dict[str, str], trial_id: str) -> dict[str, Any]:
    """The search's experiment with its space fixed at one trial's sampled values.

    MLflow keeps params as strings; YAML parsing restores numbers and booleans. Only the
    space's own dimensions are taken (a run also records what its variant implied, e.g.
    `scaling_rule`).
    """
    data = dict(experiment)
    search = dict(data.get("search", {}))
    searched = set(search.get("space", {}))
    search["space"] = {name: {"choice": [yaml.safe_load(value)]} for name, value in sorted(params.items())
                       if name in searched}
    search["sampler"] = "grid"
    search["num_trials"] = 1  # the grid has one point
    search["early_stopping"] = {**search.get("early_stopping", {}), "scheduler": "none"}
    data["search"] = search
    data["name"] = f"{experiment.get('name', 'search')}-{trial_id[:12]}"
    tracking = dict(data.get("tracking", {}))
    if is_redacted(tracking.get("mlflow_uri", "")):  # redacted credentials: let the user supply them
        tracking.pop("mlflow_uri")
    data["tracking"] = tracking
    return data


def export_trial(mlflow_uri: str, name: str, trial: str | None, out_dir: Path) -> tuple[dict, Path, Path]:
    """Write `out_dir/adapter/` and `out_dir/experiment.yaml`; returns (row, adapter, yaml path)."""
    from raysearch.records.mlflow_reader import download_trial, find_trial

    row = find_trial(mlflow_uri, name, trial)
    adapter, text = download_trial(mlflow_uri, row, out_dir)
    experiment = retrain_experiment(yaml.safe_load(text), row["params"], row["trial_id"])
    spec_from_dict(experiment)  # the file we hand out must be valid
    path = out_dir / "experiment.yaml"
    header = (f"# Retrains trial {row['trial_id']} of search '{name}' "
              f"(MLflow run {row['run_id']}): raysearch run --space {path.name}\n")
    path.write_text(header + yaml.safe_dump(experiment, sort_keys=False))
    return row, adapter, path
