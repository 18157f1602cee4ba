"""examples/python_api.py, run as a user would (from the repository root): a real search
through the Python API, its trials and front as DataFrames, the best trial, its export
loaded with plain PEFT."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_python_api_example_runs_a_search_and_exports_its_best(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = importlib.util.spec_from_file_location("python_api", ROOT / "examples" / "python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    search = example.main(["--trials", "3", "--model", str(tiny_model_dir), "--out", str(tmp_path)])

    trials = search.trials()
    assert len(trials) == 3 and {"trial_id", "run_id", "status", "pareto", "variant", "rank", "val_accuracy",
                                 "adapter_params"} <= set(trials.columns)
    assert search.exit_code == 0 and search.outcome is not None
    front, best = search.front, search.best
    assert len(front) >= 1 and set(front["trial_id"]) <= set(trials["trial_id"])
    finished = trials[trials["status"] == "completed"]
    assert best.trial_id == finished.iloc[0]["trial_id"] and best.run_id and "rank" in best.config
    assert best.trial_id in set(front["trial_id"])  # the most accurate finished trial is on the front
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2),
                                      tmp_path / "best" / "adapter")
    assert any("lora_" in name for name, _ in model.named_parameters())
    again = example.raysearch.load_search(search.name, storage=str(tmp_path / "results"))
    assert list(again.trials()["trial_id"]) == list(trials["trial_id"])
