"""The Tune function: one trial = one Ray Train run of the worker loop.

Tune samples a flat dict of search dimensions; merged onto the experiment's
defaults it becomes the plain-dict config every worker receives.
"""
from __future__ import annotations

from typing import Any

import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.loop import train_loop_per_worker


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """Experiment defaults + sampled dimensions -> the workers' config.

    A sampled name that is a training field (lr, epochs, ...) overrides `train`;
    every other one (variant, rank, alpha, ...) overrides `adapter`.
    """
    train = dict(base["train"])
    adapter = dict(base["adapter"])
    for key, value in sampled.items():
        (train if key in train else adapter)[key] = value
    return {**base, "train": train, "adapter": adapter}


def run_trial(sampled: dict[str, Any], base: dict[str, Any]) -> None:
    config = trial_config(base, sampled)
    resources = config["resources"]
    use_gpu = resources["gpus_per_worker"] > 0
    per_worker = {"CPU": resources["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = resources["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["workers_per_trial"], use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=base["train_storage"],
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
