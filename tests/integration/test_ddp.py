"""A 2-worker DDP trial (gloo) gives the same result as 1 worker with the same global batch."""
from __future__ import annotations

import pytest
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from trainables.loop import train_loop_per_worker

pytestmark = pytest.mark.integration


def config(model_dir, workers: int) -> dict:
    return {
        "model": str(model_dir),
        "task": {"type": "classification", "dataset": "builtin:demo", "text_fields": None, "label_field": "label",
                 "max_length": 24, "metric": "accuracy", "max_train_examples": 128, "max_eval_examples": 64},
        "train": {"epochs": 1, "batch_size": 16, "lr": 5e-3, "weight_decay": 0.0, "warmup_ratio": 0.1,
                  "eval_every_steps": 4, "seed": 0, "max_grad_norm": 1.0},
        "adapter": {"variant": "lora", "rank": 4, "alpha": 8, "scaling": "rora", "dropout": 0.0,
                    "loraplus_ratio": None, "target_modules": None},
        "resources": {"workers_per_trial": workers, "cpus_per_worker": 0.5, "gpus_per_worker": 0},
    }


def fit(model_dir, workers: int, storage) -> dict:
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config(model_dir, workers),
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=f"ddp-{workers}", storage_path=str(storage)),
    )
    return trainer.fit().metrics


def test_two_workers_match_one_worker(tmp_path, tiny_model_dir):
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        one = fit(tiny_model_dir, 1, tmp_path)
        two = fit(tiny_model_dir, 2, tmp_path)
    finally:
        ray.shutdown()
    assert one["final"] and two["final"] and one["step"] == two["step"] == 8
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-3)
    assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=1 / 64 + 1e-9)
    assert two["adapter_params"] == one["adapter_params"]
