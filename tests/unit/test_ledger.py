"""The trial ledger (raysearch/search/ledger.py): what `raysearch resume` folds into Tune's saved
state, and how the Optuna searcher is brought level with the journal after a kill.
The whole path, with real kills, is tests/integration/test_kill_anytime.py."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from raysearch.search.ledger import ERROR, TERMINATED, read_records, reconcile, write_record
from raysearch.experiment.space import define_by_run
from raysearch.experiment.spec import spec_from_dict
from raysearch.search.tuner import TUNE_TRIAL_ATTR, DivergenceAwareOptunaSearch

SPACE = {"search": {"space": {"rank": {"choice": [4, 8]}, "lr": {"loguniform": [1e-4, 1e-2]}}}}


def make_trial(storage: Path, trial_id: str) -> Trial:
    trial = Trial("run_trial", config={"rank": 4}, trial_id=trial_id, stub=True, experiment_tag=f"1_{trial_id}",
                  storage=StorageContext(storage_path=str(storage), experiment_dir_name="tune"))
    trial.create_placement_group_factory()
    return trial


def entry(trial: Trial) -> list[str]:
    return list(trial.get_json_state())


def save_tune_state(results: Path, trials: list[Trial]) -> Path:
    """An experiment state file as Tune writes it (only the parts reconcile reads)."""
    path = results / "tune" / "experiment_state-2026-01-01_00-00-00.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trial_data": [entry(t) for t in trials], "runner_data": {}, "stats": {}}))
    return path


def saved(path: Path) -> dict[str, tuple[str, dict]]:
    state = json.loads(path.read_text())
    return {json.loads(js)["trial_id"]: (json.loads(js)["status"], json.loads(rt)) for js, rt in state["trial_data"]}


def test_reconcile_adds_advances_and_ends_what_tune_had_not_saved(tmp_path):
    results = tmp_path / "search"
    behind, finished, unseen, same = (make_trial(tmp_path, t) for t in ("behind01", "ended002", "unseen03", "same0004"))
    path = save_tune_state(results, [behind, finished, same])  # Tune's last save: before the events below
    behind.update_last_result({"step": 8, "val_loss": 0.5})  # a later checkpoint, recorded in the ledger
    finished.update_last_result({"step": 96, "val_loss": 0.4, "final": True})
    for trial in (behind, unseen, same):
        write_record(str(results), {"trial_id": trial.trial_id, "state": entry(trial)})
    write_record(str(results), {"trial_id": finished.trial_id, "state": entry(finished), "ended": TERMINATED,
                                "result": {"val_loss": 0.4}})

    changes = reconcile(str(results))

    assert changes == {"added": ["unseen03"], "advanced": ["behind01", "ended002"], "ended": ["ended002"]}
    after = saved(path)
    assert set(after) == {"behind01", "ended002", "unseen03", "same0004"}
    assert after["behind01"][1]["last_result_time"] == json.loads(entry(behind)[1])["last_result_time"]
    assert after["ended002"][0] == TERMINATED and after["unseen03"][0] == "PENDING"
    for trial_state, _ in json.loads(path.read_text())["trial_data"]:
        Trial.from_json_state(trial_state, stub=True)  # what Tune does with each on restore
    assert reconcile(str(results)) == {"added": [], "advanced": [], "ended": []}  # nothing left to fold in


def test_an_errored_end_is_restored_as_an_error(tmp_path):
    results = tmp_path / "search"
    trial = make_trial(tmp_path, "failed01")
    path = save_tune_state(results, [trial])
    write_record(str(results), {"trial_id": trial.trial_id, "state": entry(trial), "ended": ERROR, "result": None})
    assert reconcile(str(results))["ended"] == ["failed01"]
    assert saved(path)["failed01"][0] == ERROR


def test_a_record_tune_could_not_restore_stops_the_resume(tmp_path):
    results = tmp_path / "search"
    save_tune_state(results, [make_trial(tmp_path, "fine0001")])
    broken = Trial("run_trial", config={}, trial_id="broken01", stub=True,
                   storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="tune"))
    write_record(str(results), {"trial_id": "broken01", "state": entry(broken)})  # no placement group factory
    with pytest.raises(ValueError, match="trial broken01"):
        reconcile(str(results))


def test_records_are_replaced_whole(tmp_path):
    write_record(str(tmp_path), {"trial_id": "t1", "state": ["a", "b"]})
    write_record(str(tmp_path), {"trial_id": "t1", "state": ["c", "d"], "ended": TERMINATED})
    assert read_records(str(tmp_path)) == {"t1": {"trial_id": "t1", "state": ["c", "d"], "ended": TERMINATED}}
    assert [p.name for p in (tmp_path / "ledger").iterdir()] == ["t1.json"]  # no temporary file left


def searcher(journal: Path, points: list[dict] | None = None) -> DivergenceAwareOptunaSearch:
    spec = spec_from_dict(SPACE)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return DivergenceAwareOptunaSearch(space=define_by_run(spec.search.space), metric=["val_accuracy", "adapter_params"],
                                       mode=["max", "min"], study_name="s", storage=storage,
                                       sampler=optuna.samplers.RandomSampler(seed=0), points_to_evaluate=points)


def test_a_restored_searcher_finds_its_trials_tells_missed_ends_and_reuses_orphans(tmp_path):
    journal = tmp_path / "optuna.journal"
    killed = searcher(journal)  # the driver that was killed
    for trial_id in ("t1", "t2", "t3"):
        killed.suggest(trial_id)
    orphan_params = killed._ot_trials["t3"].params  # asked for, but its Tune trial never recorded

    restored = searcher(journal)  # what Tune's older saved state brings back: it knows none of them
    restored.reconcile(known={"t1", "t2"}, ended={"t2": (TERMINATED, {"val_accuracy": 0.7, "adapter_params": 10})})

    study = restored._ot_study
    by_owner = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.get_trials()}
    assert by_owner["t2"].state == optuna.trial.TrialState.COMPLETE and by_owner["t2"].values == [0.7, 10]
    config = restored.suggest("t4")  # the next new trial takes the orphan's place
    assert config == orphan_params and len(study.get_trials()) == 3
    assert {t.user_attrs[TUNE_TRIAL_ATTR] for t in study.get_trials()} == {"t1", "t2", "t4"}
    restored.on_trial_complete("t1", {"val_accuracy": 0.6, "adapter_params": 5})  # found by its attribute
    restored.on_trial_complete("t4", {"val_accuracy": 0.5, "adapter_params": 5})
    restored.suggest("t5")  # nothing left to reuse: a new Optuna trial
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and len(states) == 4


def test_a_new_seeded_search_with_a_first_point_draws_the_same_trials_every_run(tmp_path):
    # A new study's enqueued first point is a WAITING trial; the first suggestion must not take
    # it for a killed driver's trials and reseed the sampler (CI once drew four alike trials).
    def draws(journal: Path) -> list[dict]:
        fresh = searcher(journal, points=[{"rank": 4, "lr": 1e-3}])
        return [fresh.suggest(f"t{i}") for i in range(5)]

    first, second = draws(tmp_path / "a.journal"), draws(tmp_path / "b.journal")
    assert first[0] == {"rank": 4, "lr": 1e-3}
    assert first == second
