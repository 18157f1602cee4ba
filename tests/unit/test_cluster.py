"""Cluster configs, `raysearch launch`, and the shared-storage and concurrency rules (no Ray started)."""
from __future__ import annotations

import copy
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raysearch.search import storage
from raysearch.cli import app
from raysearch.search.cluster import (
    ClusterInfo,
    ClusterSetupError,
    LaunchPlan,
    autoscaling_from_status,
    check_address,
    execute,
    launch_plan,
    validate_cluster_config,
)
from raysearch.experiment.spec import load_spec, spec_from_dict
from raysearch.search.resources import cluster_concurrency, function_resources, trial_demand

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SPACE = ROOT / "search_spaces" / "rank_scaling.yaml"
S3, MLFLOW = "s3://my-bucket/raysearch", "http://mlflow.internal:5000"


# --------------------------------------------------------------------------- cluster.yaml


def test_shipped_cluster_yaml_passes_rays_own_validation():
    config = validate_cluster_config(CLUSTER_YAML)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(node["min_workers"] == 0 and node["resources"]["GPU"] >= 1 for node in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert config["idle_timeout_minutes"] > 0
    assert any("/home/ubuntu/raysearch" in command for command in config["setup_commands"])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])  # loopback only


def broken_copy(tmp_path: Path, change) -> Path:
    config = copy.deepcopy(yaml.safe_load(CLUSTER_YAML.read_text()))
    change(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes")), "'idle_timeout_minute' was unexpected"),
        (lambda c: c["available_node_types"]["gpu_1x"].update(max_worker=3), "'max_worker' was unexpected"),
        (lambda c: c.update(head_node_type="cpu_head"), "`head_node_type` must be one of `available_node_types`"),
    ],
    ids=["typo-top-level", "typo-node-type", "unknown-head-type"],
)
def test_broken_cluster_yaml_is_rejected(tmp_path, change, message):
    with pytest.raises(ClusterSetupError, match="broken.yaml") as error:
        validate_cluster_config(broken_copy(tmp_path, change))
    assert message in str(error.value)


# --------------------------------------------------------------------------- raysearch launch


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a command ran: {args}")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


def test_launch_dry_run_prints_the_exact_commands_and_runs_nothing(no_subprocess, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["launch", "--cluster", "cluster.yaml", "--space", "search_spaces/rank_scaling.yaml",
                                      "--storage", S3, "--mlflow-uri", MLFLOW, "--set", "search.num_trials=8",
                                      "--set", "search.space.rank={choice: [8, 16]}", "--dry-run"])
    assert result.exit_code == 0, result.output
    ray = str(Path(sys.executable).parent / "ray")
    cluster = str(CLUSTER_YAML)
    assert result.output.splitlines() == [
        f"cd {ROOT}",
        f"{ray} up -y --no-restart {cluster}",
        f"{ray} dashboard --port 8265 {cluster} &",
        f"{ray} job submit --address http://127.0.0.1:8265 --working-dir . -- python -m raysearch.cli run "
        "--space search_spaces/rank_scaling.yaml --set=search.num_trials=8 "
        "'--set=search.space.rank={choice: [8, 16]}' "
        f"--mlflow-uri={MLFLOW} --storage={S3}",
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--mlflow-uri", MLFLOW], "storage = './raysearch_results' is a path on this node's disk"),
        (["--storage", S3], "tracking.mlflow_uri = 'sqlite:///mlflow.db' is a file on the driver's disk"),
        (["--storage", "/mnt/nfs/results", "--mlflow-uri", "sqlite:////mnt/nfs/results/mlflow.db"], "file:///mnt/shared"),
    ],
    ids=["local-storage", "local-mlflow", "plain-path-even-if-shared"],
)
def test_launch_refuses_local_only_storage_before_anything_runs(no_subprocess, monkeypatch, options, message):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["launch", "--cluster", "cluster.yaml", "--space", str(SPACE), *options])
    assert result.exit_code == 2
    assert message in result.output


