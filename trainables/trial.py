"""The Tune function: one trial = one run of the worker loop, either in this process
(a 1-worker trial, `resources.inline_single_worker`) or as a Ray Train run.

Tune samples a flat dict of search dimensions; merged onto the experiment's
defaults it becomes the plain-dict config every worker receives.
"""
from __future__ import annotations

from typing import Any

import ray.train
from ray import tune
from ray.train import TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.contract import section_of
from trainables.session import TuneSession


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """Experiment defaults + sampled dimensions -> the workers' config.

    A sampled name that is a training field (lr, epochs, ...) overrides `train`, `target`
    overrides `task.target`, and every other one (variant, rank, alpha, ...) `adapter`
    (`contract.section_of`, which the experiment's validation uses too).
    """
    sections = {name: dict(base[name]) for name in ("train", "adapter", "task")}
    for key, value in sampled.items():
        sections[section_of(key)][key] = value
    return {**base, **sections}


def run_trial(sampled: dict[str, Any], base: dict[str, Any]) -> None:
    # The loop (transformers, PEFT, the data code) is imported here, in the trial's process:
    # the driver imports this module only to hand `run_trial` to Tune.
    from trainables.loop import run_loop, train_loop_per_worker

    config = trial_config(base, sampled)
    resources = config["resources"]
    use_gpu = resources["gpus_per_worker"] > 0
    if resources["inline"]:
        # Tune itself retries the function (its FailureConfig, from train.max_failures) and
        # hands the retried run its last checkpoint.
        try:
            run_loop(config, TuneSession(use_gpu))
        except Exception as error:  # Tune stops a trial with SystemExit, which passes through
            raise TrialFailed(failure_summary(error, config["train"]["max_failures"])) from error
        return
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
            # The same name and storage on a resumed search: Ray Train finds the trial's
            # checkpoints again and its workers continue from the latest.
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=base["train_storage"],
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=config["train"]["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config["train"]["keep_checkpoints"]),
        ),
    )
    try:
        trainer.fit()
    except TrainingFailedError as error:
        # Tune records the error's last line (MLflow tag raysearch.error): make it the cause.
        raise TrialFailed(failure_summary(error, config["train"]["max_failures"])) from error


LAST_LINE_CHARS = 200


class TrialFailed(RuntimeError):
    """A trial's training failed: its Ray Train run after that run's own retries, or one
    attempt of an inline trial (which Tune then retries, up to train.max_failures)."""


def failure_summary(error: BaseException, max_failures: int) -> str:
    """One line: what failed on which worker, after how many retries."""
    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        rank = min(failures)
        cause = f"worker {rank}: {last_line(failures[rank])}"
    else:
        cause = last_line(error)
    retries = "no retries" if max_failures == 0 else (
        "retries without limit" if max_failures < 0 else f"{max_failures} retr{'y' if max_failures == 1 else 'ies'}")
    return f"{cause} (after {retries}; train.max_failures)"


def last_line(error: BaseException) -> str:
    """The exception's own last line, e.g. `ValueError: bad label` (Ray wraps worker
    exceptions with their remote traceback first)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if len(text) > LAST_LINE_CHARS:  # Ray's lost-worker messages run on for a paragraph
        text = text[: LAST_LINE_CHARS - 1].rstrip() + "…"
    name = type(error).__name__
    if not text:
        return name
    return text if ":" in text.split(" ", 1)[0] or text.startswith(name) else f"{name}: {text}"
