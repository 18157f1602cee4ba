"""`raysearch export`: one trial's adapter plus an experiment file that retrains it.

The retraining file is the search's own experiment file (logged on the parent
MLflow run) with the search space narrowed to the trial's sampled values: every
dimension becomes a one-value `choice`, the sampler `grid` (one point) and early
stopping off, so `raysearch run --space` on it trains exactly that configuration.

A trial trained on a pruned base (`pruning:`, trainables/pruning.py) is exported with that
base named: the adapter's `base_model_name_or_path` is the pruned folder and `pruning.json`
beside it holds the folder, the recipe and its hash (`name_pruned_base`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raysearch.experiment.redaction import is_redacted
from raysearch.experiment.spec import Spec, spec_from_dict
from raysearch.records.mlflow_reader import TAG_PRUNING_HASH


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


def export_trial(mlflow_uri: str, name: str, trial: str | None, out_dir: Path) -> tuple[dict, Path, Path, Path | None]:
    """Write `out_dir/adapter/` and `out_dir/experiment.yaml` (and, for a trial on a pruned
    base, `out_dir/pruning.json`); returns (row, adapter, yaml path, pruned base folder or None)."""
    from raysearch.records.mlflow_reader import download_trial, find_trial, reader

    row = find_trial(mlflow_uri, name, trial)
    adapter, text = download_trial(mlflow_uri, row, out_dir)
    experiment = retrain_experiment(yaml.safe_load(text), row["params"], row["trial_id"])
    spec = spec_from_dict(experiment)  # the file we hand out must be valid
    path = out_dir / "experiment.yaml"
    header = (f"# Retrains trial {row['trial_id']} of search '{name}' "
              f"(MLflow run {row['run_id']}): raysearch run --space {path.name}\n")
    path.write_text(header + yaml.safe_dump(experiment, sort_keys=False))
    base = None
    if spec.pruning is not None:
        tags = reader(mlflow_uri).get_run(row["run_id"]).data.tags
        base = name_pruned_base(spec, adapter, out_dir, tags.get(TAG_PRUNING_HASH))
    return row, adapter, path, base


PRUNING_EXPORT_FILE = "pruning.json"


def name_pruned_base(spec: Spec, adapter: Path, out_dir: Path, trained_hash: str | None) -> Path:
    """A trial trained on a pruned base: its adapter names that base. The folder is the one the
    experiment's recipe builds on this machine (built now if this machine has none cached; the
    build is deterministic for a recipe, the same files and the same CPU or GPU kind); refused
    when its recipe hash differs from the one the trial's run recorded (the base model or the
    calibration file changed since). `adapter_config.json`'s `base_model_name_or_path` becomes
    that folder, and `out_dir/pruning.json` holds the folder, the hash and the recipe with what
    the build measured (parameters before and after)."""
    import json

    from raysearch.experiment.pruning import pruning_config
    from trainables.entry import pruned_base, pruning_record

    config = pruning_config(spec)
    record = pruning_record(config)
    if trained_hash and record["hash"] != trained_hash:
        data = (record["recipe"].get("calibration") or {}).get("data")
        raise ValueError(f"the trial trained on the pruned base with recipe hash {trained_hash[:16]}; this "
                         f"experiment's recipe now hashes to {record['hash'][:16]}: the base model "
                         f"{spec.model!r}{f' or the calibration file {data!r}' if data else ''} changed since. "
                         "Restore them to export this trial's base")
    folder = pruned_base(config)
    config_file = adapter / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text())
    adapter_config["base_model_name_or_path"] = str(folder)
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    built = folder / PRUNING_EXPORT_FILE
    measured = json.loads(built.read_text()) if built.is_file() else {}
    (out_dir / PRUNING_EXPORT_FILE).write_text(json.dumps(
        {"base_folder": str(folder), "hash": record["hash"], "recipe": record["recipe"],
         **{k: measured[k] for k in ("parameters", "shape_before", "shape_after", "method") if k in measured},
         "load": f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(folder)!r}), {str(adapter)!r})"},
        indent=1))
    return folder