def test_launch_rejects_a_broken_cluster_file_and_a_space_outside_the_working_dir(no_subprocess, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    shared = ["--storage", S3, "--mlflow-uri", MLFLOW]
    bad = broken_copy(tmp_path, lambda c: c.update(head_node_type="nope"))
    result = CliRunner().invoke(app, ["launch", "--cluster", str(bad), "--space", str(SPACE), *shared])
    assert result.exit_code == 2 and "head_node_type" in result.output
    outside = tmp_path / "x.yaml"
    outside.write_text(SPACE.read_text())
    result = CliRunner().invoke(app, ["launch", "--cluster", "cluster.yaml", "--space", str(outside), *shared])
    assert result.exit_code == 2 and "outside the working dir" in result.output


def test_launch_refuses_values_the_head_shell_would_expand(tmp_path):
    with pytest.raises(ClusterSetupError, match="unquoted"):
        launch_plan(CLUSTER_YAML, SPACE, ["--set=train.lr=$LR"], ROOT)


class FakeProcess:
    def __init__(self, log, command, code):
        self.log, self.command, self.returncode = log, command, None
        self.code = code

    def wait(self, timeout=None):
        self.returncode = self.code
        return self.code

    def poll(self):
        return None

    def terminate(self):
        self.log.append(("terminate", self.command[1]))


def test_execute_runs_up_tunnel_submit_in_order_and_closes_the_tunnel(monkeypatch):
    log = []
    with socket.socket() as probe:  # a port free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plan = LaunchPlan(ROOT, ["ray", "up"], ["ray", "dashboard"], ["ray", "job"], f"http://127.0.0.1:{port}")
    monkeypatch.setattr("raysearch.search.cluster.wait_for_dashboard", lambda url, tunnel: log.append(("wait", url)))

    def popen(command, **kwargs):
        log.append(("start", command[1]))
        return FakeProcess(log, command, 3 if command[1] == "job" else 0)

    assert execute(plan, lambda line: None, popen=popen) == 3  # the job's exit code
    assert log == [("start", "up"), ("start", "dashboard"), ("wait", f"http://127.0.0.1:{port}"), ("start", "job"),
                   ("terminate", "dashboard")]

    # A busy local port (say a local Ray dashboard) would receive the job: refused before anything runs.
    log.clear()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plan.dashboard = f"http://127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(ClusterSetupError, match="--dashboard-port"):
            execute(plan, lambda line: None, popen=popen)
    assert log == []


@pytest.mark.parametrize("job_exit_code", [0, 3])
def test_launch_runs_the_plan_then_says_where_results_are(monkeypatch, job_exit_code):
    monkeypatch.chdir(ROOT)
    ran = []
    monkeypatch.setattr("raysearch.search.cluster.execute", lambda plan, echo: ran.append(plan) or job_exit_code)
    result = CliRunner().invoke(app, ["launch", "--cluster", "cluster.yaml", "--space", str(SPACE),
                                      "--storage", S3, "--mlflow-uri", MLFLOW])
    assert result.exit_code == job_exit_code, result.output
    assert len(ran) == 1 and ran[0].entrypoint[:4] == ["python", "-m", "raysearch.cli", "run"]
    assert f"results:  {S3}/rank-scaling" in result.output
    assert f"MLflow UI: {MLFLOW}" in result.output


# --------------------------------------------------------------------------- storage


def test_storage_kinds_and_uri_joins():
    assert storage.kind("./results") == storage.LOCAL
    assert storage.kind("file:///mnt/efs/r") == storage.SHARED_FS
    assert storage.kind("s3://b/p") == storage.kind("gs://b/p") == storage.OBJECT_STORE
    assert storage.join("s3://b/p/", "name", "train") == "s3://b/p/name/train"
    assert storage.join("file:///mnt/r", "train") == "file:///mnt/r/train"
    assert storage.local_path("file:///mnt/efs/r") == Path("/mnt/efs/r")
    assert storage.local_path("s3://b/p") is None
    with pytest.raises(OSError, match="Unrecognized filesystem"):  # reported by preflight as "cannot read"
        storage.exists("nosuch://b/p")


def test_optuna_journal_location(tmp_path, monkeypatch):
    assert storage.journal_file(str(tmp_path / "exp"), "exp") == tmp_path / "exp" / "optuna.journal"
    assert storage.journal_file(f"file://{tmp_path}/exp", "exp") == tmp_path / "exp" / "optuna.journal"
    monkeypatch.setenv("RAYSEARCH_JOURNAL_DIR", str(tmp_path / "journals"))
    assert storage.journal_file("s3://b/p/exp", "exp") == tmp_path / "journals" / "exp" / "optuna.journal"


@pytest.mark.parametrize(
    "location, mlflow_uri, problems",
    [
        ("s3://b/p", "http://mlflow:5000", 0),
        ("gs://b/p", "postgresql://user@db/mlflow", 0),
        ("file:///mnt/efs/r", "sqlite:////mnt/efs/r/mlflow.db", 0),
        ("file:///mnt/efs/r", "sqlite:////home/me/mlflow.db", 1),
        ("s3://b/p", "sqlite:///mlflow.db", 1),
        ("./raysearch_results", "http://mlflow:5000", 1),
        ("/mnt/efs/r", "file:///mnt/efs/r/mlruns", 2),
    ],
)
def test_multi_node_storage_rules(location, mlflow_uri, problems):
    assert len(storage.multi_node_problems(location, mlflow_uri)) == problems


def test_mlflow_file_stores_are_told_apart_from_servers():
    assert storage.mlflow_file("sqlite:///mlflow.db") == Path("mlflow.db")
    assert storage.mlflow_file("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert storage.mlflow_file("./mlruns") == Path("mlruns")
    assert storage.mlflow_file("https://mlflow.example.com") is None
    assert storage.mlflow_file("databricks") is None


# --------------------------------------------------------------------------- joining a cluster


def status(*node_types: str, pending: dict | None = None) -> str:
    mapping = {f"ip{i}": name for i, name in enumerate(node_types)}
    return json.dumps({"autoscaler_report": {"node_type_mapping": mapping, "pending_launches": pending or {}}})


def test_autoscaler_detection():
    assert autoscaling_from_status(None, autoscaler_v2=True)  # v2 only runs with a cluster config
    assert not autoscaling_from_status(None, autoscaler_v2=False)
    assert not autoscaling_from_status(status("node_ab12", "node_cd34"), autoscaler_v2=False)  # read-only
    assert autoscaling_from_status(status("ray.head.default"), autoscaler_v2=False)
    assert autoscaling_from_status(status("head", "gpu_1x"), autoscaler_v2=False)
    assert not autoscaling_from_status("not json", autoscaler_v2=False)


def spec_with(resources: dict, max_concurrent: int = 4):
    return spec_from_dict({"search": {"max_concurrent": max_concurrent, "space": {"rank": {"choice": [4, 8]}}},
                           "resources": resources})


def test_concurrency_on_a_fixed_cluster_is_capped_by_its_cpus_and_gpus():
    spec = spec_with({"workers_per_trial": 2, "cpus_per_worker": 1, "gpus_per_worker": 1})
    assert cluster_concurrency(spec, ClusterInfo(2, {"CPU": 64, "GPU": 4}, autoscaling=False)) == 2
    assert cluster_concurrency(spec, ClusterInfo(2, {"CPU": 5, "GPU": 8}, autoscaling=False)) == 1  # 3 CPUs a trial
    with pytest.raises(ClusterSetupError, match="a trial needs 3 CPU, 2 GPU"):
        cluster_concurrency(spec, ClusterInfo(1, {"CPU": 16}, autoscaling=False))


def test_an_inline_trial_holds_its_workers_resources_and_no_more():
    inline = spec_with({"workers_per_trial": 1, "cpus_per_worker": 2, "gpus_per_worker": 1})
    assert inline.resources.inline
    assert function_resources(inline) == {"cpu": 2, "gpu": 1}  # the Tune function is the worker
    assert trial_demand(inline) == {"CPU": 2, "GPU": 1}
    as_train_run = spec_with({"workers_per_trial": 1, "cpus_per_worker": 2, "gpus_per_worker": 1,
                              "inline_single_worker": False})
    assert function_resources(as_train_run) == {"cpu": 1}  # it only waits on TorchTrainer.fit()
    assert trial_demand(as_train_run) == {"CPU": 3, "GPU": 1}
    cluster = ClusterInfo(1, {"CPU": 5, "GPU": 2}, autoscaling=False)
    assert cluster_concurrency(inline, cluster) == 2 and cluster_concurrency(as_train_run, cluster) == 1
    assert not spec_with({"workers_per_trial": 2}).resources.inline  # 2+ workers: always Ray Train


def test_concurrency_on_an_autoscaling_cluster_is_not_capped_by_its_current_size():
    spec = spec_with({"workers_per_trial": 4, "gpus_per_worker": 1})
    head_only = ClusterInfo(1, {"CPU": 0}, autoscaling=True)
    assert head_only.multi_node
    assert cluster_concurrency(spec, head_only) == 4


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "ray://head:10001"])
def test_addresses_raysearch_cannot_drive_are_refused(address):
    with pytest.raises(ClusterSetupError, match="raysearch launch"):
        check_address(address)
    check_address("10.0.0.5:6379")
    check_address("auto")


