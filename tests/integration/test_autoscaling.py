"""`raysearch run` with RAY_ADDRESS on an autoscaling cluster whose head holds no CPU:
Ray's fake multi-node autoscaler must add a worker node for the trials, and the search finish."""
from __future__ import annotations

import time

import mlflow
import pytest
import ray
from ray.experimental.internal_kv import _internal_kv_get
from ray.util.state import list_nodes
from typer.testing import CliRunner

from local_cluster import TrialActors, dashboard_url, experiment, fake_autoscaling_config, free_port, local_cluster
from raysearch.cli import app
from raysearch.search.cluster import autoscaling_from_status

pytestmark = pytest.mark.integration


def wait_for_autoscaler(timeout_s: float = 60) -> None:
    """The monitor reports its first status a few seconds after the head starts; raysearch
    sees an autoscaler once that status names the cluster config's node types."""
    deadline = time.monotonic() + timeout_s
    while not autoscaling_from_status(_internal_kv_get("__autoscaling_status"), autoscaler_v2=False):
        assert time.monotonic() < deadline, "the autoscaler never reported its node types"
        time.sleep(1)


def test_autoscaler_adds_a_node_for_trials_the_head_cannot_hold(tmp_path, tiny_model_dir, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()  # a mounted shared filesystem exists before the search
    storage, mlflow_uri = f"file://{shared}", f"sqlite:///{shared}/mlflow.db"
    space = experiment(tmp_path / "autoscale.yaml", tiny_model_dir, resources={"workers_per_trial": 1, "cpus_per_worker": 1})
    gcs_port = free_port()
    config = fake_autoscaling_config(tmp_path / "fake.json", gcs_port, {
        "cpu2": {"resources": {"CPU": 2, "object_store_memory": 150 * 1024 * 1024}, "max_workers": 2},
    })
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")

    with local_cluster(monkeypatch, head_cpus=0, gcs_server_port=gcs_port, autoscaling_config=str(config)) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        wait_for_autoscaler()
        head = ray.get_runtime_context().get_node_id()
        ray.shutdown()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)

        # One node now, but an autoscaler: local-only results are refused all the same.
        refused = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(tmp_path / "local")])
        assert refused.exit_code == 2, refused.output
        assert "1 node and an autoscaler that adds more" in refused.output
        assert not (tmp_path / "local").exists()

        started = time.time()
        with TrialActors(dashboard_url(cluster)) as actors:
            result = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", storage,
                                              "--mlflow-uri", mlflow_uri])
        took = time.time() - started
        assert result.exit_code == 0, result.output
        # Not capped by the head's 0 CPUs: the fixed-cluster rule would have refused this search.
        assert "2 trials, 1 at a time" in result.output

        added = [node for node in list_nodes(dashboard_url(cluster), detail=True) if node.node_id != head]
        assert added, "the autoscaler added no node"
        seconds = min(node.start_time_ms for node in added) / 1000 - started
        print(f"\nautoscaler: first worker node up {seconds:.1f} s after `raysearch run` started; "
              f"{len(added)} node(s) added; search took {took:.0f} s")
        # 1-worker trials train inline: their Tune functions, on the added node, are the workers.
        assert actors.of("ImplicitFunc") and not actors.of("RayTrainWorker")
        assert all(actor.node_id != head for actor in actors.seen.values())  # the head has no CPU for them

    results = shared / "cluster-itest"
    assert (results / "optuna.journal").stat().st_size > 0 and any((results / "tune").glob("*/result.json"))
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("cluster-itest").experiment_id])
    assert sorted(r.data.tags.get("raysearch.status", "") for r in runs if "raysearch.trial_id" in r.data.tags) == [
        "completed", "completed"]
