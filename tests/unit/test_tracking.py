from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Checkpoint

from raysearch.records.report_page import pareto_figure
from raysearch.records.plots import plot_groups, plottable
from raysearch.records.mlflow_reader import find_trial, leaderboard, search_record
from raysearch.records.mlflow_writer import MlflowTracking

OBJECTIVES = {"val_accuracy": "max", "adapter_params": "min"}
EXPERIMENT = "unit-search"


@dataclass
class FakeTrial:
    """The attributes of ray.tune.experiment.Trial the callback reads."""

    trial_id: str
    config: dict
    last_result: dict = field(default_factory=dict)
    checkpoint: Any = None
    status: str = "RUNNING"
    error_file: str | None = None

    def get_error(self) -> str | None:
        return None


def _result(step: int, accuracy: float, params: int, *, final: bool = False, **extra: Any) -> dict:
    return {
        "step": step,
        "epoch": step / 10,
        "val_loss": 1.0 - accuracy,
        "val_accuracy": accuracy,
        "adapter_params": params,
        "train_loss": 0.5,
        "lr": 1e-3,
        "final": final,
        "diverged": False,
        "training_iteration": step // 10,
        **extra,
    }


def _report(cb: MlflowTracking, trial: FakeTrial, results: list[dict]) -> None:
    for result in results:
        trial.last_result = result
        cb.on_trial_result(0, [], trial, result)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables created once: migrations take seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def _fresh_uri(empty_store: Path, directory: Path) -> str:
    shutil.copy(empty_store, directory / "mlflow.db")
    return f"sqlite:///{directory}/mlflow.db"


def _new_callback(uri: str) -> MlflowTracking:
    cb = MlflowTracking(
        uri,
        EXPERIMENT,
        OBJECTIVES,
        {"model": "builtin:minilm", "tracking.mlflow_uri": "postgresql://me:hunter2@db/mlflow"},
    )
    cb.setup()
    return cb


@pytest.fixture
def uri(empty_store: Path, tmp_path: Path) -> str:
    return _fresh_uri(empty_store, tmp_path)


@pytest.fixture
def callback(uri: str) -> MlflowTracking:
    return _new_callback(uri)


@pytest.fixture(scope="module")
def finished(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowTracking, str, Path]:
    """One whole fake search, shared by the tests that only read its outcome."""
    directory = tmp_path_factory.mktemp("search")
    uri = _fresh_uri(empty_store, directory)
    cb = _new_callback(uri)
    _run_search(cb, directory)
    return cb, uri, directory


def _runs_by_trial(client: MlflowClient, cb: MlflowTracking) -> dict[str, Any]:
    runs = client.search_runs([cb.experiment_id], f"tags.\"mlflow.parentRunId\" = '{cb.parent_run_id}'")
    by_trial: dict[str, Any] = {}
    for run in runs:
        trial_id = run.data.tags["raysearch.trial_id"]
        assert trial_id not in by_trial, f"duplicate run for {trial_id}"
        by_trial[trial_id] = run
    return by_trial


