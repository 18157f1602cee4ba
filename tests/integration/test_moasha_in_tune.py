"""MOASHA driven by a real Tune run: Tune's own call sequence (on_trial_result -> STOP ->
on_trial_complete with the stopped result) leaves one decision per trial per rung."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
from ray import tune

from raysearch.search.moasha import MultiObjectiveASHA

pytestmark = pytest.mark.integration

# (evaluation, val_loss, adapter_params, budget_settled); the last evaluation is final
SCRIPTS = {
    "lora": [(e, 0.6 - 0.05 * e, 100, True) for e in range(1, 7)],
    # an adaptive variant: unsettled (and not judged) at rungs 1 and 2, settled at evaluation 4,
    # where lora dominates it
    "ada": [(1, 0.9, 9000, False), (2, 0.9, 9000, False), (3, 0.9, 9000, False), (4, 0.6, 900, True),
            (5, 0.5, 900, True), (6, 0.4, 900, True)],
}


class LoggedMOASHA(MultiObjectiveASHA):
    """Writes each hook Tune calls (and the decision) to `log`, one JSON line each."""

    def __init__(self, log: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log = log

    def _write(self, *entry) -> None:
        with open(self.log, "a") as out:
            out.write(json.dumps(entry) + "\n")

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        self._write("result", trial.config["name"], result["evaluation"], decision)
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._write("complete", trial.config["name"], result.get("evaluation"), self.stopped)


def scripted(config: dict) -> None:
    script = SCRIPTS[config["name"]]
    for evaluation, loss, params, settled in script:
        tune.report({"evaluation": evaluation, "val_loss": loss, "adapter_params": params,
                     "budget_settled": settled, "final": evaluation == len(script)})


def test_tune_calls_on_trial_complete_after_a_stop_and_the_trial_is_recorded_once(tmp_path: Path, monkeypatch):
    # Tune's workers import `scripted` from this module: they inherit the driver's environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "hooks.jsonl"
    scheduler = LoggedMOASHA(str(log), metrics={"val_loss": "min", "adapter_params": "min"}, grace_period=1,
                             reduction_factor=2, state_file=(str(tmp_path), "moasha.json"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(scripted, param_space={"name": tune.grid_search(["lora", "ada"])},
                   tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
                   run_config=tune.RunConfig(name="moasha", storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    finally:
        ray.shutdown()
    calls = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    ada = [call for call in calls if call[1] == "ada"]
    # Tune's sequence: the STOP at evaluation 4, then on_trial_complete with that same result
    assert ada[-2:] == [("result", "ada", 4, "STOP"), ("complete", "ada", 4, 1)]
    state = json.loads((tmp_path / "moasha.json").read_text())
    holding_both = [float(m) for m, recorded in state["brackets"][0].items() if len(recorded) == 2]
    assert holding_both == [4.0]  # lora is at every rung up to 4; ada only at 4, its one decision
    assert state["stopped"] == 1 and len(state["stopped_trials"]) == 1
