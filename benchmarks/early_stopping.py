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
MOASHA (objectives, η=2, grace 1) with min_rung_size 1, the rule before it had one; and
Hyperband brackets (`early_stopping.brackets`): MOASHA with 2 and 3, ASHA with 2. A replay
is in-sample when the setting it reports was chosen on the same curves; the default space has
no adaptive variant, so a trial never skips a rung there (`--space adaptive` has them).
`--no-replay` runs the real searches alone. `--schedulers` picks the real searches beside the
one without stopping (`moasha-b2`, `moasha-b3`: MOASHA with brackets; `none` alone records the
curves to replay); a search without stopping already kept in `--workdir` is reused.

Targets (issues 18 and 27), on every seed: <= 50% of the steps, hypervolume >= 95% of no
stopping's, best accuracy within 0.5 point. The real searches' table says, per seed and
search, which of the three it met; below it, on how many seeds each was met.

`--space adaptive` searches the variants whose budget moves while they train instead: AdaLoRA,
SoRA, SaLoRA and ALoRA (`alora_alloc`), with LoRA beside them (ADAPTIVE_SPACE, ADAPTIVE_ADAPTER).
Their schedules are set so that every budget settles inside the trial's 96 steps, after the
first evaluation and by the fifth (SoRA and one-round ALoRA at step 24 or earlier, AdaLoRA and
SaLoRA at 48, two-round ALoRA at 58; the script prints each one's step): until then a trial
reports `budget_settled: false` and MOASHA skips the rungs it reaches (ASHA judges it at every
rung on val_loss). The table's `unsettled` column counts the trials of each search that did.
The lr choices are 3e-3 and 1.2e-2: in docs/benchmarks.md §4.2 AdaLoRA and SaLoRA stayed
near chance at 3.8e-3 and learned at 1.9e-2, where LoRA collapsed; LoRA held at 1.2e-2.
Its searches are named `es-adaptive-...`, so both spaces can share a --workdir.

Under the tables, per seed: `settled_bound`, the fewest steps (share of no stopping's) that any
rule judging a trial only once its budget settled could spend while the whole front of no
stopping runs to the end; a step target below it is out of reach for MOASHA on those curves.

Held out: seeds 0, 1 and 2 chose the default setting (docs/benchmarks.md §3); seeds 3 and up
were not used to choose it.

    python benchmarks/early_stopping.py                    # 3 seeds x 3 searches, ~45 min on 2 CPU cores
    python benchmarks/early_stopping.py --seeds 3 4 5 --no-replay --workdir runs/es   # held out, real searches only
    python benchmarks/early_stopping.py --space adaptive --seeds 3 4 5 --no-replay --workdir runs/es
    python benchmarks/early_stopping.py --seeds 0 --workdir runs/es   # one seed, keep the files
    python benchmarks/early_stopping.py --replay runs/es   # replay again on kept searches (seconds)
    python benchmarks/early_stopping.py --space adaptive --replay runs/es   # the same, on the adaptive searches
    python benchmarks/early_stopping.py --quick            # 2-trial searches of 4 steps: checks it runs
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
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
from raysearch.records.pareto import hypervolume, pareto_mask  # noqa: E402
from raysearch.experiment.spec import spec_from_dict  # noqa: E402
from trainables.contract import BUDGET_SETTLED, ran_to_the_end  # noqa: E402

ADAPTIVE_SPACE = {  # --space adaptive: the variants that report budget_settled: false, and LoRA
    "variant": {"choice": ["lora", "adalora", "sora", "salora", "alora_alloc"]},
    "rank": {"choice": [4, 8, 16]},
    "lr": {"choice": [3e-3, 1.2e-2]},
    "adalora_target_r": {"choice": [1, 2], "when": {"variant": ["adalora"]}},
    "sora_lambda": {"choice": [0.01, 0.1], "when": {"variant": ["sora"]}},
    "salora_target_density": {"choice": [0.25, 0.5], "when": {"variant": ["salora"]}},
    "alora_rounds": {"choice": [1, 2], "when": {"variant": ["alora_alloc"]}},
}
# The schedules, for 96 steps evaluated every 12: AdaLoRA prunes from step 9 to 48 (tinit 0.1,
# tfinal 0.5); SoRA's lambda ramps up over 24 steps; SaLoRA's gates move from step 9 to 48;
# ALoRA's rounds run after steps 20 (and 58 with two rounds). SoRA's gates keep closing after
# its ramp (the gate lr, 0.5, follows the main schedule), so it is judged at a rung by the
# adapter it has then.
ADAPTIVE_ADAPTER = {"alpha": 16, "adalora_tinit": 0.1, "adalora_tfinal": 0.5, "adalora_delta_t": 5,
                    "sora_warmup": 0.25, "sora_gate_lr": 0.5, "salora_t_end": 0.5, "alora_first_round": 0.2}
# --quick: ALoRA with two rounds settles at step 3 of 4, so it reports unsettled at evaluation 1
QUICK_ADAPTIVE_SPACE = {"variant": {"choice": ["alora_alloc"]}, "rank": {"choice": [4]}, "lr": {"choice": [4e-3]},
                        "alora_rounds": {"choice": [2], "when": {"variant": ["alora_alloc"]}}}

SCHEDULERS = {  # the real searches: name -> search.early_stopping (--schedulers picks; "none" always runs)
    "none": {"scheduler": "none"},
    "asha": {"scheduler": "asha", "metric": "val_loss"},
    "moasha": {"scheduler": "moasha"},
    "moasha-b2": {"scheduler": "moasha", "brackets": 2},
    "moasha-b3": {"scheduler": "moasha", "brackets": 3},
}
DEFAULT_SCHEDULERS = ["none", "asha", "moasha"]
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
    *[(f"moasha acc+params eta=2 g=1 brackets={b}", {"scheduler": "moasha", "reduction_factor": 2, "grace_period": 1,
                                                    "brackets": b}) for b in (2, 3)],
    ("asha val_loss eta=2 g=1 brackets=2", {"scheduler": "asha", "metric": "val_loss", "reduction_factor": 2,
                                            "grace_period": 1, "brackets": 2}),
]
SENSES = ["max", "min"]
STEPS_TARGET, HV_TARGET, POINTS_TARGET = 0.5, 0.95, -0.5
REPLAYS = 200


def name_of(scheduler: str, seed: int, space: str = "default") -> str:
    return f"es-{scheduler}-s{seed}" if space == "default" else f"es-{space}-{scheduler}-s{seed}"


def space_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration of a space of choices (a `when` dimension only with its variants)."""
    points = []
    for variant in space["variant"]["choice"]:
        dims = {name: dim["choice"] for name, dim in space.items()
                if name != "variant" and variant in dim.get("when", {}).get("variant", [variant])}
        points += [{"variant": variant, **dict(zip(dims, values))} for values in itertools.product(*dims.values())]
    return points


def settling(space: dict[str, Any], adapter: dict[str, Any], sizes: harness.Sizes) -> list[dict[str, Any]]:
    """Per configuration: the step its budget settles at (trainables/adapters `budget_settles_at`)
    and the first evaluation that reports `budget_settled: true`, the earliest MOASHA judges it."""
    from trainables.adapters import ADAPTERS

    every = max(1, sizes.steps // sizes.evaluations)
    rows = []
    for point in space_points(space):
        settles_at = ADAPTERS[point["variant"]]({**adapter, **point}, "classification", sizes.steps).budget_settles_at()
        first = max(1, math.ceil(settles_at / every))
        rows.append({**point, "settles_at": settles_at,
                     "first_settled_evaluation": first if settles_at <= sizes.steps else None})
    return rows


def print_settling(rows: list[dict[str, Any]], sizes: harness.Sizes) -> None:
    print(f"\nbudgets: the step each configuration's budget settles at, of {sizes.steps} "
          f"(evaluations every {max(1, sizes.steps // sizes.evaluations)} steps)")
    seen = set()
    for r in rows:
        text = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("settles_at", "first_settled_evaluation", "lr"))
        if text not in seen:
            seen.add(text)
            print(f"  {text}: step {r['settles_at']}, settled from evaluation {r['first_settled_evaluation']}")


def front_hypervolume(points: list[tuple[float, float]], reference: list[float]) -> float:
    return hypervolume(np.array(points, dtype=float).reshape(-1, 2), SENSES, reference)


def reference_of(curves: list[list[dict[str, Any]]]) -> list[float]:
    return [0.5, 1.1 * max(float(c[-1]["adapter_params"]) for c in curves)]


def settled_bound(curves: list[list[dict[str, Any]]], milestones: list[float]) -> dict[str, Any]:
    """The fewest trial-steps, as a share of no stopping's, that any rule judging a trial only
    once its budget has settled (as MOASHA does) can spend while every trial of no stopping's
    finished front runs to the end: an oracle that knows the front and stops every other trial
    at the first rung (evaluation `milestones`) it reaches settled, or runs it out if it never
    does (of trials that end at the same point of the front, one runs to the end). A step
    target below this bound is out of reach for such a rule on these curves."""
    points = np.array([[c[-1]["val_accuracy"], float(c[-1]["adapter_params"])] for c in curves], dtype=float)
    on_front = pareto_mask(points, SENSES)
    for i in np.flatnonzero(on_front):  # one trial of each point of the front is enough
        if any(on_front[j] and np.array_equal(points[i], points[j]) for j in range(i)):
            on_front[i] = False
    total = sum(int(c[-1].get("step", 0)) for c in curves)
    spent = 0
    for curve, front in zip(curves, on_front):
        judged = [r for r in curve if r.get(BUDGET_SETTLED) is not False and r.get("evaluation") in milestones]
        spent += int((curve[-1] if front or not judged else judged[0]).get("step", 0))
    return {"settled_bound": spent / total if total else float("nan"), "front": int(on_front.sum())}


def measured(label: str, seed: int, steps: int, finished: list[tuple[float, float]], none: dict[str, Any],
             reference: list[float]) -> dict[str, Any]:
    best = max((a for a, _ in finished), default=float("nan"))
    row = {"seed": seed, "scheduler": label, "trial_steps": steps, "finished": len(finished),
           "steps_ratio": steps / none["trial_steps"],
           "hv_ratio": front_hypervolume(finished, reference) / none["hv"] if none["hv"] else float("nan"),
           "best_val_accuracy": best, "points": 100 * (best - none["best_val_accuracy"])}
    row["steps_met"] = bool(row["steps_ratio"] <= STEPS_TARGET)
    row["hv_met"] = bool(row["hv_ratio"] >= HV_TARGET)  # False when nan
    row["points_met"] = bool(row["points"] >= POINTS_TARGET)
    row["targets_met"] = row["steps_met"] and row["hv_met"] and row["points_met"]
    return row


def real_rows(seed: int, data: Path, sizes: harness.Sizes, search: dict[str, Any], workdir: Path,
              space: str = "default", adapter: dict[str, Any] | None = None,
              schedulers: list[str] | None = None) -> list[dict[str, Any]]:
    """The real searches of one seed: no stopping, then `schedulers` (default: ASHA and MOASHA).
    A search without stopping already in `workdir` (an earlier run's, same seed) is reused."""
    runs, experiments = {}, {}
    for scheduler in ["none", *[s for s in schedulers or DEFAULT_SCHEDULERS if s != "none"]]:
        stopping = SCHEDULERS[scheduler]
        experiment = harness.experiment(name_of(scheduler, seed, space), data, sizes,
                                        {**search, "seed": seed, "early_stopping": stopping}, adapter=adapter)
        experiments[scheduler] = experiment
        print(f"seed {seed}: search with {scheduler} ...", flush=True)
        run = kept_search(experiment, workdir) if scheduler == "none" else None
        if run is None:
            run = harness.run_search(experiment, workdir)
            (workdir / f"{experiment['name']}.wall").write_text(f"{run.wall_s}\n")
        else:
            print(f"seed {seed}: the search without stopping kept in {workdir} is reused", flush=True)
        results, errored = efficiency.last_results(run.storage_dir / "tune")
        if errored:
            print(f"WARNING: {errored} trial(s) of {experiment['name']} ended in an error; not a valid comparison")
        finished = [(r["val_accuracy"], float(r["adapter_params"])) for r in results if ran_to_the_end(r)]
        # trials that reported an unsettled budget: MOASHA skipped the rungs they reached then
        unsettled = sum(any(r.get(BUDGET_SETTLED) is False for r in curve)
                        for curve in asha_replay.trial_curves(run.storage_dir / "tune"))
        runs[scheduler] = {"steps": int(sum(r.get("step", 0) for r in results)), "finished": finished,
                           "wall_s": run.wall_s, "errored": errored, "trials": len(results), "unsettled": unsettled}
    curves = asha_replay.trial_curves(workdir / "results" / name_of("none", seed, space) / "tune")
    reference = reference_of(curves)
    none = {"trial_steps": runs["none"]["steps"], "hv": front_hypervolume(runs["none"]["finished"], reference),
            "best_val_accuracy": max(a for a, _ in runs["none"]["finished"])}
    rows = []
    for scheduler, run in runs.items():
        row = measured(scheduler, seed, run["steps"], run["finished"], none, reference)
        rows.append({**row, "part": "real", "space": space, "trials": run["trials"], "errored": run["errored"],
                     "unsettled": run["unsettled"], "wall_s": run["wall_s"],
                     "wall_ratio": run["wall_s"] / runs["none"]["wall_s"]})
    return rows + [bound_row(experiments["none"], curves, seed, space)]


def bound_row(experiment: dict[str, Any], curves: list[list[dict[str, Any]]], seed: int, space: str) -> dict[str, Any]:
    """`settled_bound` on the curves without stopping, at the default MOASHA's rungs."""
    from raysearch.search.tuner import build_scheduler

    spec = spec_from_dict({**experiment, "search": {**experiment["search"], "early_stopping": {"scheduler": "moasha"}}})
    return {"part": "bound", "seed": seed, "space": space, **settled_bound(curves, build_scheduler(spec).milestones)}


def kept_search(experiment: dict[str, Any], workdir: Path) -> harness.SearchRun | None:
    """An earlier run's search of this very experiment in `workdir`, finished (its wall time
    from `<name>.wall`, written after it ran; NaN from a run before that file existed)."""
    import yaml

    name = experiment["name"]
    written, state = workdir / f"{name}.yaml", workdir / "results" / name / "tune"
    if not written.exists() or yaml.safe_load(written.read_text()) != experiment or not state.exists():
        return None
    results, errored = efficiency.last_results(state)
    if errored or len(results) != experiment["search"]["num_trials"]:
        return None
    wall = workdir / f"{name}.wall"
    wall_s = float(wall.read_text()) if wall.exists() else float("nan")
    return harness.SearchRun(workdir / "results" / name, 0.0, wall_s)


def replay_rows(seed: int, workdir: Path, replays: int, space: str = "default") -> list[dict[str, Any]]:
    """Every replayed setting on the curves of this seed's search without stopping."""
    import yaml

    experiment = yaml.safe_load((workdir / f"{name_of('none', seed, space)}.yaml").read_text())
    curves = asha_replay.trial_curves(workdir / "results" / experiment["name"] / "tune")
    return replay_on(experiment, curves, seed, replays) + [bound_row(experiment, curves, seed, space)]


def replay_on(experiment: dict[str, Any], curves: list[list[dict[str, Any]]], seed: int,
              replays: int) -> list[dict[str, Any]]:
    """Every replayed setting on these learning curves (each trial's results, in start order)."""
    from raysearch.search.tuner import build_scheduler

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
        print(f"{'seed':>4} {'scheduler':<9} {'finished':>8} {'unsettled':>9} {'trial-steps':>11} {'steps/none':>10} "
              f"{'hv/none':>8} {'best acc':>9} {'points':>7} {'wall/none':>9} {'steps<=0.5':>10} {'hv>=0.95':>8} "
              f"{'best-0.5pt':>10} {'all three':>9}")

        def verdict(r: dict[str, Any], key: str) -> str:
            return "-" if r["scheduler"] == "none" else ("met" if r[key] else "MISSED")

        for r in real:
            print(f"{r['seed']:>4} {r['scheduler']:<9} {r['finished']:>8} {r.get('unsettled', 0):>9} "
                  f"{r['trial_steps']:>11} {r['steps_ratio']:>10.2f} {r['hv_ratio']:>8.3f} {r['best_val_accuracy']:>9.4f} "
                  f"{r['points']:>+7.1f} {r['wall_ratio']:>9.2f} {verdict(r, 'steps_met'):>10} "
                  f"{verdict(r, 'hv_met'):>8} {verdict(r, 'points_met'):>10} {verdict(r, 'targets_met'):>9}")
        for scheduler in [s for s in SCHEDULERS if s != "none" and any(r["scheduler"] == s for r in real)]:
            mine = [r for r in real if r["scheduler"] == scheduler]
            counts = ", ".join(f"{label} on {sum(r[key] for r in mine)} of {len(mine)}"
                               for label, key in (("steps", "steps_met"), ("hypervolume", "hv_met"),
                                                  ("best", "points_met"), ("all three", "targets_met")))
            missed = [r["seed"] for r in mine if not r["targets_met"]]
            print(f"{scheduler}: targets met per seed: {counts}"
                  + (f"; seeds missing one or more: {' '.join(map(str, missed))}" if missed else ""))
    bounds = {r["seed"]: r for r in rows if r["part"] == "bound"}
    if bounds:
        print("\nthe fewest steps a rule that judges a trial only once its budget settled can use while the whole "
              "front of no stopping runs to the end (an oracle on the curves without stopping, at the default "
              "MOASHA's rungs): " + ", ".join(f"seed {s} {b['settled_bound']:.2f} ({b['front']} front trials)"
                                              for s, b in sorted(bounds.items())))
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
    parser.add_argument("--no-replay", action="store_true", help="the real searches only, no replay after them")
    parser.add_argument("--space", choices=("default", "adaptive"), default="default",
                        help="default: LoRA/RoRA x rank x alpha x lr (docs/benchmarks.md §3); adaptive: AdaLoRA, "
                             "SoRA, SaLoRA, ALoRA and LoRA, whose budgets settle while they train")
    parser.add_argument("--schedulers", nargs="+", choices=list(SCHEDULERS),
                        default=None, help=f"the real searches beside no stopping (default: "
                                           f"{' '.join(DEFAULT_SCHEDULERS[1:])}); a search without stopping "
                                           "kept in --workdir is reused")
    parser.add_argument("--data", type=Path, default=harness.SST2, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the searches' files here")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    replays = args.replays or (5 if args.quick else REPLAYS)
    if args.replay:
        pattern = f"{name_of('none', 0, args.space)[:-1]}*.yaml"
        kept = sorted(int(p.stem.rsplit("-s", 1)[1]) for p in args.replay.glob(pattern))
        rows = [row for seed in (args.seeds or kept) for row in replay_rows(seed, args.replay, replays, args.space)]
        print_rows(rows)
        return harness.keep(rows, args.json)
    sizes = harness.Sizes(train_examples=64 if args.quick else 1536, eval_examples=32 if args.quick else 256,
                          evaluations=2 if args.quick else 8)
    if args.space == "adaptive":
        space, adapter = (QUICK_ADAPTIVE_SPACE if args.quick else ADAPTIVE_SPACE), ADAPTIVE_ADAPTER
        print_settling(settling(space, adapter, sizes), sizes)
    else:
        space, adapter = efficiency.space_of(efficiency.QUICK_CHOICES if args.quick else efficiency.ASHA_CHOICES), None
    # The default-first trial is off: every search draws the same configurations as before this
    # benchmark existed (docs/benchmarks.md §3's ASHA tables), and the stopping is all that differs.
    search = {"sampler": "random", "num_trials": 2 if args.quick else 16, "max_concurrent": 2,
              "start_with_defaults": False, "space": space}
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="raysearch-early-stopping-")))
        for seed in seeds:
            rows += real_rows(seed, args.data, sizes, search, workdir, args.space, adapter, args.schedulers)
            if not args.no_replay:
                rows += replay_rows(seed, workdir, replays, args.space)
        print(f"\nmodel {harness.MODEL}, data {args.data}, {sizes.describe()}; {args.space} space "
              f"{json.dumps(space)}" + (f"; adapter {json.dumps(adapter)}" if adapter else ""))
        print_rows(rows)
    return harness.keep(rows, args.json)


if __name__ == "__main__":
    main()