def _adapter_checkpoint(tmp_path: Path) -> Checkpoint:
    directory = tmp_path / "ckpt"
    (directory / "adapter").mkdir(parents=True)
    (directory / "adapter" / "adapter_config.json").write_text("{}")
    (directory / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return Checkpoint.from_directory(str(directory))


def _run_search(cb: MlflowTracking, tmp_path: Path) -> dict[str, FakeTrial]:
    trials = {
        "t0": FakeTrial("t0", {"variant": "lora", "rank": 8, "lr": 1e-3}),
        "t1": FakeTrial("t1", {"variant": "dora", "rank": 4, "lr": 2e-3}),
        "t2": FakeTrial("t2", {"variant": "lora", "rank": 64, "lr": 3e-3}),
        "t3": FakeTrial("t3", {"variant": "sora", "rank": 16, "lr": 1e-4, "sora_lambda": 0.01}),
        "t4": FakeTrial("t4", {"variant": "lora", "rank": 32, "lr": 1e-4}),
    }
    for trial in trials.values():
        cb.on_trial_start(0, [], trial)
    cb.on_trial_start(0, [], trials["t0"])  # a second start must not duplicate the run

    # t0 completes and is the most accurate; its checkpoint holds an adapter.
    _report(cb, trials["t0"], [_result(10, 0.7, 1000), _result(20, 0.9, 1000, final=True)])
    trials["t0"].checkpoint = _adapter_checkpoint(tmp_path)
    cb.on_trial_complete(0, [], trials["t0"])
    # t1 is stopped by the scheduler after one evaluation: cheap, but never on the front (partial training).
    _report(cb, trials["t1"], [_result(10, 0.8, 200, train_loss=math.nan)])
    cb.on_trial_complete(0, [], trials["t1"])
    # t2 diverges: no validation metrics.
    _report(cb, trials["t2"], [{"diverged": True, "step": 5, "adapter_params": 8000, "final": True, "training_iteration": 1}])
    cb.on_trial_complete(0, [], trials["t2"])
    # t3 raises.
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n\n")
    trials["t3"].error_file = str(error_file)
    _report(cb, trials["t3"], [_result(10, 0.95, 10)])
    cb.on_trial_error(0, [], trials["t3"])
    # t4 completes, less accurate than t0 with more parameters: dominated.
    _report(cb, trials["t4"], [_result(10, 0.8, 5000, final=True)])
    cb.on_trial_complete(0, [], trials["t4"])

    cb.on_experiment_end(list(trials.values()))
    cb.close("FINISHED")
    return trials


def test_search_is_mirrored_into_mlflow(finished: tuple[MlflowTracking, str, Path]) -> None:
    """Statuses, params and metrics per trial; the front is made of completed trials only (t1, stopped
    early, is off it though no completed trial dominates it)."""
    callback, uri, _ = finished
    client = MlflowClient(tracking_uri=uri)
    runs = _runs_by_trial(client, callback)
    assert sorted(runs) == ["t0", "t1", "t2", "t3", "t4"]

    status = {t: r.data.tags["raysearch.status"] for t, r in runs.items()}
    assert status == {"t0": "completed", "t1": "early_stopped", "t2": "diverged", "t3": "error", "t4": "completed"}
    mlflow_status = {t: r.info.status for t, r in runs.items()}
    assert mlflow_status == {"t0": "FINISHED", "t1": "FINISHED", "t2": "FAILED", "t3": "FAILED", "t4": "FINISHED"}
    pareto = {t: r.data.tags["raysearch.pareto"] for t, r in runs.items()}
    # t3 has the best numbers but errored; t1 was stopped early; t4 is dominated by t0.
    assert pareto == {"t0": "true", "t1": "false", "t2": "false", "t3": "false", "t4": "false"}
    assert runs["t3"].data.tags["raysearch.error"] == "RuntimeError: CUDA out of memory"

    assert runs["t1"].data.params == {"variant": "dora", "rank": "4", "lr": "0.002"}
    history = client.get_metric_history(runs["t0"].info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(10, 0.7), (20, 0.9)]
    assert "train_loss" not in runs["t1"].data.metrics  # NaN is never logged
    assert set(runs["t2"].data.metrics) == {"adapter_params"}
    assert client.get_metric_history(runs["t2"].info.run_id, "adapter_params")[0].step == 5

    adapter = {Path(a.path).name for a in client.list_artifacts(runs["t0"].info.run_id, "adapter")}
    assert adapter == {"adapter_config.json", "adapter_model.safetensors"}


def test_parent_run_has_front_artifacts_and_summary(
    finished: tuple[MlflowTracking, str, Path], tmp_path: Path
) -> None:
    callback, uri, _ = finished
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(callback.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["raysearch.role"] == "search"
    assert parent.data.metrics == {"best_val_accuracy": 0.9, "n_trials": 5.0, "pareto_size": 1.0}
    assert "hunter2" not in str(parent.data.params)
    assert parent.data.params["tracking.mlflow_uri"] == "postgresql://***@db/mlflow"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"pareto.csv", "pareto.png", "pareto.html"}

    local = client.download_artifacts(parent.info.run_id, "pareto.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert [(r["trial_id"], r["status"], r["pareto"]) for r in rows] == [
        ("t0", "completed", "True"),
        ("t1", "early_stopped", "False"),  # listed with its last values, never on the front
        ("t4", "completed", "False"),
    ]
    assert rows[0]["variant"] == "lora" and rows[0]["rank"] == "8"


def test_no_run_left_running(finished: tuple[MlflowTracking, str, Path]) -> None:
    callback, uri, _ = finished
    client = MlflowClient(tracking_uri=uri)
    assert not client.search_runs([callback.experiment_id], "attributes.status = 'RUNNING'")


def test_close_marks_unfinished_trials_interrupted_and_is_idempotent(callback: MlflowTracking, uri: str) -> None:
    trial = FakeTrial("t9", {"variant": "lora", "rank": 8})
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, [_result(10, 0.5, 100)])
    callback.close("KILLED")
    callback.close("KILLED")
    client = MlflowClient(tracking_uri=uri)
    run = _runs_by_trial(client, callback)["t9"]
    # Ctrl-C is not the trial's error: resume continues it (the summary says "unfinished")
    assert run.info.status == "KILLED" and run.data.tags["raysearch.status"] == "interrupted"
    assert "raysearch resume continues it" in run.data.tags["raysearch.reason"]
    assert client.get_run(callback.parent_run_id).info.status == "KILLED"


