"""Search efficiency: the hypervolume each sampler reaches after k trials, and the steps ASHA saves.

Part `table` (samplers). The objective is a lookup table of real trainings made in the same
run, not a training per trial: every configuration of a small discrete space (64: variant
lora/rora x rank 1..128 x lr, alpha 16) is trained once, in this process (the real worker
loop in Ray Train's local mode), with MiniLM on an SST-2 subsample; its final
val_accuracy and adapter_params are the table. Then each sampler raysearch builds
(`raysearch.search.tuner.make_sampler`: tpe, nsga2, random) runs an Optuna study over the same
space (raysearch's define-by-run function) for every seed, each trial looked up in the
table. Trials run one after another (a real search with max_concurrent > 1 proposes some
trials before earlier ones finish). TPE's first 10 trials and NSGA-II's first generation
are seeded random draws, so with the same seed they start like `random`. Hypervolume of
the (val_accuracy max, adapter_params min) front of the first k trials:
`raysearch.records.pareto.hypervolume` (the project's exact 2-D sweep; Optuna's own is private),
reference point (accuracy 0.5, 1.1 x the table's largest adapter_params), shown as a
fraction of the whole table's front. Target: a sampler's mean hypervolume reaches
random's mean 64-trial hypervolume within 32 trials.

Part `asha`. Real `raysearch run` searches of the same space, sampler, seed and number of
trials: no early stopping, then ASHA (val_loss, reduction factor 3, the experiment file's
defaults) at each grace period asked for (1, the default, and 2 evaluations). The sampler is
`random`, so every search trains the same configurations and they differ only in the
stopping (TPE would be told the stopped trials' early numbers and propose other ones).
Trial-steps: the sum of each trial's last reported `step`, read from Tune's results in the
search's storage; best val_accuracy: the best trial that ran to the end (what
`raysearch export --best` picks). Targets: ASHA spends at most 50% of the steps, its best
accuracy within 0.5 point. One ASHA search is one draw (which trials a rung compares depends
on the order reports arrive in), so the part then replays raysearch's ASHA scheduler on the
recorded learning curves of the search without stopping: with the recorded report times,
and 400 times with jittered ones, for val_loss and val_accuracy, reduction factors 3 (the
default) and 2, at grace 1, 2 and 3. It
trains nothing, and gives how often each setting meets the targets.

    python benchmarks/search_efficiency.py              # full: ~31 min on 2 CPU cores. table: 64 configurations,
        # each 48 steps (768 SST-2 train examples, batch 16, max_length 32) and scored on 256 dev examples;
        # 5 seeds x 64 trials per sampler. asha: 3 searches (none, grace 1, grace 2) of 16 trials, 96 steps
        # (1536 train examples), 8 evaluations on 256 dev examples, max_concurrent 2
    python benchmarks/search_efficiency.py --part table # only the samplers (~16 min)
    python benchmarks/search_efficiency.py --part asha  # only ASHA (~16 min)
    python benchmarks/search_efficiency.py --part asha --asha-grace 1 --asha-seed 1
        # the default ASHA against no stopping on another 16 configurations (~11 min)
    python benchmarks/search_efficiency.py --part asha --workdir runs/asha  # keep the searches' files, then
    python benchmarks/search_efficiency.py --replay runs/asha               # replay ASHA on them again (seconds)
    python benchmarks/search_efficiency.py --quick      # 4-configuration table of 2-step trainings, 1-trial searches
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from raysearch.records.pareto import hypervolume  # noqa: E402
from raysearch.experiment.space import define_by_run  # noqa: E402
from raysearch.search.tuner import make_sampler  # noqa: E402
from raysearch.experiment.spec import spec_from_dict  # noqa: E402
from trainables.contract import ran_to_the_end, trial_status  # noqa: E402

from asha_replay import ACCURACY_TARGET, NO_STOPPING, REPLAY_RUNS, STEPS_TARGET, replay_kept  # noqa: E402

SAMPLERS = ("tpe", "nsga2", "random")
STARTUP = (3, 5)  # TPE with fewer random start-up trials than Optuna's 10 (search.startup_trials): "tpe/startup=N"
# The table's space has as many configurations (64) as a study has trials, and samplers
# repeat configurations, so 64 random trials see about 63% of it, not all of it (a 48-entry
# table let every sampler find the whole front); the ASHA searches sample a smaller space.
CHOICES = {"variant": ["lora", "rora"], "rank": [1, 2, 4, 8, 16, 32, 64, 128], "alpha": [16],
           "lr": [1e-3, 2e-3, 4e-3, 8e-3]}
ASHA_CHOICES = {"variant": ["lora", "rora"], "rank": [2, 4, 8, 16, 32, 64], "alpha": [8, 32], "lr": [2e-3, 6e-3]}
QUICK_CHOICES = {"variant": ["lora", "rora"], "rank": [2, 4], "alpha": [8], "lr": [4e-3]}
SENSES = ["max", "min"]  # val_accuracy, adapter_params
REACH_BY = 32

Key = tuple[Any, ...]


def space_of(choices: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: {"choice": values} for name, values in choices.items()}


# --- part table: samplers on a lookup table of real trainings --------------------------


def build_table(experiment: dict[str, Any], choices: dict[str, list[Any]], workdir: Path) -> dict[Key, tuple[float, float]]:
    """Every configuration of the space trained once: key -> (val_accuracy, adapter_params)."""
    points = [dict(zip(choices, values)) for values in itertools.product(*choices.values())]
    configs = harness.trial_configs(experiment, points, workdir)
    labels = [" ".join(f"{k}={v}" for k, v in point.items()) for point in points]
    results = harness.train_each(configs, labels)
    return {tuple(p.values()): (m["val_accuracy"], float(m["adapter_params"])) for p, m in zip(points, results)}


def samplers() -> list[str]:
    return [*SAMPLERS, *(f"tpe/startup={n}" for n in STARTUP)]


def run_study(experiment: dict[str, Any], sampler: str, seed: int, trials: int,
              table: dict[Key, tuple[float, float]], names: list[str]) -> np.ndarray:
    """One sampler's study over the space, each trial answered from the table; (trials, 2) values."""
    name, _, startup = sampler.partition("/startup=")
    extra = {"startup_trials": int(startup)} if startup else {}
    search = spec_from_dict({**experiment, "search": {**experiment["search"], **extra, "sampler": name, "seed": seed,
                                                      "num_trials": trials}}).search
    study = optuna.create_study(directions=["maximize" if s == "max" else "minimize" for s in search.objectives.values()],
                                sampler=make_sampler(search))
    suggest = define_by_run(search.space)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        suggest(trial)
        return table[tuple(trial.params[name] for name in names)]

    study.optimize(objective, n_trials=trials)
    return np.array([t.values for t in study.trials])


