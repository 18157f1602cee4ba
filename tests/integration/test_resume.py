"""Crash tests: a search whose driver is SIGKILLed continues with `raysearch resume`,
every trial finished exactly once in MLflow and in the Optuna study."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from tiny_search import checkpoint_step, write_experiment
from trainables.checkpoint import STATE_FILE

pytestmark = pytest.mark.integration

RAYSEARCH = str(Path(sys.executable).with_name("raysearch"))
FINISHED = ("completed", "early_stopped")
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


def saved_trials(results: Path) -> list[tuple[str, bool]]:
    """(status, whether it has a registered checkpoint) of each trial in the Tune experiment
    state, what `resume` restores. Tune writes that state at most once a second here and
    copies it to the results folder in the background, so a checkpoint folder on disk alone
    does not say that resume will know it."""
    states = sorted(results.glob("tune/experiment_state-*.json"))
    try:
        state = json.loads(states[-1].read_text())
    except (IndexError, OSError, ValueError):  # not saved yet, or being copied
        return []
    trials = []
    for trial_state, metadata in state["trial_data"]:
        manager = pickle.loads(bytes.fromhex(json.loads(metadata)["checkpoint_manager"]["value"]))
        trials.append((json.loads(trial_state)["status"], manager.latest_checkpoint_result is not None))
    return trials


def mid_trial_checkpoints(results: Path) -> dict[str, int]:
    """Trial id -> step of the newest checkpoint an unfinished (inline) trial has written to
    its Tune trial folder `run_trial_<trial id>_<index>_...`. Tune numbers checkpoints 0, 1, ... in
    report order, one per evaluation (tiny_search.checkpoint_step). A finished trial's
    last checkpoint holds its exported adapter instead of a training state."""
    found = {}
    for trial in results.glob("tune/run_trial_*"):
        checkpoints = sorted(trial.glob("checkpoint_*"))
        if not checkpoints or not (checkpoints[-1] / STATE_FILE).is_file():
            continue
        trial_id = trial.name.removeprefix("run_trial_").split("_")[0]
        found[trial_id] = checkpoint_step(checkpoints[-1].name, EVAL_EVERY)
    return found


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([RAYSEARCH, *args], env=env, capture_output=True, text=True, timeout=600)


def test_driver_killed_after_k_trials_resumes_to_n_finished_once(tmp_path, tiny_model_dir):
    space, results = write_space(tmp_path, tiny_model_dir), tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TRAIN_V2_ENABLED": "1", "RAY_USAGE_STATS_ENABLED": "0",
           # Tune saves its experiment state (what `resume` restores, with each trial's newest
           # checkpoint) every 10 s or more by default; every second here, so that the kill
           # below falls after a save that knows a mid-trial checkpoint.
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([RAYSEARCH, "run", "--space", str(space), "--storage", str(results),
                               "--mlflow-uri", uri], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 420
        while time.time() < deadline:
            finished = [r for r in child_runs(uri, "crash") if r.data.tags.get("raysearch.status") in FINISHED]
            saved = saved_trials(results / "crash")
            terminated = sum(status == "TERMINATED" for status, _ in saved)
            # a trial resume will continue from its checkpoint
            mid_trial = any(status == "RUNNING" and checkpointed for status, checkpointed in saved)
            if len(finished) >= 2 and terminated >= 2 and mid_trial:
                break
            assert driver.poll() is None, "the search ended before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("two trials never finished while another was mid-way")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        time.sleep(2)  # Ray's reaper stops the killed driver's processes; make sure of it
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    checkpointed = mid_trial_checkpoints(results / "crash")  # what the killed trials left
    before = {r.data.tags["raysearch.trial_id"]: r for r in child_runs(uri, "crash")}
    done_before = {tid: r for tid, r in before.items() if r.data.tags["raysearch.status"] in FINISHED}
    assert 2 <= len(done_before) < TRIALS
    assert (results / "crash" / "experiment.yaml").is_file()

    resumed = cli("resume", "crash", "--storage", str(results), "--mlflow-uri", uri, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("crash")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raysearch.role") == "search"]
    children = [r for r in runs if "raysearch.trial_id" in r.data.tags]
    assert len(parents) == 1, "resume opened a second parent run"
    assert len(children) == TRIALS and len({r.data.tags["raysearch.trial_id"] for r in children}) == TRIALS
    assert all(r.info.status != "RUNNING" for r in runs)
    assert all(r.data.tags["raysearch.status"] in FINISHED for r in children)
    assert parents[0].info.status == "FINISHED"
    interrupted = [r for r in children if r.data.tags["raysearch.trial_id"] not in done_before]
    assert all("continued by raysearch resume" in r.data.tags.get("raysearch.reason", "") for r in interrupted
               if before.get(r.data.tags["raysearch.trial_id"]) is not None)
    assert checkpointed
    continued = 0
    for trial_id, step in checkpointed.items():  # interrupted mid-way: continued from a checkpoint
        run = next(r for r in children if r.data.tags["raysearch.trial_id"] == trial_id)
        resumed = {m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")}
        # the newest one Tune's saved state knew: at most the newest written
        assert len(resumed) <= 1 and all(0 < value <= step for value in resumed), (trial_id, step, resumed)
        continued += bool(resumed)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)) and steps[-1] == STEPS, (trial_id, steps)  # each step logged once
    assert continued, f"no interrupted trial continued from its checkpoint: {checkpointed}"
    for trial_id, run in done_before.items():  # finished before the crash: not re-run, not touched
        now = client.get_run(run.info.run_id)
        assert now.info.end_time == run.info.end_time and now.data.metrics == run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps)), f"trial {trial_id} logged a step twice"

    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "crash" / "optuna.journal")))
    study = optuna.load_study(study_name="crash", storage=journal)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS


def test_run_on_an_existing_search_needs_a_choice(tmp_path, tiny_model_dir):
    space = write_space(tmp_path, tiny_model_dir, name="exists")
    (tmp_path / "results" / "exists").mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = cli("run", "--space", str(space), "--storage", str(tmp_path / "results"), env=env)
    assert result.returncode == 2
    assert "--resume" in result.stdout and "--restart" in result.stdout
    missing = cli("resume", "nothing-here", "--storage", str(tmp_path / "results"), env=env)
    assert missing.returncode == 2 and "no search 'nothing-here'" in missing.stdout