def test_resume_reuses_parent_and_child_runs(callback: MlflowTracking, uri: str) -> None:
    trial = FakeTrial("t0", {"variant": "lora", "rank": 8})
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, [_result(10, 0.5, 100)])
    callback.close("KILLED")  # Ctrl-C

    resumed = MlflowTracking(uri, EXPERIMENT, OBJECTIVES, {}, parent_run_id=callback.parent_run_id)
    resumed.setup()
    resumed.on_trial_start(0, [], trial)
    _report(resumed, trial, [_result(20, 0.6, 100, final=True)])
    resumed.on_trial_complete(0, [], trial)
    resumed.close("FINISHED")

    client = MlflowClient(tracking_uri=uri)
    run = _runs_by_trial(client, callback)["t0"]
    assert run.info.status == "FINISHED" and run.data.tags["raysearch.status"] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [10, 20]
    assert len(client.search_runs([callback.experiment_id], "tags.\"raysearch.role\" = 'search'")) == 1


def test_a_restarted_trial_logs_each_step_once(callback: MlflowTracking, uri: str) -> None:
    """Resumed from a checkpoint older than its run's last logged step (the driver died after
    logging steps 10-30, but Tune's saved state knew only the step-10 checkpoint): the
    retrained steps 20-30 are not logged again; the steps after them are."""
    trial = FakeTrial("t0", {"variant": "lora", "rank": 8})
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, [_result(10, 0.5, 100), _result(20, 0.6, 100), _result(30, 0.7, 100)])
    callback.close("KILLED")

    resumed = MlflowTracking(uri, EXPERIMENT, OBJECTIVES, {}, parent_run_id=callback.parent_run_id)
    resumed.setup()
    resumed.on_trial_start(0, [], trial)
    _report(resumed, trial, [_result(step, 0.1 * step / 10 + 0.4, 100, resumed_from_step=10)
                             for step in (20, 30)] + [_result(40, 0.8, 100, final=True, resumed_from_step=10)])
    resumed.on_trial_complete(0, [], trial)

    client = MlflowClient(tracking_uri=uri)
    run = _runs_by_trial(client, callback)["t0"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [10, 20, 30, 40]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "resumed_from_step")] == [40]
    assert run.data.tags["raysearch.status"] == "completed"


def test_leaderboard_sorted_and_pareto_filter(finished: tuple[MlflowTracking, str, Path]) -> None:
    _, uri, _ = finished
    rows = leaderboard(uri, EXPERIMENT)
    assert [r["trial_id"] for r in rows[:3]] == ["t0", "t1", "t4"]  # 0.8 tie broken by fewer params
    assert [r["trial_id"] for r in rows[3:]] == ["t3", "t2"]  # unfinished last, t3's 0.95 despite
    assert rows[0]["val_accuracy"] == 0.9 and rows[0]["params"]["variant"] == "lora"
    assert [r["trial_id"] for r in leaderboard(uri, EXPERIMENT, pareto_only=True)] == ["t0"]  # t1 stopped early
    assert len(leaderboard(uri, EXPERIMENT, top=2)) == 2


