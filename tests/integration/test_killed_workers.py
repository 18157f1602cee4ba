"""A trial's training process is SIGKILLed mid-training: with `train.max_failures` left, the
trial continues from its last checkpoint (its steps go on, they do not start again at 0);
with none left, it ends as `error` with the failure as a tag, and the search goes on.

Both runners: a Ray Train worker (Ray Train retries its worker group) and an inline 1-worker
trial's Tune function (Tune retries the trial)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import psutil
import pytest

from tiny_search import checkpoint_step, write_experiment
from trainables.checkpoint import STATE_FILE

pytestmark = pytest.mark.integration

RAYSEARCH = str(Path(sys.executable).with_name("raysearch"))
STEPS = 48  # 96 examples / batch 8 = 12 steps an epoch, 4 epochs
EVAL_EVERY = 4


def processes(title: str, root: int) -> list[psutil.Process]:
    """The worker processes of the Ray that process `root` started (its descendants: the
    raylet forks them) whose title names the actor class `title`. Never another search's:
    tests and searches may run beside this one on the machine."""
    try:
        descendants = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in descendants:
        try:
            if title in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def train_checkpoint(run: Path) -> tuple[str, int] | None:
    """(directory, step) of the newest checkpoint Ray Train has registered for a train run.
    A checkpoint folder appears before its report is committed; only a registered one is
    what a restarted worker gets back."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return (latest["checkpoint_dir_name"], int(latest["metrics"]["step"])) if latest else None


def tune_checkpoint(trial: Path) -> tuple[str, int] | None:
    """(directory, step) of a checkpoint Tune's driver has registered for an inline trial, read
    from the trial's folder as it is written. A Tune function trainable reports synchronously:
    `train.report` writes checkpoint i's folder, then blocks until the driver asks for the next
    result, which it does only after it has registered checkpoint i. So once folder i + 1
    exists, checkpoint i is registered (and a retry gets it back, or a newer one). Tune's saved
    experiment state says the same, but it is written at most once a second and copied to the
    results folder in the background, late enough that a short trial can end first."""
    written = sorted(path.name for path in trial.glob("checkpoint_*"))
    return (written[-2], checkpoint_step(written[-2], EVAL_EVERY)) if len(written) >= 2 else None


def newest_written(trial: Path) -> int:
    """The step of the newest checkpoint folder an inline trial has written (registered or not)."""
    written = sorted(trial.glob(f"checkpoint_*/{STATE_FILE}"))
    return checkpoint_step(written[-1].parent.name, EVAL_EVERY) if written else 0


@dataclass(frozen=True)
class Runner:
    """Where a runner's trials keep their checkpoints, and the process that trains."""
    inline: bool
    runs_glob: str  # under the search's results folder
    latest: Callable[[Path], tuple[str, int] | None]
    worker_title: str
    # how far past `latest` the trial may already have written: a kill after the last step's
    # checkpoint leaves the retry nothing to train
    ahead: int


RUNNERS = {
    "ray_train": Runner(False, "faults/train/train-*", train_checkpoint, "RayTrainWorker", 0),
    "inline": Runner(True, "faults/tune/run_trial_*", tune_checkpoint, "ImplicitFunc", EVAL_EVERY),
}


class Killer(threading.Thread):
    """SIGKILLs the training process of the n-th trial (in start order) `kills[n]` times, each
    time once the trial has a checkpoint that no earlier kill saw."""

    def __init__(self, results: Path, runner: Runner, kills: list[int]) -> None:
        super().__init__(daemon=True)
        self.results, self.runner, self.kills, self.done = results, runner, kills, threading.Event()
        self.driver: int | None = None  # the `raysearch run` process, once started
        # (trial folder, step of its newest registered checkpoint when killed, of its newest
        # written one then: a retry continues from a step in between)
        self.log: list[tuple[str, int, int]] = []

    def run(self) -> None:
        runs: list[Path] = []
        last_seen: dict[Path, str | None] = {}
        killed: set[int] = set()
        while not self.done.is_set():
            for run in sorted(self.results.glob(self.runner.runs_glob), key=lambda p: p.stat().st_mtime):
                if run.is_dir() and run not in runs:
                    runs.append(run)
                    last_seen[run] = None
            for n, run in enumerate(runs):
                if self.driver is None or n >= len(self.kills) or [r for r, *_ in self.log].count(run.name) >= self.kills[n]:
                    continue
                latest = self.runner.latest(run)
                workers = [w for w in processes(self.runner.worker_title, self.driver) if w.pid not in killed]
                if latest and latest[0] != last_seen[run] and workers and latest[1] + self.runner.ahead < STEPS:
                    last_seen[run] = latest[0]
                    for worker in workers:
                        killed.add(worker.pid)
                        os.kill(worker.pid, signal.SIGKILL)
                    written = newest_written(run) if self.runner.inline else latest[1]
                    self.log.append((run.name, latest[1], written))
            time.sleep(0.05)


