"""The search's records in MLflow, read back: the tags raysearch writes on its runs, the
leaderboard rows (with the Pareto flag over the trials that ran to the end), and the look-ups
behind `leaderboard`, `export`, `evaluate` and `report`. The live writer is `mlflow_writer.py`."""
from __future__ import annotations

import json
import math
from collections import defaultdict
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from raysearch.records.pareto import pareto_table
from raysearch.records.ranks import parse as parse_ranks
from raysearch.experiment.redaction import redact
from trainables.contract import COMPLETED, FINISHED, SEED_DIMENSION

TAG_ROLE = "raysearch.role"
TAG_TRIAL_ID = "raysearch.trial_id"
TAG_STATUS = "raysearch.status"
TAG_PARETO = "raysearch.pareto"
TAG_ERROR = "raysearch.error"
TAG_OBJECTIVES = "raysearch.objectives"
TAG_PARENT = "mlflow.parentRunId"
TAG_SEARCH_ID = "raysearch.search_id"  # on the parent run: how a resumed search finds it again
TAG_REASON = "raysearch.reason"  # why a run was closed by raysearch rather than by its trial
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "finetuning"  # MLflow 3's UI reads it
TAG_TEST = "raysearch.test"  # which records a run's test_* metrics were scored on
TAG_PRUNED_BASE = "raysearch.pruned_base"  # a trial on a pruned base: the folder it was cached in (trainables/pruning.py)
TAG_PRUNING_HASH = "raysearch.pruning_hash"  # ... and the SHA-256 of its recipe, which names that folder

FINISHED_STATUSES = FINISHED  # ended without failing: listed in pareto.csv and the plots
# Only trials that ran to the end make the Pareto front: a stopped trial's numbers are its last evaluation before
# the scheduler cut it (a partial-training estimate), so it may neither join the front nor push a finished trial off.
FRONT_STATUSES = (COMPLETED,)
EXPERIMENT_ARTIFACT = "experiment.yaml"  # on the parent run: the validated experiment file
DEFAULT_OBJECTIVES = {"val_accuracy": "max", "adapter_params": "min"}
MAX_TAG_CHARS = 5000


def local_store(mlflow_uri: str) -> Path | None:
    """The file or folder of an MLflow store on this machine (`sqlite:///`, `file:`, a plain
    path); None for a server or a database elsewhere."""
    if mlflow_uri.startswith("sqlite:///"):
        return Path(mlflow_uri.removeprefix("sqlite:///"))
    if mlflow_uri.startswith("file:"):
        return Path(mlflow_uri.removeprefix("file:").removeprefix("//"))
    return Path(mlflow_uri) if "://" not in mlflow_uri else None


def reader(mlflow_uri: str) -> MlflowClient:
    """A client for commands that only read (leaderboard, report, export, evaluate): a local
    store that does not exist is an error (ValueError, exit 2), not a new empty store created
    by a command that was only asked to read."""
    store = local_store(mlflow_uri)
    if store is not None and not store.exists():
        raise ValueError(f"no MLflow store at {redact(mlflow_uri)} ({store} does not exist): no search has been "
                         "recorded there; pass the --mlflow-uri the search ran with")
    return MlflowClient(tracking_uri=mlflow_uri)


def finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy / torch scalars
            value = float(value)
        except (TypeError, ValueError):
            return False
    return math.isfinite(float(value))

