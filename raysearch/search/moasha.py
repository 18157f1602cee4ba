"""Multi-objective asynchronous successive halving (MOASHA) for Ray Tune.

ASHA (Li et al. 2020) stops a trial at a rung when its one metric is not in the top 1/η of
the values recorded there. raysearch searches two or more objectives (validation score vs
adapter parameters), and a loss-only rung removes exactly the small adapters a front needs:
they learn more slowly. MOASHA (Schmucker et al. 2021, in Syne Tune, which does not run on
Ray) ranks the trials at a rung by non-dominated sorting instead. This is that rule as a
Tune scheduler, through Tune's public `FIFOScheduler` hooks:

- rungs at `grace_period · η^k` evaluations (the loop's `evaluation` count, which survives
  restarts); with `brackets` B > 1, Hyperband's remedy for late bloomers (Li et al. 2018;
  Ray's `AsyncHyperBandScheduler`, Syne Tune's brackets): bracket b's rungs start at
  `grace_period · η^b`, the trials are dealt to the brackets in turn as they are added
  (trial n to bracket n mod B, kept in the state file), and a trial is compared only with
  the trials of its own bracket, so a trial of bracket 1 is never judged on its first
  evaluations;
- when a trial first reaches a rung, its vector of `metrics` (at that rung: the live
  `adapter_params` too) is recorded there, and every vector recorded at the rung is
  ordered by Pareto rank (`moocore.pareto_rank`), then inside a front by crowding distance
  (NSGA-II's diversity rule: the ends of a front and the points in its sparse parts first),
  then by the first metric; the trial continues when it is among the first ⌈n/η⌉ of the n
  recorded, or when the rung holds fewer than `min_rung_size` (default ⌊η⌋ + 1) and no
  vector there dominates it: where ⌈n/η⌉ keeps one trial, the first metric alone would
  otherwise stop a non-dominated one;
- asynchronous like ASHA: a trial is judged against whoever has reached the rung so far,
  no one waits for a full rung;
- one decision per trial per rung: a trial recorded at a rung is never recorded at a lower
  one, and a stopped trial stays stopped with nothing more recorded (Tune calls
  `on_trial_complete` with the stopped result);
- a trial whose result says `budget_settled: false` (AdaLoRA, SaLoRA, ALoRA and SoRA while
  their rank schedule still shrinks the adapter) is not judged: its rank there would compare
  a half-pruned adapter; it is judged at the highest rung it has reached once its budget
  has settled (trainables/adapters/base.py `budget_settles_at`), and the rungs it passed
  before are skipped;
- the experiment file's own configuration (`search.start_with_defaults`, the first trial) is
  recorded at each rung but never stopped: a search always holds that configuration trained
  to the end, so its best trial is never one a cut default would have beaten;
- Tune neither saves nor restores a scheduler's state with its experiment, so the rungs (and
  the stopped trials) are written to `state_file` (atomically) after each decision and read
  back after a resume: trials restored by `raysearch resume` are judged against the same
  rungs. `DefaultKeepingASHA`, raysearch's single-objective ASHA, does the same.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import moocore
import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from raysearch.search import storage
from trainables.contract import BUDGET_SETTLED, EVALUATION, FINAL



def runs_to_the_end(trial: Any, point: Mapping[str, Any] | None) -> bool:
    """Whether the trial is the experiment file's own configuration (`point`, what the study
    was given first), which early stopping records but never stops."""
    config = getattr(trial, "config", None) or {}
    return bool(point) and all(name in config and config[name] == value for name, value in point.items())


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of `points` (one front): for each objective, the
    gap between its two neighbours along that objective over the objective's range, summed;
    the two ends of each objective get infinity."""
    n, k = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(k):
        order = np.argsort(points[:, j], kind="stable")
        column = points[order, j]
        distance[order[0]] = distance[order[-1]] = math.inf
        span = column[-1] - column[0]
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def pareto_fronts(recorded: Mapping[str, list[float]], senses: list[str]) -> np.ndarray:
    """The Pareto rank (0: non-dominated) of each vector, in `recorded`'s order."""
    points = np.array(list(recorded.values()), dtype=float)
    return moocore.pareto_rank(points, maximise=[sense == "max" for sense in senses])


