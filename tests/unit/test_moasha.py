"""The multi-objective successive-halving scheduler's decisions on hand-built rungs."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from raysearch.search.moasha import MultiObjectiveASHA, crowding_distance, promoted, rank_order
from raysearch.experiment.spec import spec_from_dict
from raysearch.search.tuner import build_scheduler

GO, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
SENSES = {"val_loss": "min", "adapter_params": "min"}


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def report(scheduler, trial_id: str, evaluation: int, loss: float, params: float, **extra) -> str:
    result = {"evaluation": evaluation, "val_loss": loss, "adapter_params": params, **extra}
    return scheduler.on_trial_result(None, FakeTrial(trial_id), result)


def test_crowding_distance_by_hand():
    # a front of four on a line: ends infinite; the inner ones (x-gap + y-gap) / range each
    points = np.array([[0.0, 3.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    assert np.allclose(crowding_distance(points)[1:3], [(3 - 0) / 4 + (3 - 1) / 3, (4 - 1) / 4 + (2 - 0) / 3])
    assert math.isinf(crowding_distance(points)[0]) and math.isinf(crowding_distance(points)[3])


def test_dominated_trials_rank_after_the_front_and_ties_go_by_crowding_then_the_first_metric():
    recorded = {"a": [0.5, 100], "b": [0.4, 400], "c": [0.45, 200], "d": [0.6, 500], "e": [0.42, 300]}
    order = rank_order(recorded, ["min", "min"])
    # front {b, e, c, a}: its ends a and b first (b, the better loss, before a); then c, whose
    # neighbours are farther apart (0.08/0.10 + 200/300) than e's (0.05/0.10 + 200/300); d is
    # dominated by every other point
    assert order == ["b", "a", "c", "e", "d"]


def test_a_trial_continues_only_among_the_top_third_at_its_rung():
    recorded = {"a": [0.5, 100], "b": [0.4, 400], "d": [0.6, 500]}
    assert promoted(recorded, ["min", "min"], "b", 3)  # ⌈3/3⌉ = 1 kept: the front's better-loss end
    assert not promoted(recorded, ["min", "min"], "a", 3)
    assert not promoted(recorded, ["min", "min"], "d", 3)
    assert promoted({**recorded, "x": [0.7, 600]}, ["min", "min"], "a", 3)  # ⌈4/3⌉ = 2 kept


def test_asynchronous_promotion_first_arrivals_go_on_a_dominated_one_stops():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    assert scheduler.milestones[:3] == [1, 2, 4]
    assert report(scheduler, "t1", 1, 0.6, 100) == GO  # alone at rung 1
    assert report(scheduler, "t2", 1, 0.7, 200) == STOP  # dominated by t1; ⌈2/2⌉ = 1 kept
    assert report(scheduler, "t3", 1, 0.5, 300) == GO  # non-dominated: beside t1 on the front, ⌈3/2⌉ = 2 kept
    assert report(scheduler, "t1", 2, 0.55, 100) == GO  # the first at rung 2 waits for no one
    assert report(scheduler, "t1", 3, 0.9, 100) == GO  # between rungs: no decision
    assert report(scheduler, "t3", 2, 0.45, 90) == GO  # dominates t1 there
    assert scheduler.rungs[2] == {"t1": [0.55, 100.0], "t3": [0.45, 90.0]}
    assert scheduler.stopped == 1


def test_loss_alone_would_stop_the_small_adapter_the_front_needs():
    """Six trials at a rung, a third kept: ASHA on val_loss keeps the two best losses (a, f);
    MOASHA keeps the front's two ends, the best loss (a) and the 500-parameter adapter (e),
    whose loss is the worst of the six."""
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=3)
    arrivals = {"a": (0.40, 4000), "b": (0.42, 4500), "c": (0.44, 5000), "d": (0.46, 3000), "f": (0.41, 6000),
                "e": (0.55, 500)}
    decisions = {trial: report(scheduler, trial, 1, *point) for trial, point in arrivals.items()}
    assert decisions["e"] == GO
    assert sorted(arrivals, key=lambda t: arrivals[t][0])[:2] == ["a", "f"]  # what a loss-only rung keeps
    assert rank_order(scheduler.rungs[1], ["min", "min"])[:2] == ["a", "e"]


def test_a_trial_whose_budget_is_still_shrinking_is_judged_only_once_settled():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    report(scheduler, "lora", 1, 0.5, 100)
    report(scheduler, "lora", 2, 0.4, 100)
    report(scheduler, "lora", 4, 0.3, 100)
    # AdaLoRA at 9000 params mid-schedule, far worse than LoRA on every metric: not judged
    for evaluation in (1, 2, 3):
        assert report(scheduler, "ada", evaluation, 0.9, 9000, budget_settled=False) == GO
    assert "ada" not in scheduler.rungs[1] and "ada" not in scheduler.rungs[2]
    # settled at evaluation 5: judged once, at the highest rung it has reached (4), where it
    # dominates LoRA (judged mid-schedule at rung 1, it was dominated and would have stopped)
    assert report(scheduler, "ada", 5, 0.25, 50, budget_settled=True) == GO
    assert set(scheduler.rungs[4]) == {"lora", "ada"} and scheduler.stopped == 0
    assert not promoted({"lora": [0.5, 100], "ada": [0.9, 9000]}, ["min", "min"], "ada", 2)


def test_results_without_every_metric_or_with_a_non_finite_one_are_not_judged():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    report(scheduler, "a", 1, 0.5, 100)
    assert scheduler.on_trial_result(None, FakeTrial("b"), {"evaluation": 1, "adapter_params": 10}) == GO
    assert report(scheduler, "c", 1, float("nan"), 10) == GO
    assert set(scheduler.rungs[1]) == {"a"}


def test_the_last_evaluation_is_recorded_but_never_stopped():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    report(scheduler, "a", 1, 0.5, 100)
    assert report(scheduler, "b", 1, 0.9, 900, final=True) == GO
    assert "b" in scheduler.rungs[1] and scheduler.stopped == 0


def test_rungs_survive_a_restart_from_the_state_file(tmp_path):
    """Tune pickles the scheduler into tuner.pkl once, before any result, and never saves it
    again: a resumed search gets that object back; it reads the rungs from its state file."""
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, state_file=(str(tmp_path), "moasha.json"))
    pickled = pickle.dumps(scheduler)  # what tuner.pkl holds: no rungs yet
    report(scheduler, "t1", 1, 0.6, 100)
    report(scheduler, "t2", 1, 0.7, 200)
    saved = json.loads((tmp_path / "moasha.json").read_text())
    assert saved["brackets"][0]["1"] == {"t1": [0.6, 100.0], "t2": [0.7, 200.0]}

    resumed = pickle.loads(pickled)
    assert resumed.rungs[1] == scheduler.rungs[1] and resumed.stopped == 1
    assert report(resumed, "t2", 1, 0.7, 200) == STOP  # stopped before the kill: not judged again
    assert resumed.stopped == 1
    assert report(resumed, "t4", 1, 0.8, 300) == STOP  # judged against the rungs before the kill
    forgetful = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)  # what Tune alone restores
    assert report(forgetful, "t4", 1, 0.8, 300) == GO  # alone at an empty rung


def test_tune_save_and_restore_round_trip(tmp_path):
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    report(scheduler, "t1", 1, 0.6, 100)
    scheduler.save(str(tmp_path / "sched.json"))
    other = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    other.restore(str(tmp_path / "sched.json"))
    assert other.rungs == scheduler.rungs


def test_moasha_is_the_default_for_two_objectives_asha_for_one():
    space = {"rank": {"choice": [4, 8]}}
    two = spec_from_dict({"search": {"space": space}})
    one = spec_from_dict({"search": {"space": space, "objectives": {"val_accuracy": "max"}}})
    assert two.search.early_stopping.scheduler == "moasha" and one.search.early_stopping.scheduler == "asha"
    scheduler = build_scheduler(two)
    assert isinstance(scheduler, MultiObjectiveASHA)
    assert scheduler.metrics == {"val_accuracy": "max", "adapter_params": "min"}  # the objectives themselves
    assert scheduler.reduction_factor == 2
    chosen = spec_from_dict({"search": {"space": space, "early_stopping": {
        "metrics": {"val_loss": "min", "adapter_params": "min"}}}})
    assert build_scheduler(chosen).metrics == {"val_loss": "min", "adapter_params": "min"}


def test_bad_rung_metric_names_the_field():
    from raysearch.experiment.spec import SpecError

    with pytest.raises(SpecError) as error:
        (spec_from_dict({"search": {"space": {"rank": {"choice": [4]}},
                                              "early_stopping": {"metrics": {"val_acc": "max"}}}}))
    assert "search.early_stopping.metrics.val_acc" in str(error.value)


class ConfiguredTrial(FakeTrial):
    def __init__(self, trial_id: str, config: dict) -> None:
        super().__init__(trial_id)
        self.config = config


def test_the_files_own_configuration_is_recorded_but_never_stopped():
    """start_with_defaults: the first trial is the file's configuration; MOASHA and ASHA record
    it at their rungs (others are compared with it) but let it run to the end, so the search
    always holds the default fully trained."""
    from raysearch.search.moasha import DefaultKeepingASHA

    default = {"variant": "lora", "rank": 16, "lr": 5e-4}
    for scheduler in (MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, protected=default),
                      DefaultKeepingASHA(metric="val_loss", mode="min", time_attr="evaluation", grace_period=1,
                                         reduction_factor=2, max_t=100, protected=default)):
        trials = {"a": ConfiguredTrial("a", {**default, "rank": 4}), "d": ConfiguredTrial("d", dict(default)),
                  "x": ConfiguredTrial("x", {**default, "lr": 6e-4})}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        first = {"evaluation": 1, "val_loss": 0.5, "adapter_params": 100}
        assert scheduler.on_trial_result(None, trials["a"], first) == GO
        worse = {"evaluation": 1, "val_loss": 0.9, "adapter_params": 900}
        assert scheduler.on_trial_result(None, trials["d"], worse) == GO  # the default: dominated, kept
        assert scheduler.on_trial_result(None, trials["x"], worse) == STOP  # the same numbers, another config
    moasha = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, protected=default)
    moasha.on_trial_result(None, ConfiguredTrial("d", dict(default)), {"evaluation": 1, "val_loss": 0.9,
                                                                       "adapter_params": 900})
    assert "d" in moasha.rungs[1] and moasha.stopped == 0  # recorded, for the trials after it


def test_the_scheduler_is_told_the_files_configuration():
    space = {"rank": {"choice": [4, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}
    spec = spec_from_dict({"adapter": {"rank": 16}, "train": {"lr": 5e-4}, "search": {"space": space}})
    assert build_scheduler(spec).protected == {"rank": 16, "lr": 5e-4}
    off = spec_from_dict({"search": {"space": space, "start_with_defaults": False}})
    assert build_scheduler(off).protected is None


# One decision per trial per rung (issue 27, defect 1): once recorded at a rung, a trial is
# never recorded at the lower rungs it skipped, and nothing is recorded for it after a STOP.


def test_a_settled_trial_is_never_judged_at_the_lower_rungs_it_skipped():
    """The budget-settling scenario above, carried past the evaluation where it broke: recorded
    at rung 4 once settled, the trial was then recorded at rung 2 (evaluation 6) and rung 1
    (evaluation 7), each time with a later, better-trained vector."""
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    for evaluation, loss in ((1, 0.5), (2, 0.4), (4, 0.3)):
        report(scheduler, "lora", evaluation, loss, 100)
    for evaluation in (1, 2, 3):
        report(scheduler, "ada", evaluation, 0.9, 9000, budget_settled=False)
    assert report(scheduler, "ada", 5, 0.25, 50, budget_settled=True) == GO
    for evaluation in (6, 7):
        assert report(scheduler, "ada", evaluation, 0.2, 50, budget_settled=True) == GO
    assert "ada" not in scheduler.rungs[2] and "ada" not in scheduler.rungs[1]
    # restarted from an older checkpoint, it reports evaluation 3 again: rung 2 stays unfilled
    assert report(scheduler, "ada", 3, 0.3, 50, budget_settled=True) == GO
    assert "ada" not in scheduler.rungs[2]
    assert report(scheduler, "ada", 8, 0.2, 50, budget_settled=True) == GO
    assert [m for m, recorded in sorted(scheduler.rungs.items()) if "ada" in recorded] == [4, 8]


def test_a_trial_promoted_at_rungs_2_and_4_is_not_stopped_later_at_rung_1():
    """η = 2: settled at evaluation 3, the trial is the first at rungs 2 and 4 and goes on; at
    evaluation 5 it used to be judged at rung 1 (skipped while unsettled) against two trials'
    first evaluations that both dominate it, and stopped."""
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    report(scheduler, "a", 1, 0.30, 100)
    report(scheduler, "b", 1, 0.28, 200)
    for evaluation in (1, 2):
        report(scheduler, "ada", evaluation, 0.9, 9000, budget_settled=False)
    assert report(scheduler, "ada", 3, 0.40, 500, budget_settled=True) == GO  # alone at rung 2
    assert report(scheduler, "ada", 4, 0.37, 500, budget_settled=True) == GO  # alone at rung 4
    assert report(scheduler, "ada", 5, 0.35, 500, budget_settled=True) == GO
    assert "ada" not in scheduler.rungs[1] and scheduler.stopped == 0


def stop_as_tune_does(scheduler, trial, result) -> str:
    """What Tune's controller does with a result: `on_trial_result`; on STOP, `stop_trial` calls
    `on_trial_complete` with the trial's last result (the one just stopped;
    ray/tune/execution/tune_controller.py, `_process_trial_result` and `stop_trial`)."""
    decision = scheduler.on_trial_result(None, trial, result)
    if decision == STOP or result.get("final"):
        scheduler.on_trial_complete(None, trial, result)
    return decision


def test_on_trial_complete_after_a_stop_records_nothing_and_counts_the_stop_once():
    """Tune's call sequence on_trial_result -> STOP -> on_trial_complete, for a trial stopped at
    rung 4 after skipping rungs 1 and 2 while its budget settled: on_trial_complete used to
    record it at rung 2 and count a second stop."""
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    for evaluation, loss in ((1, 0.5), (2, 0.4), (3, 0.35), (4, 0.3)):
        stop_as_tune_does(scheduler, FakeTrial("lora"), {"evaluation": evaluation, "val_loss": loss,
                                                         "adapter_params": 100})
    ada = FakeTrial("ada")
    for evaluation in (1, 2, 3):
        stop_as_tune_does(scheduler, ada, {"evaluation": evaluation, "val_loss": 0.9, "adapter_params": 9000,
                                           "budget_settled": False})
    settled = {"evaluation": 4, "val_loss": 0.6, "adapter_params": 900, "budget_settled": True}
    assert stop_as_tune_does(scheduler, ada, settled) == STOP  # dominated by lora at rung 4
    assert scheduler.stopped == 1
    assert [m for m, recorded in sorted(scheduler.rungs.items()) if "ada" in recorded] == [4]
    # a result that arrives after the STOP (Tune drops buffered ones; a driver killed before it
    # acted on the STOP restarts the trial) records nothing and is stopped again, uncounted
    later = {"evaluation": 8, "val_loss": 0.1, "adapter_params": 900, "budget_settled": True}
    assert scheduler.on_trial_result(None, ada, later) == STOP
    scheduler.on_trial_complete(None, ada, later)
    assert "ada" not in scheduler.rungs[8] and scheduler.stopped == 1


def test_a_finished_trial_is_recorded_once():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2)
    for evaluation in (1, 2):
        stop_as_tune_does(scheduler, FakeTrial("a"), {"evaluation": evaluation, "val_loss": 0.5,
                                                      "adapter_params": 100, "final": evaluation == 2})
    assert [len(recorded) for _, recorded in sorted(scheduler.rungs.items())][:3] == [1, 1, 0]


def test_stopped_trials_survive_a_restart_from_the_state_file(tmp_path):
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, state_file=(str(tmp_path), "m.json"))
    pickled = pickle.dumps(scheduler)
    report(scheduler, "t1", 1, 0.6, 100)
    assert report(scheduler, "t2", 1, 0.7, 200) == STOP
    resumed = pickle.loads(pickled)  # killed before Tune acted on the STOP: t2 restarts and reports
    assert report(resumed, "t2", 2, 0.1, 200) == STOP
    assert "t2" not in resumed.rungs[2] and resumed.stopped == 1


# The promotion rule (issue 27, defect 2): a non-dominated trial is not stopped on the first
# objective alone while its rung holds few trials.

ACCURACY = {"val_accuracy": "max", "adapter_params": "min"}


def arrive(scheduler, trial_id: str, accuracy: float, params: float, evaluation: int = 1) -> str:
    return scheduler.on_trial_result(None, FakeTrial(trial_id), {"evaluation": evaluation, "val_accuracy": accuracy,
                                                                 "adapter_params": params})


def test_the_small_adapter_second_at_a_rung_is_not_stopped_for_its_accuracy_alone():
    """The issue's reproduction: (0.80, 8,000 parameters) then (0.70, 100) at rung 1 with η = 2.
    Both are non-dominated; ⌈2/2⌉ = 1 used to keep only the better accuracy."""
    scheduler = MultiObjectiveASHA(ACCURACY, grace_period=1, reduction_factor=2)
    assert arrive(scheduler, "big", 0.80, 8000) == GO
    assert arrive(scheduler, "small", 0.70, 100) == GO
    assert arrive(scheduler, "worse", 0.60, 9000) == STOP  # dominated: stopped at any rung size
    # from min_rung_size trials on, the top ⌈n/η⌉ by Pareto rank and crowding: the front's two
    # ends (big, small) before its middle
    assert arrive(scheduler, "middle", 0.75, 4000) == STOP
    assert scheduler.stopped == 2
    assert scheduler.min_rung_size == 3  # ⌊η⌋ + 1: the rungs where ⌈n/η⌉ keeps one trial


def test_min_rung_size_one_is_the_plain_rule_and_a_larger_one_keeps_more_of_the_front():
    plain = MultiObjectiveASHA(ACCURACY, grace_period=1, reduction_factor=2, min_rung_size=1)
    arrive(plain, "big", 0.80, 8000)
    assert arrive(plain, "small", 0.70, 100) == STOP  # the tie goes to the first objective
    patient = MultiObjectiveASHA(ACCURACY, grace_period=1, reduction_factor=2, min_rung_size=5)
    for trial, point in {"big": (0.80, 8000), "small": (0.70, 100), "middle": (0.75, 4000)}.items():
        assert arrive(patient, trial, *point) == GO
    assert arrive(patient, "worse", 0.60, 9000) == STOP
    assert promoted({"a": [0.8, 8000], "b": [0.7, 100]}, ["max", "min"], "b", 2, min_rung_size=3)
    assert not promoted({"a": [0.8, 8000], "b": [0.7, 100]}, ["max", "min"], "b", 2)


def test_min_rung_size_is_read_from_the_file_and_checked():
    from raysearch.experiment.spec import SpecError

    space = {"rank": {"choice": [4, 8]}}
    spec = spec_from_dict({"search": {"space": space, "early_stopping": {"min_rung_size": 5}}})
    assert build_scheduler(spec).min_rung_size == 5
    assert build_scheduler(spec_from_dict({"search": {"space": space}})).min_rung_size == 3
    for bad in (0, "many", 2.5):
        with pytest.raises(SpecError) as error:
            spec_from_dict({"search": {"space": space, "early_stopping": {"min_rung_size": bad}}})
        assert "search.early_stopping.min_rung_size" in str(error.value)


# ASHA's rungs on resume (issue 27, part 7): Tune never saves a scheduler.


def test_asha_rungs_survive_a_restart_from_the_state_file(tmp_path):
    from raysearch.search.moasha import DefaultKeepingASHA

    def asha():
        return DefaultKeepingASHA(metric="val_loss", mode="min", time_attr="evaluation", grace_period=1,
                                  reduction_factor=2, max_t=100, state_file=(str(tmp_path), "asha.json"))

    def loss(scheduler, trial_id, value):
        trial = FakeTrial(trial_id)
        scheduler.on_trial_add(None, trial)  # Tune adds restored trials again on a resume
        return scheduler.on_trial_result(None, trial, {"evaluation": 1, "val_loss": value})

    scheduler = asha()
    pickled = pickle.dumps(scheduler)  # what tuner.pkl holds: no rungs yet
    assert loss(scheduler, "t1", 0.5) == GO
    assert loss(scheduler, "t2", 0.6) == STOP  # below the median of the rung
    resumed = pickle.loads(pickled)
    assert loss(resumed, "t3", 0.58) == STOP  # judged against t1 and t2, recorded before the kill
    assert loss(pickle.loads(pickled), "t3", 0.58) == GO  # alone at an empty rung: what a lost state gives
    assert json.loads((tmp_path / "asha.json").read_text())["stopped"] == 2


def test_the_searchs_folder_keeps_asha_and_moasha_rungs(tmp_path):
    space = {"rank": {"choice": [4, 8]}}
    asha = spec_from_dict({"search": {"space": space, "objectives": {"val_accuracy": "max"}}})
    assert build_scheduler(asha, str(tmp_path)).state_file == (str(tmp_path), "asha.json")
    moasha = spec_from_dict({"search": {"space": space}})
    assert build_scheduler(moasha, str(tmp_path)).state_file == (str(tmp_path), "moasha.json")
    assert build_scheduler(asha).state_file is None


# Hyperband brackets (issue 27, part 3): late bloomers.


def add(scheduler, trial_id):
    scheduler.on_trial_add(None, FakeTrial(trial_id))


def test_brackets_deal_trials_in_turn_and_start_their_rungs_later():
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, brackets=2)
    assert scheduler.bracket_milestones[0][:3] == [1, 2, 4] and scheduler.bracket_milestones[1][:3] == [2, 4, 8]
    for trial in ("a", "b", "c", "d"):
        add(scheduler, trial)
    assert scheduler.assigned == {"a": 0, "b": 1, "c": 0, "d": 1}
    # b is in bracket 1: its first evaluation is no rung there, however bad it is
    assert report(scheduler, "a", 1, 0.3, 100) == GO
    assert report(scheduler, "c", 1, 0.2, 50) == GO  # dominates a, alone with it at bracket 0's rung
    assert report(scheduler, "b", 1, 0.9, 900) == GO
    assert all("b" not in recorded for recorded in scheduler.brackets[0].values())
    assert scheduler.brackets[1][2] == {}
    # at evaluation 2 b is judged, and only against the trials of its own bracket
    assert report(scheduler, "b", 2, 0.8, 900) == GO  # alone in bracket 1's first rung
    assert report(scheduler, "d", 1, 0.1, 10) == GO
    assert report(scheduler, "d", 2, 0.05, 10) == GO
    assert set(scheduler.brackets[1][2]) == {"b", "d"} and "d" not in scheduler.rungs[1]


def test_a_late_bloomer_cut_by_one_bracket_survives_in_the_second():
    def run(brackets):
        scheduler = MultiObjectiveASHA({"val_accuracy": "max"}, grace_period=1, reduction_factor=2, brackets=brackets,
                                       min_rung_size=1)
        for trial in ("early", "late"):
            add(scheduler, trial)
        scheduler.on_trial_result(None, FakeTrial("early"), {"evaluation": 1, "val_accuracy": 0.7})
        return scheduler.on_trial_result(None, FakeTrial("late"), {"evaluation": 1, "val_accuracy": 0.5})

    assert run(1) == STOP  # judged at evaluation 1 beside a faster starter
    assert run(2) == GO  # in bracket 1, not judged before evaluation 2


def test_bracket_assignments_survive_a_restart(tmp_path):
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, brackets=2,
                                   state_file=(str(tmp_path), "moasha.json"))
    pickled = pickle.dumps(scheduler)
    for trial in ("a", "b"):
        add(scheduler, trial)
    report(scheduler, "b", 2, 0.5, 100)
    resumed = pickle.loads(pickled)
    for trial in ("b", "a", "c"):  # Tune adds the restored trials again, in any order
        add(resumed, trial)
    assert resumed.assigned == {"a": 0, "b": 1, "c": 0}
    assert resumed.brackets[1][2] == {"b": [0.5, 100.0]}


def test_a_state_file_from_before_brackets_loads_as_bracket_0(tmp_path):
    (tmp_path / "moasha.json").write_text(json.dumps({"stopped": 1, "stopped_trials": ["x"],
                                                      "rungs": {"1": {"x": [0.9, 10.0]}}}))
    scheduler = MultiObjectiveASHA(SENSES, grace_period=1, reduction_factor=2, state_file=(str(tmp_path), "moasha.json"))
    assert scheduler.rungs[1] == {"x": [0.9, 10.0]} and scheduler.stopped == 1
    assert report(scheduler, "x", 2, 0.1, 10) == STOP


def test_asha_brackets_are_dealt_in_turn_and_kept_across_a_restart(tmp_path):
    from raysearch.search.moasha import DefaultKeepingASHA

    def asha():
        return DefaultKeepingASHA(metric="val_loss", mode="min", time_attr="evaluation", grace_period=1,
                                  reduction_factor=2, max_t=100, brackets=2, state_file=(str(tmp_path), "asha.json"))

    scheduler = asha()
    pickled = pickle.dumps(scheduler)
    for trial in ("a", "b", "c"):
        add(scheduler, trial)
    assert scheduler.assigned == {"a": 0, "b": 1, "c": 0}
    assert [scheduler._trial_info[t] for t in "abc"] == [scheduler._brackets[i] for i in (0, 1, 0)]
    assert scheduler.on_trial_result(None, FakeTrial("a"), {"evaluation": 1, "val_loss": 0.1}) == GO
    # b, in bracket 1, is not judged at evaluation 1 even against a far better a
    assert scheduler.on_trial_result(None, FakeTrial("b"), {"evaluation": 1, "val_loss": 0.9}) == GO
    assert scheduler.on_trial_result(None, FakeTrial("c"), {"evaluation": 1, "val_loss": 0.9}) == STOP
    resumed = pickle.loads(pickled)
    for trial in ("c", "b", "a"):
        add(resumed, trial)
    assert resumed.assigned == {"a": 0, "b": 1, "c": 0}


def test_brackets_reach_the_schedulers_from_the_experiment_file():
    space = {"rank": {"choice": [4, 8]}}
    two = spec_from_dict({"search": {"space": space, "early_stopping": {"brackets": 2}}})
    assert len(build_scheduler(two).bracket_milestones) == 2
    one = spec_from_dict({"search": {"space": space, "objectives": {"val_accuracy": "max"},
                                     "early_stopping": {"brackets": 3}}})
    assert len(build_scheduler(one)._brackets) == 3
