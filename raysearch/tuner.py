"""Builds and runs the Ray Tune search: OptunaSearch over the objectives, ASHA on
`val_loss`, one Ray Train run per trial. The only module that builds Tune objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from raysearch.space import define_by_run, grid_points, make_sampler, num_trials_for
from raysearch.spec import Spec
from trainables.trial import run_trial

# The Tune function only waits on TorchTrainer.fit(); the workers hold the real
# CPUs/GPUs. Each concurrent trial gets one extra logical CPU on a local Ray for
# its function and Train controller (see DESIGN-NOTES.md, "Resources").
TRIAL_FUNCTION_RESOURCES = {"cpu": 1}


class DivergenceAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna FAIL for a diverged trial.

    A diverged trial reports no objective values; plain OptunaSearch would try to
    `tell` None values, fail, and leave the Optuna trial RUNNING forever.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get("diverged"):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


def base_config(spec: Spec, storage_dir: Path) -> dict[str, Any]:
    """The plain-dict part of every trial's config that the search does not sample."""
    return {
        "model": spec.model,
        "task": spec.task.model_dump(),
        "train": spec.train.model_dump(),
        "adapter": spec.adapter.model_dump(),
        "resources": spec.resources.model_dump(),
        "train_storage": str(storage_dir / "train"),
    }


def worker_cpus(spec: Spec) -> float:
    return spec.resources.workers_per_trial * spec.resources.cpus_per_worker


def effective_concurrency(spec: Spec, cluster_cpus: float) -> int:
    """`max_concurrent`, capped so every running trial's workers fit on the CPUs."""
    fits = int(cluster_cpus // worker_cpus(spec)) if worker_cpus(spec) > 0 else spec.search.max_concurrent
    return max(1, min(spec.search.max_concurrent, fits))


def init_ray(spec: Spec) -> int:
    """Start (or join, with RAY_ADDRESS) Ray; returns the trial concurrency to use."""
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], include_dashboard=False, log_to_driver=False)
        else:
            cpus = os.cpu_count() or 1
            concurrency = effective_concurrency(spec, cpus)
            ray.init(
                num_cpus=cpus + concurrency * TRIAL_FUNCTION_RESOURCES["cpu"],
                # Ray Train's placement-group cleaner needs the state API, which the
                # dashboard serves; bound to loopback so nothing listens beyond it.
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
            )
            return concurrency
    cpus = ray.cluster_resources().get("CPU", 1) - spec.search.max_concurrent * TRIAL_FUNCTION_RESOURCES["cpu"]
    return effective_concurrency(spec, max(cpus, worker_cpus(spec)))


def build_searcher(spec: Spec, storage_dir: Path, concurrency: int) -> ConcurrencyLimiter:
    search = spec.search
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage_dir / "optuna.journal"))
    )
    searcher = DivergenceAwareOptunaSearch(
        space=define_by_run(search.space),
        metric=list(search.objectives),
        mode=list(search.objectives.values()),
        sampler=make_sampler(search),
        study_name=spec.name,
        storage=journal,
        points_to_evaluate=grid_points(search.space) if search.sampler == "grid" else None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def build_scheduler(spec: Spec) -> ASHAScheduler | FIFOScheduler:
    stopping = spec.search.early_stopping
    if stopping.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        metric=stopping.metric,
        mode="min" if stopping.metric.endswith("loss") else "max",
        time_attr="training_iteration",
        grace_period=stopping.grace_period,
        reduction_factor=stopping.reduction_factor,
        max_t=10_000,
    )


def build_tuner(spec: Spec, storage_dir: Path, concurrency: int, callbacks: Sequence[tune.Callback]) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base_config(spec, storage_dir)), TRIAL_FUNCTION_RESOURCES
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(spec, storage_dir, concurrency),
            scheduler=build_scheduler(spec),
            num_samples=num_trials_for(spec.search),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(storage_dir),
            callbacks=list(callbacks),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
