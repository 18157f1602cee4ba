"""Early stopping for a two-objective search: no stopping vs ASHA on val_loss vs MOASHA, side by side.

For each seed, three real `raysearch run` searches of the same 16 configurations (random
sampler, the same seed: they differ only in the stopping): no early stopping, ASHA on val_loss
and MOASHA, each with raysearch's defaults as they are when the script runs (today: grace 1,
reduction factor 2; MOASHA ranks on the objectives themselves, val_accuracy and
adapter_params, with min_rung_size ⌊2⌋ + 1 = 3). The published real-search table
(docs/benchmarks.md §3, 2026-11-30) ran the defaults of that day: reduction factor 3 for both,
MOASHA on val_loss and adapter_params, without min_rung_size. MiniLM on an SST-2 subsample,
96 steps a trial, 8 evaluations, 2 trials at a time. Reported per search: trial-steps (the sum
of each trial's last reported step), the hypervolume of the front of the trials that ran to the
end as a fraction of the search without stopping's (reference: accuracy 0.5, 1.1 x the largest
adapter_params of the space's trials), and the best val_accuracy of a trial that ran to the end.

Then the replay: each scheduler setting is fed the learning curves the search without
stopping recorded (`asha_replay.replay_search`: trials start in the sampler's order as slots
free, reports arrive after their recorded durations, Tune's hooks are called in Tune's order),
once with the recorded times and REPLAYS times with each report's time x lognormal(0, 0.2),
which changes which trials a rung compares. Settings: ASHA on val_loss, MOASHA on (val_loss,
adapter_params) and on the objectives themselves (val_accuracy, adapter_params), reduction
factors 3 and 2, grace 1 and 2, each MOASHA with its default min_rung_size; and the default
MOASHA (objectives, η=2, grace 1) with min_rung_size 1, the rule before it had one. A replay
is in-sample when the setting it reports was chosen on the same curves; the space has no
adaptive variant, so a trial never skips a rung here.

Targets (issue 18), on every seed: <= 50% of the steps, hypervolume >= 95% of no stopping's,
best accuracy within 0.5 point.

    python benchmarks/early_stopping.py                    # 3 seeds x 3 searches, ~45 min on 2 CPU cores
    python benchmarks/early_stopping.py --seeds 0 --workdir runs/es   # one seed, keep the files
    python benchmarks/early_stopping.py --replay runs/es   # replay again on kept searches (seconds)
    python benchmarks/early_stopping.py --quick            # 2-trial searches of 4 steps: checks it runs
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()

import numpy as np  # noqa: E402

import asha_replay  # noqa: E402
import search_efficiency as efficiency  # noqa: E402
from raysearch.pareto import hypervolume  # noqa: E402
from raysearch.spec import spec_from_dict  # noqa: E402
from trainables.contract import ran_to_the_end  # noqa: E402

SCHEDULERS = {  # the real searches: name -> search.early_stopping
    "none": {"scheduler": "none"},
    "asha": {"scheduler": "asha", "metric": "val_loss"},
    "moasha": {"scheduler": "moasha"},
}
REPLAYED = [  # (label, early_stopping) for the replay
    *[(f"asha val_loss eta={eta} g={grace}", {"scheduler": "asha", "metric": "val_loss", "reduction_factor": eta,
                                              "grace_period": grace}) for eta, grace in itertools.product((3, 2), (1, 2))],
    *[(f"moasha loss+params eta={eta} g={grace}", {"scheduler": "moasha", "reduction_factor": eta, "grace_period": grace,
                                                   "metrics": {"val_loss": "min", "adapter_params": "min"}})
      for eta, grace in itertools.product((3, 2), (1, 2))],
    *[(f"moasha acc+params eta={eta} g={grace}", {"scheduler": "moasha", "reduction_factor": eta, "grace_period": grace,
                                                  "metrics": {"val_accuracy": "max", "adapter_params": "min"}})
      for eta, grace in itertools.product((3, 2), (1, 2))],
    ("moasha acc+params eta=2 g=1 min_rung_size=1", {"scheduler": "moasha", "reduction_factor": 2, "grace_period": 1,
                                                     "min_rung_size": 1}),
]
SENSES = ["max", "min"]
STEPS_TARGET, HV_TARGET, POINTS_TARGET = 0.5, 0.95, -0.5
REPLAYS = 200


def name_of(scheduler: str, seed: int) -> str:
    return f"es-{scheduler}-s{seed}"


def front_hypervolume(points: list[tuple[float, float]], reference: list[float]) -> float:
    return hypervolume(np.array(points, dtype=float).reshape(-1, 2), SENSES, reference)


def reference_of(curves: list[list[dict[str, Any]]]) -> list[float]:
    return [0.5, 1.1 * max(float(c[-1]["adapter_params"]) for c in curves)]


def measured(label: str, seed: int, steps: int, finished: list[tuple[float, float]], none: dict[str, Any],
             reference: list[float]) -> dict[str, Any]:
    best = max((a for a, _ in finished), default=float("nan"))
    row = {"seed": seed, "scheduler": label, "trial_steps": steps, "finished": len(finished),
           "steps_ratio": steps / none["trial_steps"],
           "hv_ratio": front_hypervolume(finished, reference) / none["hv"] if none["hv"] else float("nan"),
           "best_val_accuracy": best, "points": 100 * (best - none["best_val_accuracy"])}
    row["targets_met"] = bool(row["steps_ratio"] <= STEPS_TARGET and row["hv_ratio"] >= HV_TARGET
                              and row["points"] >= POINTS_TARGET)
    return row


def real_rows(seed: int, data: Path, sizes: harness.Sizes, search: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """The three real searches of one seed."""
    runs = {}
    for scheduler, stopping in SCHEDULERS.items():
        experiment = harness.experiment(name_of(scheduler, seed), data, sizes,
                                        {**search, "seed": seed, "early_stopping": stopping})
        print(f"seed {seed}: search with {scheduler} ...", flush=True)
        run = harness.run_search(experiment, workdir)
        results, errored = efficiency.last_results(run.storage_dir / "tune")
        if errored:
            print(f"WARNING: {errored} trial(s) of {experiment['name']} ended in an error; not a valid comparison")
        finished = [(r["val_accuracy"], float(r["adapter_params"])) for r in results if ran_to_the_end(r)]
        runs[scheduler] = {"steps": int(sum(r.get("step", 0) for r in results)), "finished": finished,
                           "wall_s": run.wall_s}
    curves = asha_replay.trial_curves(workdir / "results" / name_of("none", seed) / "tune")
    reference = reference_of(curves)
    none = {"trial_steps": runs["none"]["steps"], "hv": front_hypervolume(runs["none"]["finished"], reference),
            "best_val_accuracy": max(a for a, _ in runs["none"]["finished"])}
    rows = []
    for scheduler, run in runs.items():
        row = measured(scheduler, seed, run["steps"], run["finished"], none, reference)
        rows.append({**row, "part": "real", "wall_s": run["wall_s"], "wall_ratio": run["wall_s"] / runs["none"]["wall_s"]})
    return rows


def replay_rows(seed: int, workdir: Path, replays: int) -> list[dict[str, Any]]:
    """Every replayed setting on the curves of this seed's search without stopping."""
    import yaml

    experiment = yaml.safe_load((workdir / f"{name_of('none', seed)}.yaml").read_text())
    curves = asha_replay.trial_curves(workdir / "results" / experiment["name"] / "tune")
    return replay_on(experiment, curves, seed, replays)


