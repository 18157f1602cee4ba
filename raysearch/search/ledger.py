"""The search's write-ahead record of its trials: what `raysearch resume` trusts.

Three stores change while a search runs. The Optuna journal is written at every ask and tell,
MLflow at every event, and Tune's experiment state (what `Tuner.restore` reads) only every
≥10 s, then copied to the results folder in the background. Resuming from the laggard alone,
a search killed at the wrong moment re-ran a trial that had finished and replaced one that had
just started with a duplicate (issue 17, docs/faults.md).

So each change of a trial is written here first, before Optuna or MLflow act on it:
`<storage>/<name>/ledger/<trial id>.json` holds Tune's own serialization of the trial
(`Trial.get_json_state`) as it was when created, started, checkpointed or retried, and, once
it ended, how (written before Optuna is told). On `raysearch resume`:

- `reconcile` folds the ledger into Tune's newest saved experiment state before Tune reads it:
  trials Tune never saved are added, newer checkpoints replace older ones, and a trial that
  ended is restored as ended (never run again);
- `RecordingSearchGenerator.restore_from_dir` brings the searcher to the same point: its count
  of trials created, its concurrency limiter's live trials, and Optuna's trials (an Optuna
  trial asked for by the killed driver whose Tune trial was never recorded is handed to the
  next new trial instead of asking Optuna for another).
"""
from __future__ import annotations

import json
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import SearchGenerator

from raysearch.search import storage
LEDGER_DIR = "ledger"
TERMINATED, ERROR = "TERMINATED", "ERROR"

# The driver's live Trial objects by id: the generator creates some, Tune restores others and
# hands them to the ledger callback; the generator's end record needs the object's state.
_TRIALS: dict[str, Trial] = {}


def ledger_location(storage_dir: str) -> str:
    return storage.join(str(storage_dir), LEDGER_DIR)


def write_record(storage_dir: str, record: dict[str, Any]) -> None:
    """Replace one trial's record, atomically: a reader sees the old record or the new one."""
    storage.write_text(ledger_location(storage_dir), f"{record['trial_id']}.json", json.dumps(record, default=_plain))


def read_record(storage_dir: str, trial_id: str) -> dict[str, Any] | None:
    """One trial's latest record, or None."""
    text = storage.read_text(ledger_location(storage_dir), f"{trial_id}.json")
    return json.loads(text) if text else None


def read_records(storage_dir: str) -> dict[str, dict[str, Any]]:
    """Trial id -> its latest record."""
    records = {}
    for name in storage.list_names(ledger_location(storage_dir), suffix=".json"):
        record = read_record(storage_dir, name.removesuffix(".json"))
        if record:
            records[record["trial_id"]] = record
    return records


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars, anything else as text


def record_trial(storage_dir: str, trial: Trial, ended: str | None = None, result: dict | None = None) -> None:
    """Record `trial` as it is now (and, with `ended`, that it ended so, with `result`)."""
    _TRIALS[str(trial.trial_id)] = trial
    record: dict[str, Any] = {"trial_id": str(trial.trial_id), "state": list(trial.get_json_state())}
    if ended:
        record.update(ended=ended, result=result)
    write_record(storage_dir, record)