def hypervolume_curves(experiment: dict[str, Any], table: dict[Key, tuple[float, float]], names: list[str],
                       seeds: list[int], trials: int) -> dict[str, np.ndarray]:
    """sampler -> (seeds, trials) hypervolume of the first k trials, as a fraction of the table's."""
    values = np.array(list(table.values()))
    reference = [0.5, 1.1 * values[:, 1].max()]
    whole = hypervolume(values, SENSES, reference) or 1.0
    curves = {}
    for sampler in samplers():
        rows = []
        for seed in seeds:
            found = run_study(experiment, sampler, seed, trials, table, names)
            rows.append([hypervolume(found[:k], SENSES, reference) / whole for k in range(1, trials + 1)])
        curves[sampler] = np.array(rows)
    return curves


def first_reach(curve: np.ndarray, threshold: float) -> int | None:
    """The smallest k (1-based) whose hypervolume reaches the threshold."""
    reached = np.nonzero(curve >= threshold - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else None


def table_rows(curves: dict[str, np.ndarray], ks: list[int]) -> list[dict[str, Any]]:
    threshold = float(curves["random"][:, ks[-1] - 1].mean())
    rows: list[dict[str, Any]] = []
    for sampler, runs in curves.items():
        for k in ks:
            rows.append({"part": "hypervolume", "sampler": sampler, "k": k,
                         "mean": float(runs[:, k - 1].mean()), "std": float(runs[:, k - 1].std())})
        rows.append({"part": "reach", "sampler": sampler, "threshold": threshold,
                     "trials_to_reach": first_reach(runs.mean(axis=0), threshold),
                     "per_seed": [first_reach(run, threshold) for run in runs]})
    return rows


def print_table_part(rows: list[dict[str, Any]], ks: list[int], seeds: int, table: dict[Key, tuple[float, float]]) -> None:
    accuracies = [a for a, _ in table.values()]
    print(f"\nlookup table: {len(table)} configurations, each trained once in this run; val_accuracy "
          f"{min(accuracies):.3f}..{max(accuracies):.3f}")
    reach = {r["sampler"]: r for r in rows if r["part"] == "reach"}
    threshold = next(iter(reach.values()))["threshold"]
    print(f"hypervolume / the whole table's, mean ± std over {seeds} seeds; target: random's k={ks[-1]} mean "
          f"({threshold:.3f}) within k={REACH_BY}")
    print(f"{'sampler':<16}" + "".join(f"{f'k={k}':>15}" for k in ks) + f"{'reaches at k':>14}  per seed")
    for sampler in samplers():
        cells = {r["k"]: r for r in rows if r["part"] == "hypervolume" and r["sampler"] == sampler}
        reached, per_seed = (reach[sampler][key] for key in ("trials_to_reach", "per_seed"))
        print(f"{sampler:<16}" + "".join(f"{cells[k]['mean']:>9.3f} ±{cells[k]['std']:.3f}" for k in ks)
              + f"{reached or f'>{ks[-1]}':>14}  " + " ".join(str(k or f">{ks[-1]}") for k in per_seed))
    best = min((r["trials_to_reach"] for r in reach.values() if r["trials_to_reach"]), default=None)
    verdict = "met" if best is not None and best <= REACH_BY else "missed"
    print(f"target {verdict}: fastest sampler reaches random's k={ks[-1]} hypervolume at k={best or f'>{ks[-1]}'}")


# --- part asha: the same search with and without early stopping ------------------------


def last_results(tune_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Each trial's last reported result, from Tune's records in the search's storage, and
    how many trials ended in an error (their steps are missing from the count)."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(tune_dir)).trials
    return [trial.last_result for trial in trials], sum(trial.status == "ERROR" for trial in trials)


def asha_experiments(data: Path, sizes: harness.Sizes, search: dict[str, Any],
                     graces: list[int]) -> dict[str, dict[str, Any]]:
    """The search without early stopping, then ASHA at each grace period (in evaluations)."""
    def search_with(name: str, stopping: dict[str, Any]) -> dict[str, Any]:
        return harness.experiment(name, data, sizes, {**search, "early_stopping": stopping})

    return {"none": search_with(NO_STOPPING, {"scheduler": "none"})} | {
        f"asha g={grace}": search_with(f"asha-g{grace}", {"scheduler": "asha", "grace_period": grace})
        for grace in graces}


def asha_rows(experiments: dict[str, dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for scheduler, experiment in experiments.items():
        run = harness.run_search(experiment, workdir)
        results, errored = last_results(run.storage_dir / "tune")
        completed = [r["val_accuracy"] for r in results if ran_to_the_end(r)]
        rows.append({"part": "asha", "scheduler": scheduler, "trials": len(results), "errored": errored,
                     "trial_steps": int(sum(r.get("step", 0) for r in results)),
                     "stopped_early": sum("step" in r and trial_status(r) == "early_stopped" for r in results),
                     "best_val_accuracy": max(completed, default=float("nan")), "wall_s": run.wall_s})
    return rows


def print_asha_part(rows: list[dict[str, Any]], sizes: harness.Sizes) -> None:
    none = next(r for r in rows if r["scheduler"] == "none")
    print(f"\nASHA (reduction factor 3, val_loss) vs no early stopping: {none['trials']} trials each, {sizes.describe()}")
    print(f"{'scheduler':<10} {'trials':>6} {'stopped':>7} {'trial-steps':>11} {'best val_acc':>12} {'wall s':>7}")
    for r in rows:
        print(f"{r['scheduler']:<10} {r['trials']:>6} {r['stopped_early']:>7} {r['trial_steps']:>11} "
              f"{r['best_val_accuracy']:>12.4f} {r['wall_s']:>7.0f}")
    for r in rows:
        if r["errored"]:
            print(f"WARNING: {r['errored']} trial(s) of the {r['scheduler']} search ended in an error; "
                  "the comparison is not valid")
    for asha in rows:
        if asha is none:
            continue
        steps = asha["trial_steps"] / max(1, none["trial_steps"])
        points = 100 * (asha["best_val_accuracy"] - none["best_val_accuracy"])
        met = steps <= STEPS_TARGET and points >= -100 * ACCURACY_TARGET
        print(f"{asha['scheduler']}: steps / none {steps:.2f} (target <= {STEPS_TARGET:.2f}); best accuracy - none "
              f"{points:+.1f} points (target >= {-100 * ACCURACY_TARGET:.1f}); wall time / none "
              f"{asha['wall_s'] / none['wall_s']:.2f}; targets {'met' if met else 'missed'}")


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-configuration table, 1-trial searches, 2-4 steps each")
    parser.add_argument("--part", choices=["all", "table", "asha"], default="all")
    parser.add_argument("--seeds", type=int, default=None, help="sampler seeds (at least 3)")
    parser.add_argument("--asha-trials", type=int, default=None, help="trials in each ASHA part search")
    parser.add_argument("--asha-grace", type=int, nargs="+", default=None,
                        help="ASHA grace periods (evaluations) to compare with no stopping (default 1 2; quick 1)")
    parser.add_argument("--asha-seed", type=int, default=0,
                        help="the ASHA part's sampler seed: another seed draws other configurations")
    parser.add_argument("--replay", type=Path, default=None, metavar="WORKDIR",
                        help="only replay ASHA on the search without stopping kept in WORKDIR (an earlier --workdir)")
    parser.add_argument("--replays", type=int, default=None,
                        help=f"jittered replays of ASHA on the recorded curves (default {REPLAY_RUNS}; quick 20)")
    parser.add_argument("--data", type=Path, default=harness.SST2, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the searches' files (logs, Tune records, MLflow) here; default: a temporary folder")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.replay:
        return harness.keep(replay_kept(args.replay, args.replays or REPLAY_RUNS), args.json)
    optuna.logging.set_verbosity(logging.WARNING)
    choices = QUICK_CHOICES if args.quick else CHOICES
    ks = [2, 4, 8] if args.quick else [8, 16, 24, 32, 64]
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    table_sizes = harness.Sizes(train_examples=32 if args.quick else 768, eval_examples=32 if args.quick else 256)
    asha_sizes = harness.Sizes(train_examples=64 if args.quick else 1536, eval_examples=32 if args.quick else 256,
                               evaluations=2 if args.quick else 8)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="raysearch-search-efficiency-"))
        if args.part in ("all", "table"):
            experiment = harness.experiment("samplers", args.data, table_sizes, {"space": space_of(choices)})
            print(f"training the lookup table ({table_sizes.describe()}):", flush=True)
            table = build_table(experiment, choices, Path(tmp))
            table_part = table_rows(hypervolume_curves(experiment, table, list(choices), seeds, ks[-1]), ks)
            print_table_part(table_part, ks, len(seeds), table)
            rows += table_part
        if args.part in ("all", "asha"):
            search = {"sampler": "random", "seed": args.asha_seed,
                      "num_trials": args.asha_trials or (1 if args.quick else 16),
                      "max_concurrent": 2, "space": space_of(QUICK_CHOICES if args.quick else ASHA_CHOICES)}
            graces = args.asha_grace or ([1] if args.quick else [1, 2])
            experiments = asha_experiments(args.data, asha_sizes, search, graces)
            asha_part = asha_rows(experiments, Path(tmp))
            print_asha_part(asha_part, asha_sizes)
            replay_part = replay_kept(Path(tmp), args.replays or (20 if args.quick else REPLAY_RUNS))
            rows += asha_part + replay_part
    print(f"\nmodel {harness.MODEL}, data {args.data}; table space {json.dumps(choices)}"
          + ("" if args.quick else f"; ASHA space {json.dumps(ASHA_CHOICES)}"))
    return harness.keep(rows, args.json)


if __name__ == "__main__":
    main()
