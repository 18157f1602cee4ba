"""Platform overhead: a raysearch search of N fixed trials vs the same training loops run
back to back in one plain Python process.

raysearch runs twice per trial length, once per way a 1-worker trial can train
(`resources.inline_single_worker`): `inline` (the default: the loop runs in the trial's
Tune function, which Tune reuses from trial to trial) and `ray_train` (every trial a Ray
Train run: a controller and a worker process per trial). Both are compared with the same
plain run.

Both sides are child processes of this script, timed from spawn to exit, so both pay
interpreter start and imports:
- raysearch: `raysearch run` on a grid of N ranks (one trial each), ASHA off,
  max_concurrent 1 (nothing to divide by), storage and MLflow (sqlite) in a temporary
  folder. resources.cpus_per_worker is every core, so the trial's worker gets as many
  torch threads as the plain process (Ray sets OMP_NUM_THREADS from a worker's CPUs).
  The command line runs in a child that puts clocks around `ray.init`/`ray.shutdown`,
  the preflight checks and raysearch's MLflow callback hooks, adds a Tune callback that
  notes when each trial starts, reports and completes, then calls the same typer app as
  the `raysearch` script.
- plain: the same workers' configs (`base_config` + `trial_config` of the validated
  experiment at the same grid points), each run by the real worker function
  `train_loop_per_worker` in Ray Train's local mode (`ScalingConfig(num_workers=0)`: the
  function runs in the calling process, no Ray is started, reports stay in memory).

The ratio is raysearch's wall time over plain's. The breakdown is a timeline whose rows
add up to each side's wall time. Measured: imports; Ray start (time in `ray.init`);
preflight; trial start (Tune's on_trial_start, when the trial's function process is up ->
the loop's first line, its `loop_started_at`: Train controller, worker process and its
imports); setup (the loop's `setup_s`: data, model load, adapter); trial end (final result
at the driver -> trial complete: worker group shut down); between trials (a trial
complete -> the next one's function process up, MLflow closing the run meanwhile); MLflow
(time in raysearch's MLflow hooks and the closing leaderboard read, spread over the other
rows). Estimated by difference: reporting and checkpointing = the training row's raysearch
time minus plain's (it also holds any slow-down from Ray's processes sharing the cores);
and the trial length at which the ratio would be 1.10, assuming this run's fixed and
per-trial extras do not grow with length. What the first trial's start costs beyond a
later trial's (inline: the new process imports the loop; later trials reuse it) is
counted as fixed. Each trial length is its own pair of runs, each
trial evaluated (reported, checkpointed) the same number of times.

    python benchmarks/overhead.py            # full: 4 trials of 16, then of 64 steps (MiniLM, SST-2: 256 / 1,024
                                             #   train and 128 dev examples, batch 16, 4 evaluations), each
                                             #   length: plain, inline, ray_train; ~9 min on 2 CPU cores
    python benchmarks/overhead.py --runners inline --steps 64 --repeats 3
                                             # 3 pairs of runs, alternating, of the default runner at 64
                                             #   steps: how much the ratio moves from run to run; ~9 min
    python benchmarks/overhead.py --quick    # 1 trial of 4 steps, inline only: checks the script runs;
                                             #   under a minute
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()

RANKS = [4, 8, 16, 32, 64, 128]  # the grid: one trial per rank
PLAIN_CHILD, CLI_CHILD = "--plain-child", "--cli-child"
TARGET = 1.10
RUNNERS = ("inline", "ray_train")  # resources.inline_single_worker true / false

# (key, label): the timeline rows, then rows that are part of the one above them ("  of which").
ROWS = [
    ("imports", "interpreter start + imports"),
    ("before_trials", "before the first trial"),
    ("preflight", "  of which preflight checks (data, model, MLflow store, storage)"),
    ("ray_start", "  of which Ray start (ray.init)"),
    ("tune_start", "  of which the rest: Tuner, Optuna, MLflow parent run, first Tune function started"),
    ("trial_start", "trial start: Tune function running -> (ray_train: controller, worker) -> loop's first line"),
    ("first_trial_start", "  of which the first trial's (inline: its new process imports the loop)"),
    ("setup", "trial setup: data, model load, adapter (the loop's setup_s)"),
    ("training", "training, evaluations, reports + checkpoints -> final result at the driver"),
    ("trial_end", "trial end: final result -> trial complete (ray_train: worker group shut down)"),
    ("between_trials", "between trials: MLflow closes the trial's run, next Tune function started/reused"),
    ("after_trials", "after the last trial: MLflow artifacts, Ray shutdown, leaderboard, exit"),
    ("ray_shutdown", "  of which Ray shutdown"),
    ("total", "total wall time"),
    ("mlflow", "MLflow hooks + leaderboard read (inside the rows above)"),
]
PER_TRIAL = ("trial_start", "setup", "training", "trial_end", "between_trials")
FIXED = ("imports", "before_trials", "after_trials")


# --- the two children ----------------------------------------------------------------


def plain_child(configs_path: str, out_path: str) -> None:
    """The configs back to back in this process, each through the real worker function."""
    import ray.train.torch  # noqa: F401 - imported here so the imports are timed as imports
    import trainables.loop  # noqa: F401

    harness.quiet()
    imported_at = time.time()
    trials = []
    for config in json.loads(Path(configs_path).read_text()):
        started = time.time()
        metrics = harness.train_in_process(config)
        done = time.time()
        trials.append({"started": started, "completed": done, "results": [
            {"at": done, "step": metrics["step"], "loop_started_at": metrics["loop_started_at"],
             "setup_s": metrics["setup_s"]}]})
    Path(out_path).write_text(json.dumps({"imported_at": imported_at, "trials": trials, "spans": {}}))


class Clocks:
    """Time spent inside wrapped functions, by label; a wrapped call inside another of the
    same label (on_experiment_end -> close) is counted once."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.depth: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.depth[label]:
                return original(*args, **kwargs)
            self.depth[label] += 1
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.depth[label] -= 1
                self.spans[label].append((started, time.time()))

        setattr(owner, name, timed)


