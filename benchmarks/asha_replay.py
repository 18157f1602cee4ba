"""ASHA replayed on recorded learning curves (part of benchmarks/search_efficiency.py, and used
by benchmarks/early_stopping.py): raysearch's own scheduler decides, on the curves of a search
that stopped nothing, which trials it would have stopped, with the recorded report times and
with jittered ones. It trains nothing."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from raysearch.experiment.spec import spec_from_dict
from trainables.contract import ran_to_the_end

NO_STOPPING = "asha-none"  # the search without early stopping, by name (its files are replayed)
STEPS_TARGET, ACCURACY_TARGET = 0.5, 0.005  # early stopping's targets: <= 50% of the steps, best within 0.5 point

# # One real ASHA search is one draw: with 2 trials at a time, which trials a rung compares
# depends on the order their reports arrive in, and with 16 trials one cut can decide the
# best accuracy. The search without stopping recorded every trial's whole learning curve,
# and a trial's curve does not depend on which other trials ran, so raysearch's own
# scheduler (`raysearch.search.tuner.build_scheduler`, Ray's ASHAScheduler) can be replayed on those
# curves many times, each with report times jittered, at no training cost.

REPLAY_METRICS, REPLAY_GRACES, REPLAY_FACTORS = ("val_loss", "val_accuracy"), (1, 2, 3), (3, 2)
REPLAY_RUNS, REPLAY_JITTER = 400, 0.2


def trial_curves(tune_dir: Path) -> list[list[dict[str, Any]]]:
    """Every trial's reported results, one per evaluation, in the order the sampler drew the trials."""
    from ray.tune import ExperimentAnalysis

    trials = sorted(ExperimentAnalysis(str(tune_dir)).trials, key=lambda t: int(t.experiment_tag.split("_", 1)[0]))
    return [[json.loads(line) for line in (Path(t.path) / "result.json").read_text().splitlines() if line.strip()]
            for t in trials]


def replay_search(curves: list[list[dict[str, Any]]], scheduler: Any, max_concurrent: int,
                  rng: np.random.Generator | None) -> dict[str, Any]:
    """The search run again with `scheduler` deciding on the recorded results: trials start in
    the sampler's order as slots free, each report arrives after its recorded duration (times
    a log-normal jitter when `rng` is given). Returns trial-steps, the best final accuracy and
    the (val_accuracy, adapter_params) of each trial that ran to the end."""
    import heapq
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    events: list[tuple[float, int, int]] = []  # (time, trial, report)
    durations: dict[int, np.ndarray] = {}
    handles = [SimpleNamespace(trial_id=str(trial)) for trial in range(len(curves))]  # what the scheduler reads

    def start(trial: int, now: float) -> None:
        scheduler.on_trial_add(None, handles[trial])
        recorded = np.array([r.get("time_this_iter_s", 1.0) for r in curves[trial]])
        durations[trial] = recorded * (rng.lognormal(0.0, REPLAY_JITTER, len(recorded)) if rng else 1.0)
        heapq.heappush(events, (now + durations[trial][0], trial, 0))

    waiting = list(range(len(curves)))[::-1]
    for _ in range(min(max_concurrent, len(waiting))):
        start(waiting.pop(), 0.0)
    trial_steps, finals, finished = 0, [], []
    while events:
        now, trial, index = heapq.heappop(events)
        result, last = curves[trial][index], index == len(curves[trial]) - 1
        stopped = scheduler.on_trial_result(None, handles[trial], result) == TrialScheduler.STOP
        if not (stopped or last):
            heapq.heappush(events, (now + durations[trial][index + 1], trial, index + 1))
            continue
        scheduler.on_trial_complete(None, handles[trial], result)  # as Tune does, after a STOP too
        trial_steps += int(result.get("step", 0))
        if ran_to_the_end(result):
            finals.append(result["val_accuracy"])
            finished.append((result["val_accuracy"], float(result.get("adapter_params", "nan"))))
        if waiting:
            start(waiting.pop(), now)
    return {"trial_steps": trial_steps, "best_val_accuracy": max(finals, default=float("nan")), "finished": finished}


