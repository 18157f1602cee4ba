"""The worker loop run in this process with a fake session: what it reports at
each evaluation, the checkpoints it writes, how a restart continues, and a NaN loss."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import ray.train
import torch

from raysearch.experiment.spec import Spec
from raysearch.search.tuner import base_config
from trainables import contract, loop
from trainables.checkpoint import STATE_FILE
from trainables.trial import trial_config


def worker_config(tiny_model_dir: Path, tmp_path: Path, **sampled: Any) -> dict[str, Any]:
    spec = Spec.model_validate({
        "name": "loop", "model": str(tiny_model_dir),
        "task": {"dataset": "builtin:demo", "max_length": 24, "max_train_examples": 96, "max_eval_examples": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "eval_every_steps": 4, "warmup_ratio": 0.1},
        "adapter": {"dropout": 0.1},
        "search": {"space": {"rank": {"choice": [4]}}},
    })
    return trial_config(base_config(spec, str(tmp_path)), sampled)


class FakeSession:
    """A one-worker session (trainables/session.py) that keeps its reports and copies of
    their checkpoints, and hands back `resume_from` as the checkpoint to continue from."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, root: Path, resume_from: Path | None = None) -> None:
        self.root, self.resume_from = root, resume_from
        self.reports: list[tuple[dict[str, Any], Path | None]] = []

    def report(self, metrics: dict[str, Any], folder: Path | None = None) -> None:
        kept = None
        if folder is not None:  # the loop deletes its folder once report returns
            kept = self.root / f"checkpoint_{len(self.reports)}"
            shutil.copytree(folder, kept)
        self.reports.append((dict(metrics), kept))

    def get_checkpoint(self) -> ray.train.Checkpoint | None:
        return ray.train.Checkpoint.from_directory(str(self.resume_from)) if self.resume_from else None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)


def run_loop(config: dict[str, Any], session: FakeSession) -> list[tuple[dict[str, Any], Path | None]]:
    loop.run_loop(config, session)
    return session.reports


@pytest.mark.parametrize("variant", ["lora", "sora"])
def test_each_evaluation_checkpoints_and_a_restart_continues_exactly(variant, tiny_model_dir, tmp_path):
    config = worker_config(tiny_model_dir, tmp_path, variant=variant)
    whole = run_loop(config, FakeSession(tmp_path / "whole"))
    assert [m["step"] for m, _ in whole] == [4, 8, 12]  # 96 examples / batch 8, evaluated every 4 steps
    assert [m["evaluation"] for m, _ in whole] == [1, 2, 3]
    assert [m["final"] for m, _ in whole] == [False, False, True]
    assert all(set(contract.REPORTED) <= set(m) for m, _ in whole)  # what the driver reads is there
    assert [contract.trial_status(m) for m, _ in whole] == ["early_stopped", "early_stopped", "completed"]
    assert all((c / STATE_FILE).is_file() for _, c in whole[:2])  # training state at each evaluation
    assert (whole[2][1] / "adapter" / "adapter_config.json").is_file()  # the export at the end
    assert all("resumed_from_step" not in m for m, _ in whole)
    eval_s = [m["eval_s"] for m, _ in whole]  # time spent evaluating so far, for the evaluation's share
    assert 0 < eval_s[0] < eval_s[1] < eval_s[2]

    # A restarted worker given the step-4 checkpoint: the same remaining steps, the same numbers.
    restarted = run_loop(config, FakeSession(tmp_path / "again", resume_from=whole[0][1]))
    assert [(m["step"], m["evaluation"], m["resumed_from_step"]) for m, _ in restarted] == [(8, 2, 4), (12, 3, 4)]
    for (expected, _), (actual, _) in zip(whole[1:], restarted):
        for key in ("val_loss", "val_accuracy", "train_loss", "lr", "adapter_params"):
            assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_a_nan_loss_ends_the_trial_as_diverged_without_a_loss_value(tiny_model_dir, tmp_path, monkeypatch):
    real_make_task = loop.make_task

    def make_task_with_nan_at_step_6(*args: Any, **kwargs: Any):
        task, calls = real_make_task(*args, **kwargs), {"n": 0}
        real_loss = task.loss

        def loss(model, batch):
            calls["n"] += 1
            value = real_loss(model, batch)
            return value * float("nan") if calls["n"] == 6 else value

        task.loss = loss
        return task

    monkeypatch.setattr(loop, "make_task", make_task_with_nan_at_step_6)
    reports = run_loop(worker_config(tiny_model_dir, tmp_path), FakeSession(tmp_path / "nan"))
    assert [m["step"] for m, _ in reports] == [4, 6]
    last, checkpoint = reports[-1]
    assert last["diverged"] is True and last["final"] is True and checkpoint is None
    assert contract.trial_status(last) == "diverged" and not contract.ran_to_the_end(last)
    assert not any(key.endswith("loss") for key in last)  # no NaN ever reaches Tune, ASHA or Optuna
