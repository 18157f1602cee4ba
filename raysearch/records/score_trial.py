"""`raysearch evaluate`: a trial's adapter, an exported adapter folder or the bare model,
scored on data the search never saw (trainables/evaluation.py does the scoring).

What is scored is recorded where it belongs: a trial's `test_<metric>` (and
`test_<metric>/<source>` per source) on the trial's MLflow run, the bare model's as
`base_test_<metric>` on the search's parent run; the tag `raysearch.test` names the records.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raysearch.experiment.spec import Spec, spec_from_dict


@dataclass
class Target:
    """What to score: the experiment (as the workers see it), the adapter (None: the bare
    model), and the MLflow run and metric prefix the scores go to (None: not recorded)."""

    label: str
    experiment: dict[str, Any]
    adapter: Path | None
    run_id: str | None
    prefix: str


def worker_experiment(spec: Spec) -> dict[str, Any]:
    """The validated experiment with every default filled in, as trials receive it."""
    return spec.model_dump(mode="json")


def search_target(mlflow_uri: str, name: str, trial: str | None, base: bool, workdir: Path) -> Target:
    """The best trial (`trial` None), a named trial, or the bare model (`base`) of search `name`."""
    from raysearch.records.mlflow_reader import download_trial, find_trial, latest_search

    if base:
        parent_id, text = latest_search(mlflow_uri, name)
        return Target(f"{name}: base model, no adapter", worker_experiment(spec_from_dict(yaml.safe_load(text))),
                      None, parent_id, "base_test_")
    row = find_trial(mlflow_uri, name, trial)
    adapter, text = download_trial(mlflow_uri, row, workdir)
    label = f"{name}: trial {row['trial_id']} ({'best by validation' if trial is None else 'chosen'})"
    return Target(label, worker_experiment(spec_from_dict(yaml.safe_load(text))), adapter, row["run_id"], "test_")


def folder_target(adapter: Path | None, space: Path) -> Target:
    """An exported adapter folder (or None: the bare model) with the experiment file it was trained by."""
    from raysearch.experiment.spec import load_spec

    spec = load_spec(space, [])
    return Target(f"{adapter if adapter is not None else spec.model + ' (no adapter)'}", worker_experiment(spec),
                  adapter, None, "test_")


def run_evaluation(target: Target, *, data: Path | None, scoring: str | None, max_examples: int | None,
                   mlflow_uri: str | None) -> Any:
    """Score the target; record the scores on its MLflow run when it has one."""
    quiet_libraries()
    from trainables.entry import score as evaluate

    result = evaluate(target.experiment, target.adapter, data=data, scoring=scoring, max_examples=max_examples)
    if target.run_id is not None and mlflow_uri is not None:
        from raysearch.records.mlflow_reader import log_test_scores

        name = f"{target.prefix}{result.metric}"
        metrics = {name: result.overall.value}
        metrics.update({f"{name}/{s.source}": s.value for s in result.per_source})
        for reading in ("acc", "acc_norm"):  # the option-text readings, whatever task.scoring is
            for score in [*result.per_source, result.overall]:
                if getattr(score, reading, None) is not None:
                    where = "" if score is result.overall else f"/{score.source}"
                    metrics[f"{target.prefix}option_{reading}{where}"] = getattr(score, reading)
        log_test_scores(mlflow_uri, target.run_id, metrics, result.data)
    return result


def quiet_libraries() -> None:
    """The scores are what a user reads: no per-split progress bars, weight-loading bars or
    deprecation notices from datasets and transformers."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def evaluate_command(name: str | None, *, best: bool, trial: str | None, base: bool, adapter: Path | None,
                     space: Path | None, data: Path | None, scoring: str | None, max_examples: int | None,
                     mlflow_uri: str) -> tuple[Target, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if name is not None:
            target = search_target(mlflow_uri, name, trial, base, Path(tmp))
            return target, run_evaluation(target, data=data, scoring=scoring, max_examples=max_examples,
                                          mlflow_uri=mlflow_uri)
        target = folder_target(adapter, space)
        return target, run_evaluation(target, data=data, scoring=scoring, max_examples=max_examples, mlflow_uri=None)