def search_all(client: MlflowClient, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs

def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return search_all(client, experiment_id, f"tags.\"{TAG_PARENT}\" = '{parent_run_id}'")

def objectives_of(parent_run: Any) -> dict[str, str]:
    raw = parent_run.data.tags.get(TAG_OBJECTIVES)
    return json.loads(raw) if raw else dict(DEFAULT_OBJECTIVES)

def rows_of(runs: list, objectives: Mapping[str, str]) -> list[dict]:
    """One row per child run, with a Pareto flag computed over the trials that ran to the end
    (FRONT_STATUSES); stopped trials keep their last values but are never on the front.

    Row keys: trial_id, run_id, run_name, status, pareto, the objectives at top
    level, and the full "params" and latest "metrics" dicts.
    """
    rows = []
    for run in runs:
        metrics = dict(run.data.metrics)
        row = {
            "trial_id": run.data.tags.get(TAG_TRIAL_ID, run.info.run_name),
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.data.tags.get(TAG_STATUS, "unknown"),
            "pareto": False,
            **{name: metrics.get(name) for name in objectives},
            "params": dict(run.data.params),
            "metrics": metrics,
        }
        rows.append(row)
    completed = [r for r in rows if r["status"] in FRONT_STATUSES]
    front = {r["run_id"] for r in pareto_table(completed, dict(objectives)) if r["pareto"]}
    for row in rows:
        row["pareto"] = row["run_id"] in front
    return rows

def sort_rows(rows: list[dict], objectives: Mapping[str, str]) -> list[dict]:
    """Best first by the first objective, ties by fewer adapter parameters.

    Finished trials (completed, early_stopped) come before running, diverged or
    failed ones, so an errored trial's partial numbers never head the table;
    rows missing the objective come last within their group.
    """
    first, sense = next(iter(objectives.items()))
    sign = -1.0 if sense == "max" else 1.0

    def key(row: dict) -> tuple:
        value = row.get(first)
        params = row["metrics"].get("adapter_params")
        return (
            row["status"] not in FINISHED_STATUSES,
            value is None or not finite(value),
            sign * value if value is not None and finite(value) else 0.0,
            params if params is not None else math.inf,
        )

    return sorted(rows, key=key)

def _latest_search_run(client: MlflowClient, mlflow_uri: str, experiment_name: str) -> tuple[Any, Any]:
    """(experiment, parent run) of the most recent search named `experiment_name`."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"no MLflow experiment named {experiment_name!r} at {redact(mlflow_uri)}")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.\"{TAG_ROLE}\" = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise ValueError(f"experiment {experiment_name!r} has no raysearch search run yet")
    return experiment, parents[0]

def leaderboard(
    mlflow_uri: str, experiment_name: str, *, pareto_only: bool = False, top: int | None = None
) -> list[dict]:
    """Ranked rows for the child runs of the most recent search in `experiment_name`.

    Sorted by the search's first objective (best first), ties by fewer
    adapter_params. Each row: trial_id, run_id, run_name, status, pareto, the
    objectives, "params" and "metrics" (latest values).
    """
    client = reader(mlflow_uri)
    experiment, parent = _latest_search_run(client, mlflow_uri, experiment_name)
    rows = _ranked_rows(client, experiment.experiment_id, parent)
    if pareto_only:
        rows = [r for r in rows if r["pareto"]]
    return rows[:top] if top is not None else rows

def search_objectives(mlflow_uri: str, experiment_name: str) -> dict[str, str]:
    """The latest search's objectives, name -> max/min, in their order."""
    client = reader(mlflow_uri)
    return objectives_of(_latest_search_run(client, mlflow_uri, experiment_name)[1])


def _ranked_rows(client: MlflowClient, experiment_id: str, parent: Any) -> list[dict]:
    objectives = objectives_of(parent)
    return sort_rows(rows_of(children(client, experiment_id, parent.info.run_id), objectives), objectives)

def find_trial(mlflow_uri: str, experiment_name: str, trial: str | None = None) -> dict:
    """One leaderboard row of the latest search: the best trial that ran to the end
    (trial=None; early-stopped trials export nothing) or the one whose Tune trial id
    (or a prefix of it), MLflow run id or run name is `trial`."""
    rows = [r for r in leaderboard(mlflow_uri, experiment_name) if r["status"] in FINISHED_STATUSES]
    if trial is None:
        completed = [r for r in rows if r["status"] == "completed"]
        if not completed:
            raise ValueError(f"search {experiment_name!r} has no trial that ran to the end to export")
        return completed[0]
    for row in rows:
        if trial in (row["trial_id"], row["run_id"], row["run_name"]) or row["trial_id"].startswith(trial):
            return row
    known = ", ".join(r["trial_id"] for r in rows) or "none"
    raise ValueError(f"no finished trial {trial!r} in search {experiment_name!r}; finished trials: {known}")

def download_trial(mlflow_uri: str, row: dict, out_dir: Path) -> tuple[Path, str]:
    """Download the trial's exported adapter into `out_dir/adapter`; returns it and the
    search's experiment file (YAML text) from the parent run."""
    import mlflow.artifacts

    client = reader(mlflow_uri)
    run = client.get_run(row["run_id"])
    parent_id = run.data.tags.get(TAG_PARENT)
    if not any(a.path == "adapter" for a in client.list_artifacts(row["run_id"])):
        raise ValueError(f"trial {row['trial_id']} has no exported adapter (status {row['status']})")
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path="adapter",
                                                       dst_path=str(out_dir), tracking_uri=mlflow_uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path=EXPERIMENT_ARTIFACT,
                                                       dst_path=tmp, tracking_uri=mlflow_uri)
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise ValueError(f"the search run {parent_id} has no {EXPERIMENT_ARTIFACT} "
                             f"(recorded by raysearch before export existed?): {error}") from None
        return adapter, Path(path).read_text()

