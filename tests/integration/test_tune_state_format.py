"""Tune's experiment-state file, as the pinned Ray writes it, still holds every field the
ledger reads (raysearch/search/ledger.py: `raysearch resume` folds the ledger into it). The format is
not a public API: an upgrade of Ray that changes it fails here, naming the field, instead of
a resume that silently folds nothing in (issue 29)."""
from __future__ import annotations

import json

import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial

from raysearch.search.ledger import _as_ended, _progress, _status, newest_experiment_state, reconcile, write_record
from raysearch.search.storage import tune_path

pytestmark = pytest.mark.integration


def test_tunes_saved_state_has_what_the_ledger_reads(tmp_path):
    def two_reports(config: dict) -> None:  # defined here: Ray pickles it by value, not by this module's name
        for step in (1, 2):
            tune.report({"step": step, "val_loss": config["x"] / step})

    storage_dir = tmp_path / "search"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(two_reports, param_space={"x": tune.grid_search([1.0, 2.0])},
                           run_config=tune.RunConfig(storage_path=str(storage_dir), name="tune"))
        assert not tuner.fit().errors
    finally:
        ray.shutdown()
    assert tune_path(str(storage_dir)) == str(storage_dir / "tune")

    name = newest_experiment_state(str(storage_dir))
    assert name, f"no experiment_state-*.json in {storage_dir / 'tune'}: Tune names its state file differently"
    state = json.loads((storage_dir / "tune" / name).read_text())
    assert "trial_data" in state, f"Tune's state has no 'trial_data' any more: {sorted(state)}"
    entries = state["trial_data"]
    assert len(entries) == 2 and all(len(e) == 2 and all(isinstance(p, str) for p in e) for e in entries), \
        "a trial's entry is no longer [trial JSON, run metadata JSON]"
    for entry in entries:
        trial_json, metadata = json.loads(entry[0]), json.loads(entry[1])
        assert {"trial_id", "status"} <= set(trial_json), f"the trial JSON lacks trial_id/status: {sorted(trial_json)}"
        assert _status(entry) == Trial.TERMINATED
        assert {"last_result_time", "num_failures"} <= set(metadata), \
            f"the run metadata lacks last_result_time/num_failures: {sorted(metadata)}"
        last_time, failures = _progress(entry)
        assert last_time > 0 and failures == 0
        trial = Trial.from_json_state(entry[0], stub=True)  # what Tune does on restore
        assert trial.trial_id == trial_json["trial_id"]
        assert _status(_as_ended(entry, Trial.ERROR)) == Trial.ERROR  # how the ledger ends a trial

    # and the ledger folds into it: a record newer than Tune's save replaces the saved entry
    first = list(entries[0])
    trial_id = json.loads(first[0])["trial_id"]
    newer = json.loads(first[1])
    newer["last_result_time"] += 10
    write_record(str(storage_dir), {"trial_id": trial_id, "state": [first[0], json.dumps(newer)]})
    assert reconcile(str(storage_dir))["advanced"] == [trial_id]