def replay_rows(experiment: dict[str, Any], curves: list[list[dict[str, Any]]], runs: int) -> list[dict[str, Any]]:
    """Per metric, reduction factor and grace period: the replay with the recorded times, and `runs` jittered ones."""
    from raysearch.search.tuner import build_scheduler

    none_steps = sum(int(c[-1].get("step", 0)) for c in curves)
    none_best = max(c[-1]["val_accuracy"] for c in curves if ran_to_the_end(c[-1]))
    concurrency = experiment["search"]["max_concurrent"]
    rows = []
    for metric, factor, grace in itertools.product(REPLAY_METRICS, REPLAY_FACTORS, REPLAY_GRACES):
        spec = spec_from_dict({**experiment, "search": {**experiment["search"], "early_stopping": {
            "scheduler": "asha", "metric": metric, "grace_period": grace, "reduction_factor": factor}}})
        rng = np.random.default_rng(0)
        recorded = replay_search(curves, build_scheduler(spec), concurrency, None)
        jittered = [replay_search(curves, build_scheduler(spec), concurrency, rng) for _ in range(runs)]
        steps = np.array([r["trial_steps"] for r in jittered]) / none_steps
        points = 100 * (np.array([r["best_val_accuracy"] for r in jittered]) - none_best)
        rows.append({"part": "asha_replay", "metric": metric, "reduction_factor": factor, "grace": grace, "runs": runs,
                     "recorded_steps": recorded["trial_steps"] / none_steps,
                     "recorded_points": 100 * (recorded["best_val_accuracy"] - none_best),
                     "steps_mean": float(steps.mean()), "points_mean": float(np.nanmean(points)),
                     "points_p10": float(np.nanpercentile(points, 10)), "points_p90": float(np.nanpercentile(points, 90)),
                     "within_accuracy": float(np.mean(points >= -100 * ACCURACY_TARGET)),
                     "targets_met": float(np.mean((steps <= STEPS_TARGET) & (points >= -100 * ACCURACY_TARGET)))})
    return rows


def first_evaluation(curves: list[list[dict[str, Any]]]) -> str:
    """What a grace-1 rung sees: the spread of the first evaluation, and where the eventual best trial ranked."""
    firsts = [c[0] for c in curves]
    best = max((i for i, c in enumerate(curves) if ran_to_the_end(c[-1])), key=lambda i: curves[i][-1]["val_accuracy"])
    losses, accuracies = [f["val_loss"] for f in firsts], [f["val_accuracy"] for f in firsts]
    rank = 1 + sum(loss < firsts[best]["val_loss"] for loss in losses)
    return (f"first evaluation (step {firsts[0].get('step')}): val_loss {min(losses):.4f}..{max(losses):.4f}, "
            f"val_accuracy {min(accuracies):.4f}..{max(accuracies):.4f}; the trial that ends best "
            f"({curves[best][-1]['val_accuracy']:.4f}) ranks {rank} of {len(curves)} by its first val_loss")


def print_replay_part(rows: list[dict[str, Any]], curves: list[list[dict[str, Any]]]) -> None:
    runs, trials = rows[0]["runs"], len(curves)
    print(f"\nASHA replayed on the {trials} learning curves of the search without stopping: the recorded report "
          f"times, then {runs} runs with each report's time x lognormal(0, {REPLAY_JITTER})")
    print(f"{'metric':<13}{'factor':>6}{'grace':>6} {'recorded: steps':>16} {'points':>7} {'jittered: steps':>16} {'points mean':>12}"
          f" {'p10..p90':>13} {'within 0.5':>10} {'both targets':>12}")
    for r in rows:
        print(f"{r['metric']:<13}{r['reduction_factor']:>6}{r['grace']:>6} {r['recorded_steps']:>16.2f} {r['recorded_points']:>+7.1f} "
              f"{r['steps_mean']:>16.2f} {r['points_mean']:>+12.1f} {r['points_p10']:>+6.1f}..{r['points_p90']:<+6.1f}"
              f"{r['within_accuracy']:>10.0%} {r['targets_met']:>12.0%}")
    print(first_evaluation(curves))


def replay_kept(workdir: Path, runs: int) -> list[dict[str, Any]]:
    """ASHA replayed on the search without stopping that ran in `workdir` (this run's, or an
    earlier one kept with `--workdir`)."""
    import yaml

    experiment = yaml.safe_load((workdir / f"{NO_STOPPING}.yaml").read_text())  # as harness.run_search wrote it
    curves = trial_curves(workdir / "results" / experiment["name"] / "tune")
    rows = replay_rows(experiment, curves, runs)
    print_replay_part(rows, curves)
    return rows