def test_a_stopped_trial_never_makes_the_front_even_when_it_dominates(
    callback: MlflowTracking, uri: str, tmp_path: Path
) -> None:
    """Issue 18: a trial stopped early by the scheduler has partial-training numbers. Here they beat every
    completed trial (more accurate, fewer parameters), yet the front is the completed trials', which the
    stopped one would otherwise dominate; pareto.csv, the plots, the report and `--best` agree."""
    trials = {
        "c1": FakeTrial("c1", {"variant": "lora", "rank": 16}),
        "c2": FakeTrial("c2", {"variant": "lora", "rank": 8}),
        "s": FakeTrial("s", {"variant": "dora", "rank": 1}),
    }
    for trial in trials.values():
        callback.on_trial_start(0, [], trial)
    _report(callback, trials["c1"], [_result(10, 0.7, 2000), _result(20, 0.85, 2000, final=True)])
    callback.on_trial_complete(0, [], trials["c1"])
    _report(callback, trials["c2"], [_result(10, 0.6, 1000), _result(20, 0.8, 1000, final=True)])
    callback.on_trial_complete(0, [], trials["c2"])
    _report(callback, trials["s"], [_result(10, 0.95, 100)])  # its last evaluation before the scheduler stopped it
    callback.on_trial_complete(0, [], trials["s"])
    callback.on_experiment_end(list(trials.values()))

    client = MlflowClient(tracking_uri=uri)
    runs = _runs_by_trial(client, callback)
    assert runs["s"].data.tags["raysearch.status"] == "early_stopped"
    assert {t: r.data.tags["raysearch.pareto"] for t, r in runs.items()} == {"c1": "true", "c2": "true", "s": "false"}
    assert {r["trial_id"] for r in leaderboard(uri, EXPERIMENT, pareto_only=True)} == {"c1", "c2"}
    parent = client.get_run(callback.parent_run_id)
    assert parent.data.metrics["pareto_size"] == 2.0 and parent.data.metrics["best_val_accuracy"] == 0.85

    local = client.download_artifacts(parent.info.run_id, "pareto.csv", str(tmp_path))
    rows = {r["trial_id"]: (r["status"], r["pareto"]) for r in csv.DictReader(io.StringIO(Path(local).read_text()))}
    assert rows == {"c1": ("completed", "True"), "c2": ("completed", "True"), "s": ("early_stopped", "False")}

    # pareto.png / pareto.html: the stopped trial has its own legend entry, the front line only finished points
    groups = plot_groups(plottable(leaderboard(uri, EXPERIMENT), "adapter_params", "val_accuracy"))
    assert {label: [p["trial_id"] for p in group] for label, group in groups.items()} == {
        "finished trials": [], "stopped early (partial training)": ["s"], "Pareto front": ["c2", "c1"]}
    html = Path(client.download_artifacts(parent.info.run_id, "pareto.html", str(tmp_path))).read_text()
    assert '"name":"stopped early (partial training)"' in html and '"name":"Pareto front"' in html

    figure = pareto_figure(search_record(uri, EXPERIMENT), "http://127.0.0.1:5000")
    traces = {trace.name: trace for trace in figure.data if trace.name}
    assert list(traces["stopped early (partial training)"].x) == [100]
    assert traces["stopped early (partial training)"].marker.symbol == "x"
    assert sorted(traces["Pareto front (finished)"].x) == [1000, 2000]
    assert find_trial(uri, EXPERIMENT)["trial_id"] == "c1"  # export/evaluate --best: the best completed trial


def test_leaderboard_unknown_experiment(uri: str) -> None:
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        leaderboard(uri, "nope")



def test_callback_pickles_without_its_client(callback: MlflowTracking) -> None:
    # Tune pickles the run config, callbacks included, for Tuner.restore.
    import pickle

    copy = pickle.loads(pickle.dumps(callback))
    assert copy.parent_run_id == callback.parent_run_id
    assert copy.ensure_parent() == callback.parent_run_id


