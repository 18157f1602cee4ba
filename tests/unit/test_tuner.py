"""Tune objects built from a spec, and the divergence seam between Tune and Optuna."""
from __future__ import annotations

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler

from raysearch.experiment.space import define_by_run
from raysearch.experiment.spec import spec_from_dict
from raysearch.search.resources import effective_concurrency
from raysearch.search.tuner import DivergenceAwareOptunaSearch, build_scheduler

SPACE = {"search": {"space": {"rank": {"choice": [4, 8]}, "lr": {"loguniform": [1e-4, 1e-2]}}}}


def searcher():
    spec = spec_from_dict(SPACE)
    return DivergenceAwareOptunaSearch(space=define_by_run(spec.search.space),
                                       metric=["val_accuracy", "adapter_params"], mode=["max", "min"])


def test_diverged_trial_is_failed_in_optuna_never_nan():
    search = searcher()
    assert search.suggest("t1") is not None and search.suggest("t2") is not None
    search.on_trial_complete("t1", {"diverged": True, "adapter_params": 100, "final": True})
    search.on_trial_complete("t2", {"val_accuracy": 0.7, "adapter_params": 100})
    states = {t.number: t.state for t in search._ot_study.trials}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.COMPLETE}
    assert search._ot_study.trials[1].values == [0.7, 100]


def test_asha_from_spec():
    spec = spec_from_dict({**SPACE, "search": {**SPACE["search"],
                           "early_stopping": {"scheduler": "asha", "grace_period": 2, "reduction_factor": 4}}})
    scheduler = build_scheduler(spec)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._metric == "val_loss" and scheduler._mode == "min"


def test_concurrency_capped_by_cpus():
    spec = spec_from_dict({**SPACE, "search": {**SPACE["search"], "max_concurrent": 4},
                           "resources": {"workers_per_trial": 2, "cpus_per_worker": 1}})
    assert effective_concurrency(spec, 2) == 1
    assert effective_concurrency(spec, 16) == 4


def test_the_first_trial_is_the_experiment_files_own_configuration(tmp_path):
    """search.start_with_defaults: the study is given the file's adapter/train/task values for
    the searched dimensions first; a search restarted on a journal that has trials is not."""
    import optuna

    from raysearch.search.tuner import build_searcher

    data = {"adapter": {"variant": "lora", "rank": 16, "alpha": 16}, "train": {"lr": 5e-4},
            "search": {"sampler": "tpe", "seed": 3, "space": {
                "variant": {"choice": ["lora", "rora", "dora"]}, "rank": {"choice": [4, 16, 64]},
                "target": {"choice": ["attention", "all_linear"]}, "lr": {"loguniform": [2e-4, 3e-3]}}}}
    spec = spec_from_dict(data)
    first = build_searcher(spec, str(tmp_path), 2).searcher.suggest("t1")
    assert first == {"variant": "lora", "rank": 16, "target": "attention", "lr": 5e-4}
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "optuna.journal")))
    assert len(optuna.load_study(study_name=spec.name, storage=journal).trials) == 1
    again = build_searcher(spec, str(tmp_path), 2).searcher  # a restarted search: no second copy
    assert [t.state.name for t in optuna.load_study(study_name=spec.name, storage=journal).trials] == ["RUNNING"]
    assert again is not None
    off = spec_from_dict({**data, "name": "off", "search": {**data["search"], "start_with_defaults": False}})
    assert build_searcher(off, str(tmp_path / "off"), 2).searcher.suggest("t1") != first


def test_target_is_a_search_dimension_that_sets_the_task_target(tmp_path):
    from trainables.trial import trial_config

    from raysearch.search.tuner import base_config

    spec = spec_from_dict({"search": {"space": {"target": {"choice": ["attention", "all_linear"]}}}})
    config = trial_config(base_config(spec, str(tmp_path)), {"target": "all_linear"})
    assert config["task"]["target"] == "all_linear" and "target" not in config["adapter"]
    from raysearch.experiment.spec import SpecError

    with pytest.raises(SpecError) as error:
        spec_from_dict({"search": {"space": {"target": {"choice": ["attention", "everything"]}}}})
    assert "search.space.target" in str(error.value) and "all_linear" in str(error.value)


def test_a_resumed_driver_prunes_the_checkpoints_of_trials_that_ended_before_the_crash(tmp_path):
    """A trial that ended just before the driver was killed never had its own on_trial_complete
    prune; the resumed driver's first step does it, for ended trials only (the chaos test found
    one with all 18 checkpoints left)."""
    import pickle
    from types import SimpleNamespace

    from ray.train import Checkpoint

    from raysearch.search.tuner import PruneFinishedCheckpoints

    def trial(name: str, status: str) -> SimpleNamespace:
        for index in range(5):
            (tmp_path / name / f"checkpoint_{index:06d}").mkdir(parents=True)
        return SimpleNamespace(status=status, checkpoint=Checkpoint(str(tmp_path / name / "checkpoint_000004")))

    ended, running = trial("ended", "TERMINATED"), trial("running", "RUNNING")
    pruner = pickle.loads(pickle.dumps(PruneFinishedCheckpoints(keep=2)))  # as Tune restores it
    pruner.on_step_begin(1, [ended, running])
    assert sorted(p.name for p in (tmp_path / "ended").iterdir()) == ["checkpoint_000003", "checkpoint_000004"]
    assert len(list((tmp_path / "running").iterdir())) == 5
    running.status = "TERMINATED"
    pruner.on_step_begin(2, [ended, running])  # a sweep once per driver: on_trial_complete does the rest
    assert len(list((tmp_path / "running").iterdir())) == 5
    pruner.on_trial_complete(2, [ended, running], running)
    assert sorted(p.name for p in (tmp_path / "running").iterdir()) == ["checkpoint_000003", "checkpoint_000004"]
