"""trainables/contract.py: what a trial's last result means, and that the driver reads the
worker's results and names without importing torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainables.contract import ran_to_the_end, scaling_exponent, trial_status

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("result, status", [
    ({"final": True, "diverged": False, "val_loss": 0.3}, "completed"),
    ({"final": False, "diverged": False, "val_loss": 0.3}, "early_stopped"),  # the scheduler ended it here
    ({"step": 6, "diverged": True, "final": True}, "diverged"),  # a diverged trial's report is also final
    ({}, "early_stopped"),
    (None, "early_stopped"),
])
def test_a_trials_last_result_says_how_it_ended(result, status):
    assert trial_status(result) == status
    assert ran_to_the_end(result) is (status == "completed")


def test_scaling_names_and_exponents():
    assert [scaling_exponent(s) for s in ("lora", "rora", "rslora", "0.25", 0.75)] == [1.0, 0.5, 0.5, 0.25, 0.75]
    for bad in ("sqrt", 1.5, "nan"):
        with pytest.raises(ValueError):
            scaling_exponent(bad)


@pytest.mark.subprocess
def test_the_driver_reads_results_and_files_without_importing_torch():
    """The experiment file, the CLI, the result contract, the scheduler and the MLflow read side
    load without torch (the adapter registry is imported only when a file is validated)."""
    code = ("import sys\n"
            "import raysearch.cli, raysearch.experiment.spec, raysearch.records.mlflow_reader, raysearch.search.outcome, raysearch.search.progress, "
            "raysearch.search.moasha, trainables.contract\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})


def test_a_sampled_dimension_sets_the_section_validation_checks_it_against():
    """One rule (contract.section_of) routes a sampled value in the worker and types it in the
    driver's validation: each train/task dimension is a field of that section."""
    from raysearch.experiment.sections import TaskSpec, TrainSpec
    from trainables.contract import TASK_DIMENSIONS, TRAIN_DIMENSIONS
    from trainables.trial import trial_config

    assert TRAIN_DIMENSIONS <= set(TrainSpec.model_fields) and TASK_DIMENSIONS <= set(TaskSpec.model_fields)
    base = {"train": {"lr": 1e-3, "epochs": 1}, "adapter": {"rank": 4}, "task": {"target": "attention"}, "model": "m"}
    config = trial_config(base, {"lr": 5e-4, "rank": 16, "target": "all_linear", "sora_gate_lr": 0.1, "epochs": 2})
    assert config["train"] == {"lr": 5e-4, "epochs": 2}
    assert config["adapter"] == {"rank": 16, "sora_gate_lr": 0.1}
    assert config["task"] == {"target": "all_linear"} and config["model"] == "m"
    assert base["train"]["lr"] == 1e-3  # the experiment's defaults are not changed
