"""One search from a validated spec: Ray up, tracking and progress wired, Tuner run.

However the search ends (finished, error, Ctrl-C), every MLflow run it opened is
closed with a status and Ray is shut down.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import optuna
import ray
from rich.console import Console

from raysearch.search import storage
from raysearch.search.storage import EXPERIMENT_FILE, SEARCH_FILE
from raysearch.records.export_trial import experiment_text
from raysearch.search.ledger import ledger_location, newest_experiment_state, reconcile
from raysearch.search.progress import LiveProgress
from raysearch.experiment.pruning import pruning_config
from raysearch.experiment.sections import num_trials_for
from raysearch.experiment.spec import Spec
from raysearch.experiment.redaction import redact
from raysearch.records.mlflow_writer import MlflowTracking
from raysearch.records.run_fields import flatten, pruning_fields
from raysearch.search.resources import init_ray
from raysearch.search.tuner import build_tuner, restore_tuner



def flat_params(spec: Spec) -> dict[str, str]:
    """The experiment's fixed settings, flattened for the parent MLflow run."""
    flat: dict[str, str] = {"model": spec.model, "trust_remote_code": str(spec.trust_remote_code)}
    for section in ("task", "train", "adapter", "resources"):
        for key, value in getattr(spec, section).model_dump().items():
            flat[f"{section}.{key}"] = str(value)
    if spec.pruning is not None:
        for key, value in flatten({"pruning": spec.pruning.model_dump()}).items():
            flat[key] = str(value)
    for key in ("sampler", "num_trials", "max_concurrent", "seed"):
        flat[f"search.{key}"] = str(getattr(spec.search, key))
    return flat


def pruning_record(spec: Spec) -> dict | None:
    """The search's pruning recipe, its hash and cache folder (trainables/pruning.py), for the
    trial runs; None without pruning. The files are hashed here; the first trial builds."""
    config = pruning_config(spec)
    if config is None:
        return None
    from trainables.entry import pruning_record as record

    return record(config)


TRAIN_POLL_INTERVAL_S = 0.2


def quiet_libraries() -> None:
    """The search's own lines are what a user reads: the libraries' start-up INFO lines
    (Optuna's "study created", MLflow's "creating database tables", Ray's "started a local
    instance" and Tune's "wrote the result files") are dropped; their warnings stay."""
    optuna.logging.set_verbosity(logging.WARNING)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def ray_environment() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own live view replaces Tune's tables
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train's controller collects workers' reports when it polls them, every 2 s by
    # default, and a reporting worker waits for it, which slowed a tiny trial's evaluations
    # several-fold. A faster poll costs one small actor call per worker (DESIGN-NOTES.md).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_POLL_INTERVAL_S))
    # A failed trial is one line in the terminal (its cause and where the traceback is,
    # raysearch/search/progress.py), not Tune's multi-screen traceback; the traceback stays in the
    # trial's error.txt and its MLflow run.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


def run_search(spec: Spec, storage_dir: str | Path, console: Console, overwrite: bool = False,
               search_id: str | None = None) -> None:
    """Run the search. Raises ClusterSetupError (Ray shut down, nothing written, earlier
    results kept even with `overwrite`) when the cluster joined cannot run it.

    With `search_id` (`raysearch resume` of a search whose driver died before Tune first saved
    its state) the search starts again under that id: its Optuna journal and MLflow parent run
    are kept, and the Optuna trials the dead driver asked for go to its first new trials."""
    ray_environment()
    quiet_libraries()
    concurrency = init_ray(spec)
    storage_dir = str(storage_dir)  # a local path or a URI
    if overwrite and storage.exists(storage_dir):
        storage.delete(storage_dir)
    storage.make_dirs(storage_dir)
    journal = storage.journal_file(storage_dir, spec.name)
    if storage.kind(storage_dir) == storage.OBJECT_STORE and search_id is None:
        journal.unlink(missing_ok=True)  # a driver-side journal left by an earlier search of this name
    num_trials = num_trials_for(spec.search)
    console.print(
        f"search [bold]{spec.name}[/]: {num_trials} trials, {concurrency} at a time, "
        f"results in {storage_dir}, MLflow at {redact(spec.tracking.mlflow_uri)}",
        highlight=False,
    )
    search_id, experiment = search_id or uuid.uuid4().hex, experiment_text(spec)
    storage.write_text(storage_dir, EXPERIMENT_FILE, redact(experiment))
    storage.write_text(storage_dir, SEARCH_FILE, json.dumps({"search_id": search_id}))
    tracking = MlflowTracking(spec.tracking.mlflow_uri, spec.name, spec.search.objectives, flat_params(spec),
                              compare=spec.search.compare, trial_fields=pruning_fields(pruning_record(spec)),
                              experiment_file=experiment,
                              storage_scheme=storage_dir.split("://", 1)[0] if "://" in storage_dir else "",
                              search_id=search_id)
    progress = LiveProgress(spec.search.objectives, num_trials, console)
    fit(build_tuner(spec, storage_dir, concurrency, [tracking, progress]), tracking, journal, storage_dir)


