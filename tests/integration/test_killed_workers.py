"""A trial's worker process is SIGKILLed mid-training: with `train.max_failures` left, the
trial continues from its last checkpoint (its steps go on, they do not start again at 0);
with none left, it ends as `error` with the failure as a tag, and the search goes on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from tiny_search import write_experiment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAYSEARCH = str(Path(sys.executable).with_name("raysearch"))
STEPS = 48  # 96 examples / batch 8 = 12 steps an epoch, 4 epochs; an evaluation every 4 steps


def train_workers() -> list[psutil.Process]:
    """Ray Train's worker processes (their title names the actor class)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def latest_checkpoint(run: Path) -> tuple[str, int] | None:
    """(directory, step) of the newest checkpoint Ray Train has registered for a train run.
    A checkpoint folder appears before its report is committed; only a registered one is
    what a restarted worker gets back."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return (latest["checkpoint_dir_name"], int(latest["metrics"]["step"])) if latest else None


class Killer(threading.Thread):
    """SIGKILLs the Train worker of the n-th trial (in start order) `kills[n]` times, each time
    once the running worker has a registered checkpoint that no earlier kill saw."""

    def __init__(self, train_root: Path, kills: list[int]) -> None:
        super().__init__(daemon=True)
        self.train_root, self.kills, self.done = train_root, kills, threading.Event()
        self.log: list[tuple[str, int]] = []  # (train run, step of the checkpoint it had when killed)

    def run(self) -> None:
        runs: list[Path] = []
        last_seen: dict[Path, str | None] = {}
        killed: set[int] = set()
        while not self.done.is_set():
            for run in sorted(self.train_root.glob("train-*"), key=lambda p: p.stat().st_mtime):
                if run not in runs:
                    runs.append(run)
                    last_seen[run] = None
            for n, run in enumerate(runs):
                if n >= len(self.kills) or [r for r, _ in self.log].count(run.name) >= self.kills[n]:
                    continue
                latest = latest_checkpoint(run)
                workers = [w for w in train_workers() if w.pid not in killed]
                if latest and latest[0] != last_seen[run] and workers and latest[1] < STEPS:
                    last_seen[run] = latest[0]
                    for worker in workers:
                        killed.add(worker.pid)
                        os.kill(worker.pid, signal.SIGKILL)
                    self.log.append((run.name, latest[1]))
            time.sleep(0.05)


def test_killed_workers_resume_from_checkpoint_then_error_when_retries_run_out(tmp_path, tiny_model_dir):
    space = write_experiment(
        tmp_path / "faults.yaml", tiny_model_dir, name="faults",
        search={"sampler": "grid", "max_concurrent": 1, "early_stopping": {"scheduler": "none"},
                "space": {"rank": {"choice": [2, 4]}}},
        train={"epochs": 4, "batch_size": 8, "lr": 5e-3, "eval_every_steps": 4, "max_failures": 1,
               "keep_checkpoints": 2},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1},
    )
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TRAIN_V2_ENABLED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # The first trial loses its worker once (1 retry left: it resumes), the second twice (it errors).
    killer = Killer(results / "faults" / "train", kills=[1, 2])
    killer.start()
    try:
        run = subprocess.run([RAYSEARCH, "run", "--space", str(space), "--storage", str(results),
                              "--mlflow-uri", uri], env=env, capture_output=True, text=True, timeout=600)
    finally:
        killer.done.set()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [n for n, _ in killer.log].count(killer.log[0][0]) == 1 and len(killer.log) == 3, killer.log

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("faults")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "raysearch.trial_id" in r.data.tags]
    by_train_run = {f"train-{r.data.tags['raysearch.trial_id']}": r for r in children}
    first, second = (by_train_run[name] for name in dict.fromkeys(n for n, _ in killer.log))

    # Killed once, retried once: it went on from its checkpoint to the last step.
    assert first.data.tags["raysearch.status"] == "completed"
    steps = [m.step for m in client.get_metric_history(first.info.run_id, "val_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps  # no step evaluated twice
    resumed_from = client.get_metric_history(first.info.run_id, "resumed_from_step")
    killed_at = killer.log[0][1]  # the step of the newest checkpoint when its worker was killed
    assert resumed_from, f"the retried worker started again from step 0: {killer.log}, {steps}"
    assert {m.value for m in resumed_from} == {killed_at} and min(m.step for m in resumed_from) > killed_at
    train_dir = results / "faults" / "train" / f"train-{first.data.tags['raysearch.trial_id']}"
    snapshot = json.loads((train_dir / "checkpoint_manager_snapshot.json").read_text())
    assert len(snapshot["checkpoint_results"]) == 2  # train.keep_checkpoints

    # Killed again after its one retry: an error that says what happened, not a hang.
    assert second.data.tags["raysearch.status"] == "error"
    assert second.info.status == "FAILED"
    assert "after 1 retry; train.max_failures" in second.data.tags["raysearch.error"]
    assert "worker 0" in second.data.tags["raysearch.error"]
