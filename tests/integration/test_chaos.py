"""Chaos on a three-node Ray cluster (on this machine), in the manner of Ray's own release
tests: while a search runs with `train.max_failures`, a seeded killer SIGKILLs a random trial's
process every few seconds with some probability, removes a worker node once and adds one
back; the driver itself is SIGKILLed once and the search resumed (issue 17).

Whatever was killed, the search must end as one undisturbed run would: every trial finished
once in MLflow and once in the Optuna study, each of its steps logged once, each killed trial
continued from its last checkpoint, and no checkpoint folder left that Tune does not know."""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest

from local_cluster import local_cluster
from raysearch.search.ledger import read_records
from test_resume import RAYSEARCH, child_runs
from tiny_search import continuation_problems, write_experiment

# slow (make test-slow and CI, not make test): each of its parts is checked faster in make test,
# a killed trial continuing from its checkpoint (test_killed_workers.py), a killed driver resumed
# (test_kill_anytime.py), a cluster of several nodes (test_autoscaling.py);
# here they happen together, with a node lost mid-search.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS, EVAL_EVERY, STEPS, KEEP = 6, 4, 72, 2  # 96 examples, batch 8: 12 steps an epoch (STEPS a multiple)
SEED, INTERVAL_S, KILL_PROBABILITY = 5, 1.0, 0.9
KILLS_PER_TRIAL, MAX_FAILURES = 4, 8  # retries left for a lost node and a driver kill on top
FINISHED = ("completed", "early_stopped")


def trial_processes(trials: set[str]) -> dict[int, str]:
    """pid -> trial id of each running inline trial whose id is in `trials` (this search's:
    never another search's on the machine). A trial is a Tune function actor, which Tune runs
    in a working folder `run_trial_<trial id>_...`. Not the processes such an actor forks (they
    carry its title and folder too, but killing one does not stop the trial)."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "ImplicitFunc" not in " ".join(process.info["cmdline"] or []):
                continue
            if "ImplicitFunc" in " ".join(process.parent().cmdline()):
                continue
            folder = Path(process.cwd()).name
        except (psutil.Error, OSError):
            continue
        if folder.startswith("run_trial_") and folder.removeprefix("run_trial_").split("_")[0] in trials:
            found[process.pid] = folder.removeprefix("run_trial_").split("_")[0]
    return found


def last_steps(uri: str) -> dict[str, int]:
    client = mlflow.MlflowClient(uri)
    return {run.data.tags["raysearch.trial_id"]: max((m.step for m in client.get_metric_history(run.info.run_id,
                                                                                                "val_loss")), default=0)
            for run in child_runs(uri, "chaos")}


class Chaos(threading.Thread):
    """Every INTERVAL_S, with KILL_PROBABILITY, SIGKILLs one running trial's process, chosen by
    a seeded generator among those killed fewer than KILLS_PER_TRIAL times (within the trials'
    `train.max_failures`: this test is about surviving, test_killed_workers.py about running out). (Nodes are removed and added from the main thread: Ray's node start-up
    installs signal handlers, which only the main thread may.)"""

    def __init__(self, uri: str, results: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.uri, self.results, self.rng = uri, results, random.Random(seed)
        self.done = threading.Event()
        self.kills: list[tuple[str, int, int]] = []  # (trial id, its run's last logged step then, pid)
        self.seen: dict[tuple[int, str], int] = {}  # (pid, trial) -> the trial's last logged step when first seen
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.done.wait(INTERVAL_S):
            try:
                records = read_records(str(self.results))
                processes, steps = trial_processes(set(records)), last_steps(self.uri)
                ended = {trial for trial, record in records.items() if record.get("ended")}
                for pid, trial in processes.items():
                    self.seen.setdefault((pid, trial), steps.get(trial, 0))
                if self.rng.random() < KILL_PROBABILITY:
                    killed = [trial for trial, _, _ in self.kills]
                    # only a process that has itself reported (its trial's logged step moved on
                    # since the process was first seen in that trial: steps logged before a restart
                    # or a driver kill do not count), and not one whose trial has ended (Tune reuses
                    # a finished trial's process for the next trial, and until that trial's function
                    # starts, the process still sits in the old trial's folder): killed while Tune
                    # starts it, Ray 2.60 can count the one death twice and end the trial as an error
                    # with retries left (docs/faults.md)
                    running = sorted((pid, trial) for pid, trial in processes.items()
                                     if killed.count(trial) < KILLS_PER_TRIAL and trial not in ended
                                     and self.seen[pid, trial] < steps.get(trial, 0) < STEPS)
                    if running:
                        pid, trial_id = self.rng.choice(running)
                        os.kill(pid, signal.SIGKILL)
                        time.sleep(0.5)  # the driver logs nothing more for it now
                        self.kills.append((trial_id, last_steps(self.uri).get(trial_id, 0), pid))
            except Exception as error:  # noqa: BLE001 - reported by the test, not lost in the thread
                self.errors.append(repr(error))


def ended_trials(results: Path) -> int:
    return sum(bool(record.get("ended")) for record in read_records(str(results)).values())


def wait_while(driver: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert driver.poll() is None, "the search ended before the chaos did"
        time.sleep(0.1)


def known_checkpoints(results: Path) -> dict[str, set[str]]:
    """Trial id -> checkpoint folder names Tune's newest saved experiment state knows."""
    state = json.loads(sorted((results / "tune").glob("experiment_state-*.json"))[-1].read_text())
    known = {}
    for trial_state, metadata in state["trial_data"]:
        manager = pickle.loads(bytes.fromhex(json.loads(metadata)["checkpoint_manager"]["value"]))
        names = {Path(result.checkpoint.path).name for result in manager.best_checkpoint_results}
        if manager.latest_checkpoint_result is not None:
            names.add(Path(manager.latest_checkpoint_result.checkpoint.path).name)
        known[json.loads(trial_state)["trial_id"]] = names
    return known


