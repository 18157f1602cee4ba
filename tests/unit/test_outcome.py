"""How a search ended (raysearch/search/outcome.py): statuses, the exit code, the closing summary,
and the fail-fast stopper, on fake Tune trials."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysearch.search.outcome import (
    EXIT_INTERRUPTED,
    EXIT_NOTHING_FINISHED,
    EXIT_OK,
    OUTCOME_FILE,
    SearchOutcome,
    exit_code,
    read_outcome,
    summary,
)


@dataclass
class FakeTrial:
    trial_id: str
    status: str = "TERMINATED"
    last_result: dict[str, Any] = field(default_factory=dict)
    error_file: str | None = None
    error: str | None = None

    def get_error(self) -> str | None:
        return self.error


def ended(outcome: SearchOutcome, trial: FakeTrial) -> None:
    if trial.status == "ERROR":
        outcome.on_trial_error(0, [], trial)
    else:
        outcome.on_trial_complete(0, [], trial)


def written(tmp_path: Path, trials: list[FakeTrial], fail_fast: int = 0, planned: int | None = None,
            cut_short: tuple[str, ...] = ()) -> dict[str, Any]:
    """The outcome of a search whose trials end as given; `cut_short` trials were stopped by
    Tune's clean-up after Ctrl-C (TERMINATED without an end event of their own)."""
    outcome = SearchOutcome(str(tmp_path), fail_fast, planned)
    for trial in trials:
        if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in cut_short:
            ended(outcome, trial)
        outcome.stop_all()
    outcome.on_experiment_end(trials)
    return read_outcome(str(tmp_path))


def bad_target(i: int) -> FakeTrial:
    return FakeTrial(f"t{i}", "ERROR", error="Traceback ...\nTrialFailed: adapter.target_modules ['x'] match no layer")


def test_statuses_and_exit_code_of_a_search_where_something_finished(tmp_path):
    trials = [FakeTrial("a", last_result={"final": True}), FakeTrial("b", last_result={"final": False}),
              FakeTrial("c", last_result={"diverged": True}), bad_target(3)]
    outcome = written(tmp_path, trials)
    assert {t: v["status"] for t, v in outcome["trials"].items()} == {
        "a": "completed", "b": "early_stopped", "c": "diverged", "t3": "error"}
    assert exit_code(outcome) == EXIT_OK
    assert json.loads((tmp_path / OUTCOME_FILE).read_text()) == outcome


def test_nothing_finished_and_interrupted_have_their_own_codes(tmp_path):
    assert exit_code(written(tmp_path, [bad_target(1), FakeTrial("d", last_result={"diverged": True})])) == \
        EXIT_NOTHING_FINISHED
    interrupted = written(tmp_path, [FakeTrial("a", last_result={"final": True}), FakeTrial("b", "RUNNING")])
    assert interrupted["trials"]["b"]["status"] == "unfinished"
    assert exit_code(interrupted) == EXIT_INTERRUPTED
    assert exit_code(None) == EXIT_INTERRUPTED  # the driver died before Tune ended the search
    # Ctrl-C: Tune's clean-up marks the running trials TERMINATED without ending them.
    ctrl_c = written(tmp_path, [FakeTrial("a", last_result={"final": False}), FakeTrial("b")], cut_short=("b",))
    assert ctrl_c["trials"] == {"a": {"status": "early_stopped"}, "b": {"status": "unfinished"}}
    assert exit_code(ctrl_c) == EXIT_INTERRUPTED
    # ... or between trials: every trial started has ended, but fewer than planned started.
    between = written(tmp_path, [FakeTrial("a", last_result={"final": True})], planned=8)
    assert exit_code(between) == EXIT_INTERRUPTED and "interrupted after 1 of 8" in summary(between)[-1]
    assert exit_code(written(tmp_path, [FakeTrial("a", last_result={"final": True})], planned=1)) == EXIT_OK


def test_summary_groups_errors_by_cause_with_where_the_traceback_is(tmp_path):
    trials = [bad_target(i) for i in range(3)] + [FakeTrial("z", "ERROR", error="ValueError: other", error_file="/r/z/error.txt"),
                                                   FakeTrial("a", last_result={"final": True})]
    lines = summary(written(tmp_path, trials))
    assert lines[0] == "5 trials: 1 completed, 4 error"
    assert lines[1].startswith("  3 x TrialFailed: adapter.target_modules ['x'] match no layer")
    assert lines[2] == "  1 x ValueError: other  (traceback: /r/z/error.txt and the trial's MLflow run)"


def test_fail_fast_stops_after_the_first_trials_fail_alike(tmp_path):
    outcome = SearchOutcome(str(tmp_path), fail_fast=3)
    for i in range(2):
        ended(outcome, bad_target(i))
    assert not outcome.stop_all()  # two alike: not yet
    ended(outcome, bad_target(2))
    assert outcome.stop_all()
    running = FakeTrial("r", last_result={"final": False})  # stopped by fail-fast, not by ASHA
    outcome.on_trial_complete(0, [], running)
    never_ran = FakeTrial("p")  # created, then stopped before it started
    outcome.on_experiment_end([bad_target(0), bad_target(1), bad_target(2), running, never_ran])
    result = read_outcome(str(tmp_path))
    assert result["stopped_by_fail_fast"] and result["trials"]["r"]["status"] == "stopped"
    assert result["trials"]["p"]["status"] == "stopped"
    assert exit_code(result) == EXIT_NOTHING_FINISHED
    assert "search.fail_fast" in summary(result)[-1]


def test_fail_fast_waits_when_causes_differ_or_a_trial_finished(tmp_path):
    mixed = SearchOutcome(str(tmp_path), fail_fast=2)
    ended(mixed, bad_target(0))
    ended(mixed, FakeTrial("y", "ERROR", error="ValueError: something else"))
    assert not mixed.stop_all()
    finished_first = SearchOutcome(str(tmp_path), fail_fast=2)
    ended(finished_first, FakeTrial("a", last_result={"final": True}))
    ended(finished_first, bad_target(1))
    ended(finished_first, bad_target(2))
    assert not finished_first.stop_all()  # the first trials did not all fail
    off = SearchOutcome(str(tmp_path), fail_fast=0)
    for i in range(5):
        ended(off, bad_target(i))
    assert not off.stop_all()


def test_state_travels_with_tunes_experiment_state(tmp_path):
    """A resumed search gets back the callback as it was at the start and then its saved
    state: trials that ended before the interruption stay ended, not unfinished."""
    before = SearchOutcome(str(tmp_path), fail_fast=3, planned=2)
    ended(before, FakeTrial("a", last_result={"final": False}))
    after = SearchOutcome(str(tmp_path), fail_fast=3, planned=2)  # as unpickled from the start
    after.set_state(before.get_state())
    ended(after, FakeTrial("b", last_result={"final": True}))  # the resumed trial
    after.on_experiment_end([FakeTrial("a", last_result={"final": False}), FakeTrial("b", last_result={"final": True})])
    result = read_outcome(str(tmp_path))
    assert {t: v["status"] for t, v in result["trials"].items()} == {"a": "early_stopped", "b": "completed"}
    assert exit_code(result) == EXIT_OK
