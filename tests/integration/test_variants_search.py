"""search_spaces/variants.yaml end to end: every variant trains, none errors, and the
Pareto front is built on live parameter counts (pruned/reallocated ranks excluded)."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from raysearch.cli import app
from trainables.adapters import ADAPTERS

pytestmark = pytest.mark.integration

SPACE = Path(__file__).parents[2] / "search_spaces" / "variants.yaml"
ADAPTIVE = {"gora", "adalora", "sora", "salora", "alora_alloc"}


def test_variants_space_runs_every_variant(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root ./mlruns is relative to the working dir
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    small = ["model=" + str(tiny_model_dir), "task.max_length=24", "task.max_train_examples=96",
             "task.max_eval_examples=48", "train.batch_size=8", "train.epochs=1", "train.eval_every_steps=3",
             "adapter.gora_batches=4", "adapter.sora_lambda=0.5"]
    args = ["run", "--space", str(SPACE), "--storage", str(tmp_path / "results"), "--mlflow-uri", uri]
    result = CliRunner().invoke(app, args + [a for s in small for a in ("--set", s)])
    assert result.exit_code == 0, result.output

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("variants")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "raysearch.trial_id" in r.data.tags]
    by_variant = {r.data.params["variant"]: r for r in children}
    assert set(by_variant) == set(ADAPTERS) and len(children) == len(ADAPTERS)
    assert {r.data.tags["raysearch.status"] for r in children} == {"completed"}

    for variant in ADAPTIVE:
        run = by_variant[variant]
        ranks = client.list_artifacts(run.info.run_id, "ranks")
        assert {"ranks/ranks.json", "ranks/ranks.png"} <= {a.path for a in ranks}, variant
        adapter = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="adapter",
                                                           dst_path=str(tmp_path / variant), tracking_uri=uri))
        shipped = sum(t.numel() for t in load_file(adapter / "adapter_model.safetensors").values())
        # the count on the Pareto front is exactly what the exported adapter holds
        assert run.data.metrics["adapter_params"] == shipped, variant
        history = [m.value for m in client.get_metric_history(run.info.run_id, "adapter_params")]
        if variant in {"adalora", "sora"}:  # both prune during training
            assert history[-1] < history[0], f"{variant}: live count did not drop: {history}"

    assert any(r.data.tags["raysearch.pareto"] == "true" for r in children)