def replay_on(experiment: dict[str, Any], curves: list[list[dict[str, Any]]], seed: int,
              replays: int) -> list[dict[str, Any]]:
    """Every replayed setting on these learning curves (each trial's results, in start order)."""
    from raysearch.tuner import build_scheduler

    reference = reference_of(curves)
    finished = [(c[-1]["val_accuracy"], float(c[-1]["adapter_params"])) for c in curves if ran_to_the_end(c[-1])]
    none = {"trial_steps": sum(int(c[-1].get("step", 0)) for c in curves), "hv": front_hypervolume(finished, reference),
            "best_val_accuracy": max(a for a, _ in finished)}
    concurrency = experiment["search"]["max_concurrent"]
    rows = []
    for label, stopping in REPLAYED:
        spec = spec_from_dict({**experiment, "search": {**experiment["search"], "early_stopping": stopping}})
        recorded = asha_replay.replay_search(curves, build_scheduler(spec), concurrency, None)
        rng = np.random.default_rng(0)
        jittered = [measured(label, seed, r["trial_steps"], r["finished"], none, reference)
                    for r in (asha_replay.replay_search(curves, build_scheduler(spec), concurrency, rng)
                              for _ in range(replays))]
        rows.append({**measured(label, seed, recorded["trial_steps"], recorded["finished"], none, reference),
                     "part": "replay", "replays": replays,
                     "jittered_targets_met": float(np.mean([j["targets_met"] for j in jittered])),
                     "jittered_steps": float(np.mean([j["steps_ratio"] for j in jittered])),
                     "jittered_hv": float(np.mean([j["hv_ratio"] for j in jittered])),
                     "jittered_points": float(np.mean([j["points"] for j in jittered]))})
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    real = [r for r in rows if r["part"] == "real"]
    if real:
        print(f"\nreal searches (targets: steps <= {STEPS_TARGET:.2f} x none, hypervolume >= {HV_TARGET:.2f} x none, "
              f"best accuracy >= {POINTS_TARGET:+.1f} points)")
        print(f"{'seed':>4} {'scheduler':<8} {'finished':>8} {'trial-steps':>11} {'steps/none':>10} {'hv/none':>8} "
              f"{'best acc':>9} {'points':>7} {'wall/none':>9} {'targets':>8}")
        for r in real:
            print(f"{r['seed']:>4} {r['scheduler']:<8} {r['finished']:>8} {r['trial_steps']:>11} {r['steps_ratio']:>10.2f} "
                  f"{r['hv_ratio']:>8.3f} {r['best_val_accuracy']:>9.4f} {r['points']:>+7.1f} {r['wall_ratio']:>9.2f} "
                  f"{'met' if r['targets_met'] else 'missed':>8}")
    replay = [r for r in rows if r["part"] == "replay"]
    if replay:
        seeds = sorted({r["seed"] for r in replay})
        print(f"\nreplayed on each seed's curves without stopping (recorded order: steps/none, hv/none, points; "
              f"[share of {replay[0]['replays']} jittered orders meeting all three targets])")
        print(f"{'setting':<46}" + "".join(f"{f'seed {s}':>30}" for s in seeds) + f"{'met (recorded)':>16}")
        for label, _ in REPLAYED:
            cells = [next(r for r in replay if r["seed"] == s and r["scheduler"] == label) for s in seeds]
            text = [f"{c['steps_ratio']:.2f} {c['hv_ratio']:.3f} {c['points']:+.1f} [{c['jittered_targets_met']:.0%}]"
                    for c in cells]
            met = f"{sum(c['targets_met'] for c in cells)} of {len(cells)}"
            print(f"{label:<46}" + "".join(f"{t:>30}" for t in text) + f"{met:>16}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-trial searches of 4 steps: checks the script runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2)")
    parser.add_argument("--replay", type=Path, default=None, metavar="WORKDIR",
                        help="only replay, on the searches without stopping kept in WORKDIR (an earlier --workdir)")
    parser.add_argument("--replays", type=int, default=None, help=f"jittered replays per setting (default {REPLAYS})")
    parser.add_argument("--data", type=Path, default=harness.SST2, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the searches' files here")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    replays = args.replays or (5 if args.quick else REPLAYS)
    if args.replay:
        kept = sorted(int(p.stem.rsplit("-s", 1)[1]) for p in args.replay.glob(f"{name_of('none', 0)[:-1]}*.yaml"))
        rows = [row for seed in (args.seeds or kept) for row in replay_rows(seed, args.replay, replays)]
        print_rows(rows)
        return harness.keep(rows, args.json)
    sizes = harness.Sizes(train_examples=64 if args.quick else 1536, eval_examples=32 if args.quick else 256,
                          evaluations=2 if args.quick else 8)
    # The default-first trial is off: every search draws the same configurations as before this
    # benchmark existed (docs/benchmarks.md §3's ASHA tables), and the stopping is all that differs.
    search = {"sampler": "random", "num_trials": 2 if args.quick else 16, "max_concurrent": 2,
              "start_with_defaults": False, "space": efficiency.space_of(
                  efficiency.QUICK_CHOICES if args.quick else efficiency.ASHA_CHOICES)}
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="raysearch-early-stopping-")))
        for seed in seeds:
            rows += real_rows(seed, args.data, sizes, search, workdir)
            rows += replay_rows(seed, workdir, replays)
        print(f"\nmodel {harness.MODEL}, data {args.data}, {sizes.describe()}; space "
              f"{json.dumps(efficiency.ASHA_CHOICES)}")
        print_rows(rows)
    return harness.keep(rows, args.json)


if __name__ == "__main__":
    main()