class TrialLedger(tune.Callback):
    """Records a trial when it starts, after each checkpoint Tune registers, and when it is
    retried. First among the search's callbacks, so MLflow never knows more than the ledger."""

    def __init__(self, storage_dir: str) -> None:
        self.storage_dir = str(storage_dir)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record_trial(self.storage_dir, trial)

    # `on_checkpoint` runs before Tune registers the checkpoint with the trial; this after.
    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record_trial(self.storage_dir, trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record_trial(self.storage_dir, trial)


class RecordingSearchGenerator(SearchGenerator):
    """Tune's SearchGenerator, recording each trial it creates and each end before the
    searcher (Optuna) hears of it, and reconciled with the ledger when a search is restored."""

    def __init__(self, searcher: Any, storage_dir: str) -> None:
        super().__init__(searcher)
        self.storage_dir = str(storage_dir)

    def create_trial_if_possible(self, experiment_spec: dict) -> Trial | None:
        trial = super().create_trial_if_possible(experiment_spec)
        if trial is not None:
            # What Tune does next (add_trial), and then when it starts the trial's actor (its
            # folder's name): done now, so a trial restored from this record keeps that folder.
            trial.create_placement_group_factory()
            trial.init_local_path()
            record_trial(self.storage_dir, trial)
        return trial

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune calls this for every trial that ends by itself (finished, stopped early, errored
        # after its retries), never for one it stops because the driver is shutting down.
        trial, ended = _TRIALS.get(str(trial_id)), ERROR if error else TERMINATED
        if trial is not None:
            record_trial(self.storage_dir, trial, ended=ended, result=result)
        else:  # restored from the ledger and ended before it started again: keep its state
            record = read_record(self.storage_dir, str(trial_id))
            if record is not None:
                write_record(self.storage_dir, {**record, "ended": ended, "result": result})
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        records = read_records(self.storage_dir)
        if not records:
            return
        # Every trial this search created has a record; Tune's saved count may be older.
        self._counter = max(self._counter, len(records))
        live = {trial_id for trial_id, record in records.items() if not record.get("ended")}
        limiter = self.searcher
        if hasattr(limiter, "live_trials"):  # the ConcurrencyLimiter in front of Optuna
            limiter.live_trials = set(live)
            limiter.num_unfinished_live_trials = len(live)
        base = getattr(limiter, "searcher", limiter)
        if hasattr(base, "reconcile"):
            base.reconcile(known=set(records), ended={trial_id: (record["ended"], record.get("result"))
                                                      for trial_id, record in records.items() if record.get("ended")})


def newest_experiment_state(storage_dir: str) -> str | None:
    """The name of Tune's newest saved experiment state in the search's Tune folder, or None."""
    names = [name for name in storage.list_names(storage.tune_path(storage_dir), suffix=".json")
             if name.startswith("experiment_state-")]
    return names[-1] if names else None


def _progress(entry: list[str]) -> tuple[float, int]:
    """How far a saved trial got: its last result's time, then its retries."""
    metadata = json.loads(entry[1])
    return float(metadata.get("last_result_time") or 0.0), int(metadata.get("num_failures") or 0)


def _as_ended(entry: list[str], status: str) -> list[str]:
    """A saved trial state with its status set to `status` (TERMINATED or ERROR)."""
    trial = Trial.from_json_state(entry[0], stub=True)
    trial.restore_run_metadata(entry[1])
    trial.stub = False
    trial.set_status(status)
    return list(trial.get_json_state())


def _status(entry: list[str]) -> str:
    return json.loads(entry[0])["status"]


def reconcile(storage_dir: str) -> dict[str, list[str]]:
    """Fold the ledger into Tune's newest saved experiment state (rewritten in place).

    Returns what changed: trial ids `added` (unknown to Tune's state), `advanced` (a newer
    checkpoint or retry than Tune saved) and `ended` (ended, which Tune's state did not say)."""
    changes: dict[str, list[str]] = {"added": [], "advanced": [], "ended": []}
    records = read_records(storage_dir)
    name = newest_experiment_state(storage_dir)
    if not records or name is None:
        return changes
    location = storage.tune_path(storage_dir)
    state = json.loads(storage.read_text(location, name))
    saved = {json.loads(entry[0])["trial_id"]: list(entry) for entry in state["trial_data"]}
    for trial_id, record in sorted(records.items()):
        entry = saved.get(trial_id)
        if entry is None:
            entry = list(record["state"])
            changes["added"].append(trial_id)
        elif _progress(record["state"]) > _progress(entry):
            entry = list(record["state"])
            changes["advanced"].append(trial_id)
        ended = record.get("ended")
        if ended and _status(entry) != ended:
            entry = _as_ended(entry, ended)
            changes["ended"].append(trial_id)
        try:  # what Tune will do with it: fail here, not in a Tune that then starts over empty
            Trial.from_json_state(entry[0], stub=True)
        except Exception as error:
            raise ValueError(f"the record of trial {trial_id} in {ledger_location(storage_dir)} cannot be "
                             f"restored: {error!r}") from error
        saved[trial_id] = entry
    if any(changes.values()):
        state["trial_data"] = list(saved.values())
        storage.write_text(location, name, json.dumps(state))
    return changes


def ended_trials(storage_dir: str) -> dict[str, str]:
    """Trial id -> how it ended (TERMINATED or ERROR), for every trial that ended by itself."""
    return {trial_id: record["ended"] for trial_id, record in read_records(storage_dir).items()
            if record.get("ended")}