# --------------------------------------------------------------------------- Kubernetes


def test_kuberay_rayjob_runs_a_shipped_experiment_on_shared_storage():
    manifest = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    words = shlex.split(manifest["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "raysearch.cli", "run"]
    options = dict(zip(words[4::2], words[5::2]))
    space = ROOT / Path(options["--space"]).relative_to("/home/ray/raysearch")
    spec = load_spec(space, [options["--set"]], storage=options["--storage"], mlflow_uri=options["--mlflow-uri"])
    assert spec.resources.gpus_per_worker == 1
    assert storage.multi_node_problems(spec.storage, spec.tracking.mlflow_uri) == []
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert all(group["minReplicas"] == 0 for group in cluster["workerGroupSpecs"])
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert "WORKDIR /home/ray/raysearch" in dockerfile and "COPY --chown=ray:users search_spaces" in dockerfile


def test_launch_never_prints_credentials_it_passes_on(monkeypatch):
    monkeypatch.chdir(ROOT)
    secret_uri = "https://alice:hunter2@mlflow.example.com"
    ran = []

    def execute(plan, echo):
        ran.append(plan)
        for line in plan.lines():
            echo(line)
        return 0

    monkeypatch.setattr("raysearch.search.cluster.execute", execute)
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["launch", "--cluster", "cluster.yaml", "--space", str(SPACE),
                                          "--storage", S3, "--mlflow-uri", secret_uri, *extra])
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output and "https://***@mlflow.example.com" in result.output
    assert f"--mlflow-uri={secret_uri}" in ran[0].submit  # the job itself gets the real URI