def trial_clock() -> Any:
    """A Tune callback noting when each trial starts, reports and completes (driver clock)."""
    from ray import tune

    class TrialClock(tune.Callback):
        def __init__(self) -> None:
            self.trials: dict[str, dict[str, Any]] = defaultdict(lambda: {"results": []})

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id]["started"] = time.time()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.trials[trial.trial_id]["results"].append(
                {"at": time.time(), **{k: result.get(k) for k in ("step", "loop_started_at", "setup_s")}})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id]["completed"] = time.time()

    return TrialClock()


def cli_child(out_path: str, cli_args: list[str]) -> None:
    """`raysearch <cli_args>` as the console script runs it, with clocks around the parts."""
    import ray

    import raysearch.cli
    import raysearch.experiment.preflight
    import raysearch.search.driver
    from raysearch.records.mlflow_writer import MlflowTracking

    imported_at = time.time()
    clocks, clock = Clocks(), trial_clock()
    clocks.wrap(ray, "init", "ray_start")
    clocks.wrap(ray, "shutdown", "ray_shutdown")
    clocks.wrap(raysearch.experiment.preflight, "machine_problems", "preflight")
    for hook in ("setup", "on_step_begin", "on_trial_start", "on_trial_result", "on_trial_complete",
                 "on_trial_error", "on_experiment_end", "close"):
        clocks.wrap(MlflowTracking, hook, "mlflow")
    clocks.wrap(raysearch.cli, "print_leaderboard", "mlflow")
    build_tuner = raysearch.search.driver.build_tuner
    # First in the list: Tune's view of each trial is noted before MLflow's hooks run.
    raysearch.search.driver.build_tuner = lambda spec, storage_dir, concurrency, callbacks: build_tuner(
        spec, storage_dir, concurrency, [clock, *callbacks])
    code: Any = 0
    try:
        raysearch.cli.app(cli_args, prog_name="raysearch")
    except SystemExit as exit_:
        code = exit_.code
    finally:
        Path(out_path).write_text(json.dumps({"imported_at": imported_at, "trials": list(clock.trials.values()),
                                              "spans": clocks.spans}))
    sys.exit(code)


# --- the parent: run both sides, read their clocks -------------------------------------


def timeline(spawned_at: float, exited_at: float, child: dict[str, Any]) -> dict[str, float]:
    """Seconds per row of ROWS; the rows without "of which" add up to the total."""
    trials = sorted(child["trials"], key=lambda t: t["started"])
    if not trials or any(not t["results"] or "completed" not in t for t in trials):
        raise RuntimeError("a trial reported nothing or did not complete; see the search's log")
    parts: dict[str, float] = defaultdict(float)
    for trial in trials:
        final = trial["results"][-1]
        loop_started, setup = final["loop_started_at"], final["setup_s"]
        parts["trial_start"] += loop_started - trial["started"]
        parts["setup"] += setup
        parts["training"] += final["at"] - loop_started - setup
        parts["trial_end"] += trial["completed"] - final["at"]
    first = trials[0]["results"][-1]
    parts["first_trial_start"] = first["loop_started_at"] - trials[0]["started"]
    parts["between_trials"] = sum(b["started"] - a["completed"] for a, b in zip(trials, trials[1:]))
    spans = {label: sum(end - start for start, end in pairs) for label, pairs in child["spans"].items()}
    return {
        "imports": child["imported_at"] - spawned_at,
        "before_trials": trials[0]["started"] - child["imported_at"],
        "preflight": spans.get("preflight", 0.0),
        "ray_start": spans.get("ray_start", 0.0),
        "tune_start": trials[0]["started"] - child["imported_at"] - spans.get("preflight", 0.0)
        - spans.get("ray_start", 0.0),
        **parts,
        "after_trials": exited_at - trials[-1]["completed"],
        "ray_shutdown": spans.get("ray_shutdown", 0.0),
        "total": exited_at - spawned_at,
        "mlflow": spans.get("mlflow", 0.0),
    }