# The Ray Train runner is `slow` (make test-slow and CI; 60-100 s on 2 cores: each retry starts
# a worker group). make test keeps its parts: Tune's retry budget and a kill continuing from a
# checkpoint (the inline runner here), DDP trials on Ray Train (test_ddp.py) and a worker's death
# summarised as the trial's error with its retries (tests/unit/test_faults.py). Ray Train's own
# retry after a SIGKILL runs only in test-slow (here and in test_kill_anytime.py).
@pytest.mark.parametrize("runner", [pytest.param("ray_train", marks=pytest.mark.slow), "inline"])
def test_killed_workers_resume_from_checkpoint_then_error_when_retries_run_out(runner, tmp_path, tiny_model_dir):
    runner = RUNNERS[runner]
    space = write_experiment(
        tmp_path / "faults.yaml", tiny_model_dir, name="faults",
        search={"sampler": "grid", "max_concurrent": 1, "early_stopping": {"scheduler": "none"},
                "space": {"rank": {"choice": [2, 4]}}},
        train={"epochs": 4, "batch_size": 8, "lr": 5e-3, "eval_every_steps": EVAL_EVERY, "max_failures": 1,
               "keep_checkpoints": 2},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "inline_single_worker": runner.inline},
    )
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TRAIN_V2_ENABLED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # The first trial loses its worker once (1 retry left: it resumes), the second twice (it errors).
    killer = Killer(results, runner, kills=[1, 2])
    killer.start()
    driver = subprocess.Popen([RAYSEARCH, "run", "--space", str(space), "--storage", str(results),
                               "--mlflow-uri", uri], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer.driver = driver.pid
    try:
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        killer.done.set()
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert [n for n, *_ in killer.log].count(killer.log[0][0]) == 1 and len(killer.log) == 3, killer.log

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("faults")
    children = sorted((r for r in client.search_runs([experiment.experiment_id]) if "raysearch.trial_id" in r.data.tags),
                      key=lambda r: r.info.start_time)
    first, second = children  # a grid of 2, one at a time: in the order the killer saw them

    # Killed once, retried once: it went on from its checkpoint to the last step.
    assert first.data.tags["raysearch.status"] == "completed"
    steps = [m.step for m in client.get_metric_history(first.info.run_id, "val_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps  # no step evaluated twice
    resumed_from = client.get_metric_history(first.info.run_id, "resumed_from_step")
    _, killed_at, written = killer.log[0]  # the newest registered and written checkpoints' steps at the kill
    assert resumed_from, f"the retried worker started again from step 0: {killer.log}, {steps}"
    # Ray Train's snapshot is written as it registers a checkpoint: the retry gets exactly
    # that one. An inline trial's folders show a checkpoint the driver has registered, and it
    # may have registered the next one before the kill: the retry gets one of those.
    (resumed,) = {m.value for m in resumed_from}
    assert killed_at <= resumed <= written and (runner.inline or resumed == killed_at), (killer.log, resumed_from)
    assert min(m.step for m in resumed_from) > resumed, (killer.log, resumed_from)
    if not runner.inline:
        train_dir = results / "faults" / "train" / f"train-{first.data.tags['raysearch.trial_id']}"
        snapshot = json.loads((train_dir / "checkpoint_manager_snapshot.json").read_text())
        assert len(snapshot["checkpoint_results"]) == 2  # train.keep_checkpoints
    else:  # Tune kept all while the trial ran; once it finished, raysearch pruned them
        (trial_dir,) = (results / "faults" / "tune").glob(f"run_trial_{first.data.tags['raysearch.trial_id']}_*")
        assert len(list(trial_dir.glob("checkpoint_*"))) == 2  # train.keep_checkpoints

    # Killed again after its one retry: an error that says what happened, not a hang.
    assert second.data.tags["raysearch.status"] == "error"
    assert second.info.status == "FAILED"
    error = second.data.tags["raysearch.error"]
    if runner.inline:  # Tune retried the trial's function process
        assert "died" in error, error
    else:  # Ray Train retried the worker group
        assert "after 1 retry; train.max_failures" in error and "worker 0" in error, error