def latest_search(mlflow_uri: str, experiment_name: str) -> tuple[str, str]:
    """(parent run id, experiment file YAML) of the most recent search named `experiment_name`."""
    import mlflow.artifacts

    client = reader(mlflow_uri)
    parent_id = _latest_search_run(client, mlflow_uri, experiment_name)[1].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path=EXPERIMENT_ARTIFACT,
                                                       dst_path=tmp, tracking_uri=mlflow_uri)
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise ValueError(f"the search run {parent_id} has no {EXPERIMENT_ARTIFACT}: {error}") from None
        return parent_id, Path(path).read_text()

def search_record(mlflow_uri: str, experiment_name: str) -> dict[str, Any]:
    """Everything `raysearch report` draws, from the latest search named `experiment_name`:
    experiment and parent run ids, objectives, the leaderboard rows, each trial's validation
    curves (val_loss and the val_* objectives: trial id -> metric -> [(step, value)]) and the
    last rank allocation each trial logged (trial id -> module -> rank)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial otherwise
    client = reader(mlflow_uri)
    experiment, parent = _latest_search_run(client, mlflow_uri, experiment_name)
    objectives = objectives_of(parent)
    rows = _ranked_rows(client, experiment.experiment_id, parent)
    names = list(dict.fromkeys(["val_loss", *(k for k in objectives if k.startswith("val_"))]))
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    ranks: dict[str, dict[str, int]] = {}
    for row in rows:
        curves[row["trial_id"]] = {name: [(m.step, m.value) for m in sorted(
            client.get_metric_history(row["run_id"], name), key=lambda m: m.step)] for name in names}
        if any(a.path == "ranks" for a in client.list_artifacts(row["run_id"])):
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(row["run_id"], "ranks/ranks.json", tmp)
                ranks[row["trial_id"]] = parse_ranks(Path(path).read_text())
    return {"experiment_id": experiment.experiment_id, "parent_run_id": parent.info.run_id,
            "objectives": objectives, "rows": rows, "curves": curves, "ranks": ranks}

def log_report(mlflow_uri: str, parent_run_id: str, path: Path) -> None:
    """Log the report page on the search's parent run (artifact `report.html`)."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp, "report.html"))
        MlflowClient(tracking_uri=mlflow_uri).log_artifact(parent_run_id, str(Path(tmp, "report.html")))

def log_test_scores(mlflow_uri: str, run_id: str, metrics: Mapping[str, float], data: str, tag: str = TAG_TEST) -> None:
    """Record test scores on a run (a finished one too: MLflow accepts metrics after the end)."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if finite(v)],
                     tags=[RunTag(tag, data[:MAX_TAG_CHARS])])


# A trial run's params that are not part of its configuration: its seed (a comparison's
# replicate, raysearch/experiment/comparison.py), and what the variant implied
NOT_CONFIGURATION = (SEED_DIMENSION, "scaling_rule", "effective_loraplus_ratio")


def cell_table(rows: list[dict], by: list[str], objective: str, sense: str) -> list[dict[str, Any]]:
    """The best configuration of each cell: leaderboard rows (`runs.rows_of`) of trials that ran
    to the end, grouped by the `by` params, then by the rest of their configuration (seeds
    apart); each configuration's objective averaged over its seeds, the best mean kept.

    Each row: the cell's values, `trials` (finished trials in the cell), `best` (mean), `spread`
    (sample standard deviation over seeds; None with one), `seeds`, `config` (the winning
    configuration's other params, e.g. its tuned lr) and `trial_ids` (its trials, one a seed)."""
    by_cell: dict[tuple, dict[tuple, list[tuple[str, float]]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple, int] = defaultdict(int)
    for row in rows:
        params = row["params"]
        if row["status"] != "completed" or row.get(objective) is None or any(name not in params for name in by):
            continue
        cell = tuple(params[name] for name in by)
        rest = tuple(sorted((k, v) for k, v in params.items() if k not in by and k not in NOT_CONFIGURATION))
        by_cell[cell][rest].append((row["trial_id"], float(row[objective])))
        counts[cell] += 1
    table = []
    for cell, configs in by_cell.items():
        scored = []
        for rest, members in configs.items():
            values = [v for _, v in members]
            mean = sum(values) / len(values)
            spread = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None)
            scored.append((mean, spread, len(values), dict(rest), [trial for trial, _ in members]))
        mean, spread, n, config, ids = (max if sense == "max" else min)(scored, key=lambda s: s[0])
        table.append({**dict(zip(by, cell)), "trials": counts[cell], "best": mean, "spread": spread, "seeds": n,
                      "config": config, "trial_ids": ids})
    return sorted(table, key=lambda r: tuple(_sortable(r[name]) for name in by))


def _sortable(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
