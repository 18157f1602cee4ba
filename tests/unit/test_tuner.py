"""Tune objects built from a spec, and the divergence seam between Tune and Optuna."""
from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler

from raysearch.space import define_by_run
from raysearch.spec import spec_from_dict
from raysearch.tuner import DivergenceAwareOptunaSearch, build_scheduler, effective_concurrency

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