class ResumeError(Exception):
    """Why a search cannot be resumed: no such search, its folder unreadable, or its saved
    experiment no longer valid (the CLI prints it and exits 2)."""


def saved_spec(name: str, storage_root: str, mlflow_uri: str | None = None) -> Spec:
    """The experiment search `name` ran with, read back from `<storage>/<name>/experiment.yaml`;
    `mlflow_uri` replaces its MLflow store (needed when it was saved without credentials)."""
    import yaml

    from raysearch.experiment.redaction import is_redacted
    from raysearch.experiment.spec import SpecError, spec_from_dict

    location = storage.search_dir(storage_root, name)
    try:
        text = storage.read_text(location, EXPERIMENT_FILE)
    except OSError as err:
        raise ResumeError(f"cannot read {location}: {err}") from None
    if text is None:
        raise ResumeError(f"no search '{name}' in {storage_root} ({location}/{EXPERIMENT_FILE} not found). "
                          "Pass --storage DIR, the folder the search ran with.")
    data = yaml.safe_load(text)
    data["storage"] = storage_root
    tracking = data.setdefault("tracking", {})
    if mlflow_uri:
        tracking["mlflow_uri"] = mlflow_uri
    if is_redacted(tracking.get("mlflow_uri", "")):
        raise ResumeError("the search's MLflow URI was saved without its credentials; pass --mlflow-uri.")
    try:
        return spec_from_dict(data, source_name=name)
    except SpecError as err:
        raise ResumeError(f"{location}/{EXPERIMENT_FILE} is no longer valid:\n{err}") from None


def resume_search(spec: Spec, storage_dir: str, console: Console, retry_errored: bool = False) -> None:
    """Continue the interrupted search saved in `storage_dir` (see `tuner.restore_tuner`).

    The MLflow parent run and every trial's run are found again by their tags and
    continued; runs the stopped driver left RUNNING are closed first (KILLED, with a reason).
    """
    ray_environment()
    quiet_libraries()
    storage_dir = str(storage_dir)
    search_id = json.loads(storage.read_text(storage_dir, SEARCH_FILE) or "{}").get("search_id")
    if newest_experiment_state(storage_dir) is None:
        # Killed before Tune first saved its state: nothing Tune could restore ran long enough to
        # report. Start again, keeping the Optuna trials (reused) and the MLflow parent run.
        console.print(f"search [bold]{spec.name}[/] was stopped before Tune first saved its state: starting it "
                      "again, with its Optuna study and MLflow run", highlight=False)
        for location in (storage.tune_path(storage_dir), ledger_location(storage_dir)):
            if storage.exists(location):
                storage.delete(location)
        run_search(spec, storage_dir, console, search_id=search_id)
        return
    init_ray(spec)
    journal = storage.journal_file(storage_dir, spec.name)
    if storage.kind(storage_dir) == storage.OBJECT_STORE and not journal.exists():
        saved = storage.read_text(storage_dir, storage.JOURNAL)  # the study, copied there when the driver stopped
        if saved is not None:
            storage.write_text(str(journal.parent), journal.name, saved)
    console.print(f"resuming search [bold]{spec.name}[/] from {storage_dir}, MLflow at "
                  f"{redact(spec.tracking.mlflow_uri)}", highlight=False)
    # Tune brings back the callbacks it saved with the search; this one only closes the runs.
    MlflowTracking.uri_override = spec.tracking.mlflow_uri
    closer = MlflowTracking(spec.tracking.mlflow_uri, spec.name, spec.search.objectives, {}, search_id=search_id)
    try:
        changes = reconcile(storage_dir)  # what the killed driver recorded after Tune last saved
        if any(changes.values()):
            console.print("brought Tune's saved state up to the trials' own record: " + ", ".join(
                f"{len(ids)} {what}" for what, ids in changes.items() if ids), highlight=False)
        tuner = restore_tuner(spec, storage_dir, retry_errored)
    except Exception:
        ray.shutdown()
        raise
    fit(tuner, closer, journal, storage_dir)


def fit(tuner, tracking: MlflowTracking, journal: Path, storage_dir: str) -> None:
    """Run the tuner; however it ends, close the MLflow runs, save the study and stop Ray.
    How it ended is in `outcome.json` (raysearch/search/outcome.py), written when Tune ends the search."""
    from raysearch.search.outcome import OUTCOME_FILE

    storage.delete_file(storage_dir, OUTCOME_FILE)  # an earlier end of this search (before a resume)
    status = "FAILED"
    try:
        tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.close(status)
        storage.save_journal(journal, storage_dir)
        ray.shutdown()