def test_setup_opens_the_parent_in_the_background(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`setup` returns while the parent run is still being opened (a new store's migrations
    take seconds); the first hook that needs it waits, and exactly one parent is made."""
    import threading

    opened = threading.Event()
    ensure = MlflowTracking._ensure_parent

    def slow_ensure(self: MlflowTracking) -> str:
        assert opened.wait(30)
        return ensure(self)

    monkeypatch.setattr(MlflowTracking, "_ensure_parent", slow_ensure)
    cb = _new_callback(uri)  # calls setup()
    assert cb.parent_run_id is None and not cb._opening.done()
    threading.Timer(0.5, opened.set).start()
    trial = FakeTrial("t0", {"variant": "lora", "rank": 8})
    cb.on_trial_start(0, [], trial)
    client = MlflowClient(tracking_uri=uri)
    run = _runs_by_trial(client, cb)["t0"]
    assert run.data.tags["mlflow.parentRunId"] == cb.parent_run_id
    assert len(client.search_runs([cb.experiment_id], "tags.\"raysearch.role\" = 'search'")) == 1


def test_close_right_after_setup_leaves_no_parent_running(uri: str) -> None:
    cb = _new_callback(uri)
    cb.close("KILLED")  # Ctrl-C before any trial started
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(cb.parent_run_id).info.status == "KILLED"


def test_an_error_opening_the_parent_is_raised_by_the_next_hook(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: MlflowTracking) -> str:
        raise RuntimeError("the tracking store is gone")

    monkeypatch.setattr(MlflowTracking, "_ensure_parent", broken)
    cb = _new_callback(uri)
    with pytest.raises(RuntimeError, match="tracking store is gone"):
        cb.on_trial_start(0, [], FakeTrial("t0", {"variant": "lora", "rank": 8}))


def test_a_trial_restarted_from_the_start_logs_each_step_once(callback: MlflowTracking, uri: str) -> None:
    """An inline trial's process killed before the driver registered its first checkpoint:
    Tune starts it again with no checkpoint, so it reports steps 10 and 20 again (with no
    `resumed_from_step`). Its run keeps one value per step."""
    trial = FakeTrial("t0", {"variant": "lora", "rank": 8})
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, [_result(10, 0.5, 100), _result(20, 0.6, 100)])
    callback.on_trial_start(0, [], trial)  # Tune's retry
    _report(callback, trial, [_result(10, 0.5, 100), _result(20, 0.6, 100), _result(30, 0.7, 100, final=True)])
    callback.on_trial_complete(0, [], trial)

    client = MlflowClient(tracking_uri=uri)
    run = _runs_by_trial(client, callback)["t0"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [10, 20, 30]


def test_mlflow_opens_on_the_runs_and_names_them_apart(callback: MlflowTracking, uri: str) -> None:
    trial = FakeTrial("t9", {"variant": "dora", "rank": 8})
    callback.on_trial_start(0, [], trial)
    client = MlflowClient(tracking_uri=uri)
    # MLflow 3 shows an experiment of unknown kind as GenAI (traces); this one opens on its runs
    assert client.get_experiment(callback.experiment_id).tags["mlflow.experimentKind"] == "finetuning"
    assert _runs_by_trial(client, callback)["t9"].info.run_name == "dora r8 t9"
    callback.search_config["adapter.variant"] = "lora"  # fixed by the experiment, not sampled
    assert callback.run_name({"rank": 4}, "t1") == "lora r4 t1"


@pytest.mark.parametrize(("exponent", "rule"), [(1.0, "alpha/r"), (0.5, "alpha/sqrt(r)"), (0.75, "alpha/r^0.75")])
def test_every_run_records_the_scaling_its_variant_applied(callback: MlflowTracking, uri: str, exponent, rule) -> None:
    trial = FakeTrial("t3", {"variant": "rora", "rank": 8})  # RoRA samples no `scaling`: it implies alpha/sqrt(r)
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, [_result(10, 0.5, 100, scaling_exponent=exponent, effective_loraplus_ratio=16.0),
                              _result(20, 0.6, 100, scaling_exponent=exponent, effective_loraplus_ratio=16.0)])
    params = _runs_by_trial(MlflowClient(tracking_uri=uri), callback)["t3"].data.params
    assert params["scaling_rule"] == rule and params["effective_loraplus_ratio"] == "16"


def test_a_kill_while_a_resumed_driver_closes_an_ended_trial_is_repaired_by_the_next(uri: str) -> None:
    """Issue 29, part 6: a trial that ended just before a kill is closed by the resumed driver
    (`on_step_begin`): status tag, adapter, then FINISHED. Killed between the tag and FINISHED,
    the run was left KILLED with the tag `completed`, which the next driver took for closed;
    the one kill-test run that ended with a run not FINISHED. The next driver repairs it."""
    class Killed(Exception):
        pass

    def driver() -> MlflowTracking:
        cb = MlflowTracking(uri, EXPERIMENT, OBJECTIVES, {}, search_id="s1")
        cb.ensure_parent()  # finds the search's parent run and sweeps what the last driver left RUNNING
        return cb

    first = driver()
    trial = FakeTrial("t0", {"variant": "lora", "rank": 8})
    first.on_trial_start(0, [], trial)
    _report(first, trial, [_result(20, 0.6, 100, final=True)])  # ended; the driver dies before closing it

    trial.status = "TERMINATED"
    second = driver()
    second._log_adapter = lambda *args: (_ for _ in ()).throw(Killed())  # killed mid-close
    with pytest.raises(Killed):
        second.on_step_begin(0, [trial])
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([first.experiment_id], "tags.\"raysearch.trial_id\" = 't0'")
    assert run.data.tags["raysearch.status"] == "completed" and run.info.status == "KILLED"

    third = driver()
    third.on_step_begin(0, [trial])
    (run,) = client.search_runs([first.experiment_id], "tags.\"raysearch.trial_id\" = 't0'")
    assert run.info.status == "FINISHED" and run.data.tags["raysearch.status"] == "completed"