def run_plain(experiment: dict[str, Any], points: list[dict[str, Any]], workdir: Path) -> dict[str, float]:
    configs, out = workdir / "plain-configs.json", workdir / "plain-clock.json"
    configs.write_text(json.dumps(harness.trial_configs(experiment, points, workdir / "plain-storage")))
    with (workdir / "plain.log").open("w") as log:
        spawned_at = time.time()
        code = subprocess.run([sys.executable, __file__, PLAIN_CHILD, str(configs), str(out)],
                              stdout=log, stderr=subprocess.STDOUT).returncode
        exited_at = time.time()
    if code != 0:
        raise RuntimeError(f"the plain run exited with {code}; see {workdir / 'plain.log'}")
    return timeline(spawned_at, exited_at, json.loads(out.read_text()))


def run_raysearch(experiment: dict[str, Any], workdir: Path, runner: str) -> dict[str, float]:
    experiment = {**experiment, "name": f"{experiment['name']}-{runner}",
                  "resources": {**experiment["resources"], "inline_single_worker": runner == "inline"}}
    out = workdir / f"raysearch-{runner}-clock.json"
    run = harness.run_search(experiment, workdir, command=[sys.executable, __file__, CLI_CHILD, str(out)])
    return timeline(run.spawned_at, run.exited_at, json.loads(out.read_text()))


def warm_up() -> None:
    """Read both sides' libraries once, so neither pays the first cold read alone."""
    subprocess.run([sys.executable, "-c", "import raysearch.cli, raysearch.search.driver, trainables.loop"], check=True)


