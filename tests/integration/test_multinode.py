"""A search on a three-node Ray cluster (on this machine), submitted as a Ray job the way
`raysearch launch` submits it: DDP trials span nodes, results land in shared storage."""
from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

import mlflow
import pytest
from ray.util.state import list_nodes
from typer.testing import CliRunner

from local_cluster import ROOT, TrialActors, dashboard_port, dashboard_url, experiment, local_cluster
from raysearch.cli import app
from raysearch.search.cluster import launch_plan

# slow (make test-slow and CI, not make test): its parts are checked faster in make test, DDP
# trials (test_ddp.py), trials placed on another node of a local cluster (test_autoscaling.py),
# the job submission `raysearch launch` builds (tests/unit/test_cluster.py); here together.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_search_submitted_as_a_job_runs_ddp_trials_across_nodes(tmp_path, tiny_model_dir, monkeypatch):
    shared = tmp_path / "shared"  # every node of this one-machine cluster sees it: stands for NFS/EFS
    shared.mkdir()  # a mounted shared filesystem exists before the search
    storage, mlflow_uri = f"file://{shared}", f"sqlite:///{shared}/mlflow.db"
    project = tmp_path / "project"  # the working dir the job uploads, as a checkout would be
    for package in ("raysearch", "trainables"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    # Each node has 1 CPU; a trial is a 1-CPU Tune function + 2 workers of 1 CPU: its two
    # DDP workers can only run on two different nodes.
    space = experiment(project / "search_spaces" / "multinode.yaml", tiny_model_dir,
                       resources={"workers_per_trial": 2, "cpus_per_worker": 1})

    with local_cluster(monkeypatch, head_cpus=1, worker_cpus=[1, 1]) as cluster:
        # Local-only results on a multi-node cluster: refused after connecting, nothing written.
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        refused = CliRunner().invoke(app, ["run", "--space", str(space), "--storage", str(tmp_path / "local"),
                                           "--mlflow-uri", f"sqlite:///{tmp_path}/local.db"])
        assert refused.exit_code == 2, refused.output
        assert "this Ray cluster has 3 nodes" in refused.output and "file:///mnt/shared" in refused.output
        assert not (tmp_path / "local").exists() and not (tmp_path / "local.db").exists()
        monkeypatch.delenv("RAY_ADDRESS")

        plan = launch_plan(ROOT / "cluster.yaml", space, [f"--storage={storage}", f"--mlflow-uri={mlflow_uri}"],
                           project, dashboard_port(cluster))
        log = tmp_path / "job.log"
        with log.open("w") as out, TrialActors(dashboard_url(cluster)) as actors:
            # `ray job submit` streams the job's logs until it ends
            code = subprocess.run(plan.submit, cwd=plan.working_dir, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=600).returncode
        output = log.read_text(errors="replace")
        assert code == 0, output[-6000:]
        assert "cluster-itest: leaderboard (2 trials)" in output, output[-6000:]

        nodes_by_group = defaultdict(set)
        for actor in actors.of("RayTrainWorker"):
            nodes_by_group[actor.placement_group_id].add(actor.node_id)
        assert len(nodes_by_group) == 2, (nodes_by_group, actors.errors[-3:])  # one worker group per trial
        assert all(len(nodes) == 2 for nodes in nodes_by_group.values()), nodes_by_group
        used = {actor.node_id for actor in actors.seen.values()}
        assert used == {node.node_id for node in list_nodes(dashboard_url(cluster))}  # all three nodes worked

    results = shared / "cluster-itest"
    assert (results / "optuna.journal").stat().st_size > 0
    assert any((results / "tune").glob("*/result.json"))
    assert len(list((results / "train").glob("train-*/checkpoint_*/adapter/adapter_config.json"))) == 2
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("cluster-itest").experiment_id])
    children = [r for r in runs if "raysearch.trial_id" in r.data.tags]
    assert [r.data.tags["raysearch.status"] for r in children] == ["completed", "completed"]
    for run in children:  # the driver read each adapter back from the shared storage (file:// URI)
        assert "adapter/adapter_config.json" in [a.path for a in client.list_artifacts(run.info.run_id, "adapter")]