def rank_order(recorded: Mapping[str, list[float]], senses: list[str]) -> list[str]:
    """Trial ids at one rung, best first: Pareto rank; within a front, crowding distance
    (larger first); among equals (a front's ends, every point of a front of two), the better
    value of the first metric (the user's primary objective); then trial id."""
    ids = list(recorded)
    if not ids:
        return []
    points = np.array([recorded[i] for i in ids], dtype=float)
    fronts = pareto_fronts(recorded, senses)
    crowding = np.zeros(len(ids))
    for front in np.unique(fronts):
        members = np.flatnonzero(fronts == front)
        crowding[members] = crowding_distance(points[members])
    primary = points[:, 0] * (-1.0 if senses[0] == "max" else 1.0)  # smaller is better
    order = sorted(range(len(ids)), key=lambda i: (fronts[i], -crowding[i], primary[i], ids[i]))
    return [ids[i] for i in order]


def promoted(recorded: Mapping[str, list[float]], senses: list[str], trial_id: str, reduction_factor: float,
             min_rung_size: int = 1) -> bool:
    """Whether `trial_id` goes on: it is among the top ⌈n/η⌉ of the n vectors recorded at its
    rung, or the rung holds fewer than `min_rung_size` vectors and it is non-dominated there."""
    keep = math.ceil(len(recorded) / reduction_factor)
    if trial_id in rank_order(recorded, senses)[:keep]:
        return True
    return len(recorded) < min_rung_size and pareto_fronts(recorded, senses)[list(recorded).index(trial_id)] == 0


