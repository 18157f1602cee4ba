"""`run` on an existing search needs a choice, and what the kill tests share (the driver
killed at many moments: test_kill_anytime.py; on a cluster, with chaos: test_chaos.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tiny_search import write_experiment

pytestmark = pytest.mark.integration

RAYSEARCH = str(Path(sys.executable).with_name("raysearch"))
EVAL_EVERY = 4
STEPS = 144  # 96 examples / batch 8 = 12 steps an epoch


TRIALS = 6


def write_space(tmp_path: Path, model_dir: Path, name: str = "crash", **overrides) -> Path:
    return write_experiment(tmp_path / f"{name}.yaml", model_dir, name=name, search={
        "sampler": "random",
        "num_trials": TRIALS,
        "max_concurrent": 2,
        "early_stopping": {"scheduler": "none"},
        "space": {"rank": {"choice": [2, 4, 8]}, "lr": {"loguniform": [1e-3, 1e-2]}},
    }, **{"resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
          # 144 steps (~7 s here), an evaluation (and checkpoint) every 4: time to kill the
          # driver mid-trial
          "train": {"epochs": STEPS // 12, "batch_size": 8, "lr": 5e-3, "eval_every_steps": EVAL_EVERY}, **overrides})


def child_runs(uri: str, name: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "raysearch.trial_id" in r.data.tags]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([RAYSEARCH, *args], env=env, capture_output=True, text=True, timeout=600)


def test_run_on_an_existing_search_needs_a_choice(tmp_path, tiny_model_dir):
    space = write_space(tmp_path, tiny_model_dir, name="exists")
    (tmp_path / "results" / "exists").mkdir(parents=True)
    (tmp_path / "results" / "exists" / "experiment.yaml").write_text("name: exists\n")  # a search started there
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = cli("run", "--space", str(space), "--storage", str(tmp_path / "results"), env=env)
    assert result.returncode == 2
    assert "--resume" in result.stdout and "--restart" in result.stdout
    missing = cli("resume", "nothing-here", "--storage", str(tmp_path / "results"), env=env)
    assert missing.returncode == 2 and "no search 'nothing-here'" in missing.stdout