def compare(runner: str, steps: int, trials: int, evaluations: int, ray: dict[str, float],
            plain: dict[str, float]) -> dict[str, Any]:
    extra = {key: ray[key] - plain[key] for key in ray}
    # What the first trial's start costs beyond a later one's (a new process and its imports,
    # where later inline trials reuse it) is paid once per search: fixed, not per trial.
    later_start = (ray["trial_start"] - ray["first_trial_start"]) / (trials - 1) if trials > 1 else 0.0
    first_start_excess = ray["first_trial_start"] - later_start
    fixed_ray, fixed_plain = sum(ray[k] for k in FIXED) + first_start_excess, sum(plain[k] for k in FIXED)
    per_trial_extra = (sum(extra[k] for k in PER_TRIAL) - first_start_excess) / trials
    plain_trial = sum(plain[k] for k in PER_TRIAL) / trials
    # ratio(t) = (fixed_ray + N (t + e)) / (fixed_plain + N t) = 1.10, solved for the plain trial time t.
    break_even = (fixed_ray - TARGET * fixed_plain + trials * per_trial_extra) / ((TARGET - 1) * trials)
    return {
        "runner": runner, "steps": steps, "trials": trials, "evaluations": evaluations,
        "raysearch_s": ray["total"], "plain_s": plain["total"], "ratio": ray["total"] / plain["total"],
        "segments": {key: {"raysearch_s": ray[key], "plain_s": plain[key]} for key, _ in ROWS},
        "fixed_extra_s": fixed_ray - fixed_plain, "per_trial_extra_s": per_trial_extra,
        "plain_trial_s": plain_trial, "report_extra_s": extra["training"] / (trials * evaluations),
        "break_even_trial_s": break_even,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose ratio is the median (the lower middle one for an even count), with
    every run's ratio in run order: separate processes on a shared machine differ by a few
    percent from run to run, and one pair of runs cannot show how much."""
    middle = sorted(runs, key=lambda run: run["ratio"])[(len(runs) - 1) // 2]
    return {**middle, "ratios": [run["ratio"] for run in runs]}


def print_comparison(row: dict[str, Any]) -> None:
    print(f"\n{row['runner']}: {row['trials']} trial(s) x {row['steps']} steps, {row['evaluations']} evaluations each")
    print(f"{'':<84} {'raysearch s':>11} {'plain s':>8} {'extra s':>8}")
    for key, label in ROWS:
        cell = row["segments"][key]
        print(f"{label:<84} {cell['raysearch_s']:>11.1f} {cell['plain_s']:>8.1f} "
              f"{cell['raysearch_s'] - cell['plain_s']:>8.1f}")
    print(f"ratio raysearch / plain: {row['ratio']:.2f}x (target <= {TARGET:.2f}x)")
    if len(row["ratios"]) > 1:
        print(f"ratios of the {len(row['ratios'])} pairs of runs, in order: "
              f"{', '.join(f'{ratio:.2f}x' for ratio in row['ratios'])}; the table is the median run")
    print(f"fixed extra per search {row['fixed_extra_s']:.1f} s; extra per trial {row['per_trial_extra_s']:.1f} s "
          f"(plain trial {row['plain_trial_s']:.1f} s)")
    print(f"reporting + checkpointing, estimated (training row, raysearch - plain): "
          f"{row['report_extra_s']:.2f} s per report")
    print(f"estimated: the ratio reaches {TARGET:.2f}x at plain trials of ~{row['break_even_trial_s']:.0f} s "
          f"(fixed and per-trial extras of this run held constant)")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [PLAIN_CHILD]:
        plain_child(argv[1], argv[2])
        return []
    if argv[:1] == [CLI_CHILD]:
        cli_child(argv[1], argv[2:])
        return []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 trial of 4 steps: checks the script runs")
    parser.add_argument("--trials", type=int, default=None, help=f"trials per search (at most {len(RANKS)})")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="trial lengths, one pair of runs each")
    parser.add_argument("--evaluations", type=int, default=None, help="evaluations (reports) per trial")
    parser.add_argument("--data", type=Path, default=harness.SST2, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=None,
                        help="how raysearch trains 1-worker trials (default: both; --quick: inline)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of runs per trial length and runner (plain and raysearch alternate); "
                             "the table shown is the median run")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats} is not allowed; give 1 or more")
    trials = min(args.trials or (1 if args.quick else 4), len(RANKS))
    lengths = args.steps or ([4] if args.quick else [16, 64])
    evaluations = args.evaluations or (2 if args.quick else 4)
    runners = args.runners or (["inline"] if args.quick else list(RUNNERS))
    points = [{"rank": rank} for rank in RANKS[:trials]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="raysearch-overhead-") as tmp:
        if not args.quick:
            warm_up()
        for steps in lengths:
            sizes = harness.Sizes(train_examples=16 * steps, eval_examples=32 if args.quick else 128,
                                  evaluations=evaluations)
            experiment = harness.experiment(
                f"overhead-{steps}", args.data, sizes, cpus_per_worker=args.cpus_per_worker,
                search={"sampler": "grid", "max_concurrent": 1, "early_stopping": {"scheduler": "none"},
                        "space": {"rank": {"choice": [p["rank"] for p in points]}}})
            runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for repeat in range(args.repeats):
                workdir = Path(tmp, f"steps-{steps}-{repeat}")
                workdir.mkdir()
                plain = run_plain(experiment, points, workdir)
                for runner in runners:
                    ray = run_raysearch(experiment, workdir, runner)
                    runs[runner].append(compare(runner, steps, trials, evaluations, ray, plain))
            for runner in runners:
                rows.append(median_run(runs[runner]))
                print_comparison(rows[-1])
    print(f"\n{'steps':>5} {'trials':>6} {'runner':>9} {'plain s/trial':>13} {'raysearch s':>11} {'plain s':>8} "
          f"{'ratio':>6} {'range':>13}")
    for row in rows:
        spread = f"{min(row['ratios']):.2f}-{max(row['ratios']):.2f}x" if len(row["ratios"]) > 1 else ""
        print(f"{row['steps']:>5} {row['trials']:>6} {row['runner']:>9} {row['plain_trial_s']:>13.1f} "
              f"{row['raysearch_s']:>11.1f} {row['plain_s']:>8.1f} {row['ratio']:>5.2f}x {spread:>13}")
    print(f"\nmodel {harness.MODEL}, data {args.data} "
          f"(16 train examples a step, batch 16, max_length {sizes.max_length}, {sizes.eval_examples} dev examples), "
          f"grid over rank, ASHA off, max_concurrent 1, cpus_per_worker {args.cpus_per_worker:g}, "
          f"{os.cpu_count()} cores")
    return harness.keep(rows, args.json)


if __name__ == "__main__":
    main()