class MultiObjectiveASHA(FIFOScheduler):
    """Stops trials at rungs by non-dominated sorting on `metrics` (name -> "max"/"min")."""

    def __init__(self, metrics: Mapping[str, str], time_attr: str = EVALUATION, grace_period: int = 1,
                 reduction_factor: float = 3, max_t: int = 10_000, state_file: tuple[str, str] | None = None,
                 protected: Mapping[str, Any] | None = None, min_rung_size: int | None = None,
                 brackets: int = 1) -> None:
        if not metrics or any(sense not in ("max", "min") for sense in metrics.values()):
            raise ValueError(f"metrics must map names to 'max' or 'min', got {dict(metrics)}")
        if grace_period < 1 or reduction_factor <= 1 or max_t < grace_period:
            raise ValueError("need grace_period >= 1, reduction_factor > 1 and max_t >= grace_period")
        if min_rung_size is not None and min_rung_size < 1:
            raise ValueError(f"min_rung_size must be >= 1, got {min_rung_size}")
        if brackets < 1 or grace_period * reduction_factor ** (brackets - 1) > max_t:
            raise ValueError(f"need 1 <= brackets and grace_period * reduction_factor ** (brackets - 1) <= max_t, "
                             f"got brackets={brackets}")
        super().__init__()
        self.metrics = dict(metrics)
        self.time_attr = time_attr
        self.reduction_factor = reduction_factor
        # None: the rungs where ⌈n/η⌉ would keep a single trial (n <= η)
        self.min_rung_size = min_rung_size if min_rung_size is not None else math.floor(reduction_factor) + 1
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor)) + 1
        # bracket b: the rungs from grace_period * η^b on (bracket 0: all of them)
        self.bracket_milestones = [[grace_period * reduction_factor ** k for k in range(b, count)]
                                   for b in range(brackets)]
        self.milestones = self.bracket_milestones[0]
        self.state_file = state_file  # (folder location, file name); None: kept in memory only
        self.protected = dict(protected) if protected else None  # the file's own configuration
        self._brackets: list[dict[float, dict[str, list[float]]]] | None = None  # loaded lazily (after a restore)
        self.assigned: dict[str, int] = {}  # trial id -> its bracket
        self.stopped = 0
        self.stopped_trials: set[str] = set()

    # Tune pickles the scheduler into tuner.pkl when the Tuner is built (before any result) and
    # never saves it again; the rungs live in state_file instead.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_brackets": None}

    @property
    def brackets(self) -> list[dict[float, dict[str, list[float]]]]:
        """Each bracket's rungs: milestone -> {trial id: its vector there}."""
        if self._brackets is None:
            text = storage.read_text(*self.state_file) if self.state_file else None
            self._brackets = [{m: {} for m in milestones} for milestones in self.bracket_milestones]
            if text:
                self._load(json.loads(text))
        return self._brackets

    @property
    def rungs(self) -> dict[float, dict[str, list[float]]]:
        """Bracket 0's rungs (the only ones with `brackets=1`)."""
        return self.brackets[0]

    def _load(self, state: dict[str, Any]) -> None:
        saved = state["brackets"] if "brackets" in state else [state["rungs"]]  # a file from before brackets
        self._brackets = []
        for b, milestones in enumerate(self.bracket_milestones):
            rungs = {float(m): dict(recorded) for m, recorded in (saved[b] if b < len(saved) else {}).items()}
            self._brackets.append({m: rungs.get(float(m), {}) for m in milestones})
        self.assigned = {t: int(b) for t, b in state.get("assigned", {}).items() if int(b) < len(self._brackets)}
        self.stopped = state.get("stopped", 0)
        self.stopped_trials = set(state.get("stopped_trials", []))

    def _state(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "reduction_factor": self.reduction_factor, "stopped": self.stopped,
                "stopped_trials": sorted(self.stopped_trials), "assigned": self.assigned,
                "brackets": [{str(m): recorded for m, recorded in rungs.items()} for rungs in self.brackets]}

    def bracket_of(self, trial_id: str) -> int:
        """The trial's bracket: the next in turn when it is first seen, then kept."""
        brackets = self.brackets  # loads the saved assignment first
        if len(brackets) == 1:
            return 0  # nothing to deal, nothing to keep
        if trial_id not in self.assigned:
            self.assigned[trial_id] = len(self.assigned) % len(brackets)
        return self.assigned[trial_id]

    def save(self, checkpoint_path: str) -> None:
        """Tune's scheduler checkpoint API: the rungs as JSON."""
        storage.write_text(os.path.dirname(checkpoint_path) or ".", os.path.basename(checkpoint_path),
                           json.dumps(self._state()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as source:
            self._load(json.load(source))

    def _persist(self) -> None:
        if self.state_file:
            storage.write_text(*self.state_file, json.dumps(self._state()))

    def _vector(self, result: Mapping[str, Any]) -> list[float] | None:
        values = [result.get(name) for name in self.metrics]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    def decide(self, trial_id: str, result: Mapping[str, Any], protected: bool = False) -> str:
        """One decision per trial per rung: record the trial at the highest rung it has reached,
        unless it is recorded there already (then it goes on: decided), and say whether it goes
        on. A trial is never recorded at a rung below one it is recorded at (it skipped it while
        its budget settled), and a stopped trial stays stopped, with nothing recorded. Results
        without a finite value of every metric, or with an unsettled budget, are not judged."""
        rungs = self.brackets[self.bracket_of(trial_id)]
        if trial_id in self.stopped_trials:
            return TrialScheduler.STOP
        now, vector = result.get(self.time_attr), self._vector(result)
        if now is None or vector is None or result.get(BUDGET_SETTLED) is False:
            return TrialScheduler.CONTINUE
        reached = [m for m in rungs if m <= now]
        held = [m for m, recorded in rungs.items() if trial_id in recorded]
        if not reached or (held and max(held) >= max(reached)):  # decided there (a restart can go back)
            return TrialScheduler.CONTINUE
        recorded = rungs[max(reached)]
        recorded[trial_id] = vector
        # its last evaluation is recorded for the trials after it, but there is nothing to stop
        go_on = protected or bool(result.get(FINAL)) or promoted(recorded, list(self.metrics.values()), trial_id,
                                                                 self.reduction_factor, self.min_rung_size)
        if not go_on:
            self.stopped += 1
            self.stopped_trials.add(trial_id)
        self._persist()
        return TrialScheduler.CONTINUE if go_on else TrialScheduler.STOP

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # dealt a bracket in the order trials are added (a resumed trial keeps its own)
        new = len(self.brackets) > 1 and trial.trial_id not in self.assigned
        self.bracket_of(trial.trial_id)
        if new:
            self._persist()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self.decide(trial.trial_id, result, runs_to_the_end(trial, self.protected))

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        # Tune calls this after a STOP too, with the stopped result: decide records nothing then
        if result:
            self.decide(trial.trial_id, result, runs_to_the_end(trial, self.protected))

    def debug_string(self) -> str:
        rungs = "; ".join(", ".join(f"{m:g}: {len(r)}" for m, r in sorted(rungs.items()) if r) for rungs in self.brackets)
        return f"MultiObjectiveASHA on {self.metrics}: {self.stopped} stopped; trials at rungs {{{rungs}}}"


class DefaultKeepingASHA(ASHAScheduler):
    """Tune's ASHA, except that the experiment file's own configuration (`protected`) is
    recorded at each rung but never stopped (see `runs_to_the_end`), and that, like MOASHA's,
    its rungs are written to `state_file` (atomically) whenever they change and read back
    after a resume (Tune pickles a scheduler once, before any result, and never restores its
    state). With `brackets` > 1 a trial's bracket is dealt in turn, as MOASHA's (Tune draws it
    at random, weighted towards bracket 0), and kept in the state file with the rungs."""

    def __init__(self, *args: Any, protected: Mapping[str, Any] | None = None,
                 state_file: tuple[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protected = dict(protected) if protected else None
        self.state_file = state_file  # (folder location, file name); None: kept in memory only
        self._loaded = False
        self.assigned: dict[str, int] = {}  # trial id -> index of its bracket

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": False}

    def _load(self) -> None:
        """The rungs in state_file, once per driver (before the first hook that reads them)."""
        if self._loaded:
            return
        self._loaded = True
        text = storage.read_text(*self.state_file) if self.state_file else None
        if not text:
            return
        state = json.loads(text)
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            saved = {float(m): dict(recorded) for m, recorded in rungs}
            bracket._rungs = [(m, saved.get(float(m), {})) for m, _ in bracket._rungs]
        self._num_stopped = state.get("stopped", 0)
        self.assigned = {t: int(b) for t, b in state.get("assigned", {}).items() if int(b) < len(self._brackets)}

    def _size(self) -> tuple[int, int]:
        return (self._num_stopped, sum(len(recorded) for b in self._brackets for _, recorded in b._rungs),
                len(self.assigned))

    def _persist(self, before: tuple[int, int, int]) -> None:
        if self.state_file and self._size() != before:
            brackets = [[[m, {t: float(v) for t, v in recorded.items()}] for m, recorded in b._rungs]
                        for b in self._brackets]
            storage.write_text(*self.state_file, json.dumps({"stopped": self._num_stopped, "brackets": brackets,
                                                             "assigned": self.assigned}))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()
        before = self._size()
        super().on_trial_add(tune_controller, trial)
        if len(self._brackets) > 1:
            if trial.trial_id not in self.assigned:
                self.assigned[trial.trial_id] = len(self.assigned) % len(self._brackets)
            self._trial_info[trial.trial_id] = self._brackets[self.assigned[trial.trial_id]]
            self._persist(before)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._load()
        before = self._size()
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and runs_to_the_end(trial, self.protected):
            action, self._num_stopped = TrialScheduler.CONTINUE, self._num_stopped - 1
        self._persist(before)
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._load()
        before = self._size()
        super().on_trial_complete(tune_controller, trial, result)
        self._persist(before)