def test_chaos_on_a_multi_node_cluster(tmp_path, tiny_model_dir, monkeypatch):
    shared = tmp_path / "shared"  # every node of this one-machine cluster sees it: stands for NFS
    shared.mkdir()
    storage, uri = f"file://{shared}", f"sqlite:///{shared}/mlflow.db"
    space = write_experiment(tmp_path / "chaos.yaml", tiny_model_dir, name="chaos", search={
        "sampler": "random", "num_trials": TRIALS, "max_concurrent": 3, "seed": SEED,
        "early_stopping": {"scheduler": "none"},
        "space": {"rank": {"choice": [2, 4, 8]}, "lr": {"loguniform": [1e-3, 1e-2]}},
    }, resources={"workers_per_trial": 1, "cpus_per_worker": 1},
        train={"epochs": STEPS // 12, "batch_size": 8, "lr": 5e-3, "eval_every_steps": EVAL_EVERY,
               "max_failures": MAX_FAILURES, "keep_checkpoints": KEEP})
    results = shared / "chaos"
    started = time.time()
    with local_cluster(monkeypatch, head_cpus=1, worker_cpus=[1, 1]) as cluster:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": cluster.address}
        chaos, node_events = Chaos(uri, results, SEED), []
        driver = subprocess.Popen([RAYSEARCH, "run", "--space", str(space), "--storage", storage, "--mlflow-uri", uri],
                                  env=env, stdout=(tmp_path / "run.log").open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        chaos.start()
        try:
            wait_while(driver, 10)  # trials are running on every node by now
            cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)  # lost, with its trials
            node_events.append("removed a worker node")
            wait_while(driver, 6)
            cluster.add_node(num_cpus=1, dashboard_agent_listen_port=None, runtime_env_dir_name="runtime_env_readded")
            node_events.append("added a worker node")
            # the driver is killed once 2 trials have ended and (so that kills before and after it are
            # both tested, however fast this machine trains) 2 trial processes were killed, or 4 ended
            while not (ended_trials(results) >= 2 and (len(chaos.kills) >= 2 or ended_trials(results) >= 4)):
                assert driver.poll() is None, "the search ended before its driver could be killed"
                assert time.time() - started < 240, "two trials never finished"
                time.sleep(0.05)
            time.sleep(random.Random(SEED).uniform(0.0, 2.0))
            driver_kill = (time.time() - started, last_steps(uri))
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            time.sleep(2)
            resumed = subprocess.run([RAYSEARCH, "resume", "chaos", "--storage", storage, "--mlflow-uri", uri],
                                     env=env, capture_output=True, text=True, timeout=400)
        finally:
            chaos.done.set()
            chaos.join()
            if driver.poll() is None:
                driver.kill()
    elapsed = time.time() - started
    print(f"chaos: {len(chaos.kills)} trial processes killed {chaos.kills}, {node_events}, driver killed "
          f"at {driver_kill[0]:.0f} s; {elapsed:.0f} s in all")
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    assert not chaos.errors, chaos.errors
    assert chaos.kills and node_events == ["removed a worker node", "added a worker node"]

    client = mlflow.MlflowClient(uri)
    runs = child_runs(uri, "chaos")
    trial_ids = sorted(r.data.tags["raysearch.trial_id"] for r in runs)
    assert len(runs) == TRIALS and len(set(trial_ids)) == TRIALS, trial_ids
    unfinished = [(r.data.tags["raysearch.trial_id"], r.info.status, r.data.tags.get("raysearch.status"))
                  for r in runs if not (r.info.status == "FINISHED" and r.data.tags["raysearch.status"] in FINISHED)]
    if unfinished:  # what CI needs to tell why, printed in full (an assertion message is cut short)
        for folder in (results / "tune").glob("run_trial_*"):
            if (folder / "error.txt").is_file():
                print(f"--- {folder.name}/error.txt\n{(folder / 'error.txt').read_text()[-4000:]}")
        print(f"--- run.log\n{(tmp_path / 'run.log').read_text()[-6000:]}\n--- resume\n{resumed.stdout[-6000:]}")
    assert not unfinished, (unfinished, chaos.kills, driver_kill)
    # A kill stopped a trial when Tune recorded that process's death for it (the trial's error.txt
    # names each dead actor's pid): the killer's choice by folder is checked, not assumed.
    failed_pids = {folder.name.removeprefix("run_trial_").split("_")[0]: set(re.findall(
        r"pid: (\d+)", (folder / "error.txt").read_text())) if (folder / "error.txt").is_file() else set()
        for folder in (results / "tune").glob("run_trial_*")}
    stopped = [(trial, step) for trial, step, pid in chaos.kills if str(pid) in failed_pids.get(trial, ())]
    retries = 0
    for run in runs:
        trial_id = run.data.tags["raysearch.trial_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        resumed_at = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")}
        at_kills = [step for killed, step in stopped if killed == trial_id] + [driver_kill[1].get(trial_id, 0)]
        # the killer reads a trial's last logged step right after its kill: one report the
        # process had sent may be logged after that
        problems = continuation_problems(steps, resumed_at, at_kills, EVAL_EVERY, STEPS, in_flight=1)
        assert not problems, (trial_id, problems, at_kills)
        retries += len(set(resumed_at.values()))

    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal")))
    study = optuna.load_study(study_name="chaos", storage=journal)
    assert len(study.trials) == TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.user_attrs["tune_trial_id"] for t in study.trials) == trial_ids

    known = known_checkpoints(results)
    for folder in (results / "tune").glob("run_trial_*"):
        trial_id = folder.name.removeprefix("run_trial_").split("_")[0]
        on_disk = {path.name for path in folder.glob("checkpoint_*")}
        assert len(on_disk) == KEEP and on_disk <= known[trial_id], (trial_id, sorted(on_disk), sorted(known[trial_id]))
    assert len(stopped) >= 2, f"too few kills stopped a trial: {chaos.kills}"
    print(f"chaos: {len(stopped)} of {len(chaos.kills)} trial-process kills stopped a trial; + 1 node lost + 1 "
          f"driver kill; all survived: {TRIALS} trials, {retries} continuations from a checkpoint, {elapsed:.0f} s")
