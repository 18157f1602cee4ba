"""Fair per-cell studies on real SST-2 (issue 20): each cell at its own tuned learning rate,
its best configuration scored on data the search never saw.

A study is one comparison search (`search.compare`, every trial run to the end) on SST-2
with MiniLM-L6, then:
1. per cell, the best configuration by validation accuracy averaged over its seeds (the
   search's own choice: `raysearch leaderboard NAME --by ...`);
2. each of that configuration's seed trials scored on a test split carved from train.tsv
   (`task.test_fraction` 0.02 with test_seed 0: 1,347 sentences that no trial trained on and
   nothing was selected by), recorded on the trial's MLflow run as `raysearch evaluate` does;
3. every cell against its baseline cell (α/r at the same rank, LoRA, the default init): the
   test-accuracy difference, each record's correctness averaged over the seeds, with a 95%
   paired bootstrap interval over the test sentences (it covers the test sample, not the
   training seeds: with 2 seeds their spread is shown beside it, not folded in).

    python benchmarks/cell_study.py rora        # scaling x rank, 64 trials (~30 min on 2 cores)
    python benchmarks/cell_study.py variants    # the nine variants, 54 trials
    python benchmarks/cell_study.py init        # five initialisations at rank 16, 30 trials
    python benchmarks/cell_study.py target      # attention vs all linear layers, LoRA r=8, 16 trials
    python benchmarks/cell_study.py target-smol # the same on SmolLM2 + the commonsense mix, 4 trials
    python benchmarks/cell_study.py rora-pruned --small  # the RoRA question on pruned SmolLM2, one sitting's size
    python benchmarks/cell_study.py rora-smol --small    # the same on the full SmolLM2 (both: see docs/pruning.md)
    python benchmarks/cell_study.py rora-pruned          # full size, 4 ranks x 4 lrs x 2 seeds: for a GPU
    python benchmarks/cell_study.py rora-smol            # the same on the full model
    python benchmarks/cell_study.py rora --search rora-fair-sst2 --mlflow-uri sqlite:///mlflow.db  # score a finished search
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded adapter otherwise

SPACES = harness.REPO / "search_spaces"
# SST-2 at the studies' size: 1,280 sentences = 40 steps of 32, validation every 10 steps on 300
# dev sentences, the test split carved from train.tsv before anything else.
SST2_SIZES = {"task.dataset": str(harness.SST2), "task.test_fraction": 0.02, "task.max_train_examples": 1280,
              "task.max_eval_examples": 300, "train.eval_every_steps": 10}
QUICK = {"task.max_train_examples": 64, "task.max_eval_examples": 32, "task.max_test_examples": 48,
         "train.eval_every_steps": 2, "search.trials_per_cell": 1, "search.seeds": 1}


# The variants and init studies, sized to fit one session with the RoRA study: 3 learning rates
# a cell (the shipped files have 4) and validation at steps 20 and 40 only (every trial runs to
# the end, so only the last one is used).
FEWER = {"search.trials_per_cell": 3, "train.eval_every_steps": 20}


@dataclass(frozen=True)
class Study:
    space: str
    name: str
    baseline: dict[str, Any]
    """The cell every other is compared with, by its compared value(s) that differ."""
    overrides: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=lambda: dict(SST2_SIZES))
    """The data and schedule: SST-2 with a carved test split, or the file's own."""
    small: dict[str, Any] | None = None
    """`--small`: the study at one sitting's size on 2 CPU cores (None: the study has none)."""


# The RoRA question on SmolLM2-135M-Instruct, full and pruned (issue 28, part 3):
# commonsense_smol.yaml's data, prompts and test split (20% of every training file), LoRA with
# alpha 16, scaling alpha/r vs alpha/sqrt(r) by rank, the lr tuned inside each cell. At full size
# (4 ranks x 4 lrs x 2 seeds, 64 trials a model, 200 test records a source) a trial takes ~8 min
# on 2 CPU cores, so a model is ~4 h there: run it on a GPU.
SMOL_RORA = {
    "search": {"objectives": {"val_answer_accuracy": "max", "adapter_params": "min"}, "max_concurrent": 2,
               "early_stopping": {"scheduler": "none"}, "compare": ["scaling", "rank"], "trials_per_cell": 4,
               "seeds": 2, "space": {"scaling": {"choice": ["lora", "rora"]}, "rank": {"choice": [4, 16, 64, 128]},
                                     "lr": {"loguniform": [1.0e-4, 3.0e-3]}}},
    "task.max_test_examples": 200,
}


# ... and at one sitting's size (`--small`): ranks 8 and 64, 2 lrs a cell (a Latin hypercube
# over the range: one in each half, log scale), 2 seeds, so 16 trials a model; 24 steps of 8
# records a trial (24 a commonsense source, 96 SST-2), validation once at the end on 16 records a
# source (32 SST-2), every cell's best scored on 60 test records a source. The same data for both
# models (both files read the same sources, in the same order, with the same test split).
SMOL_RORA_SMALL = {
    "task.max_train_examples": 24, "task.max_eval_examples": 16, "task.max_test_examples": 60,
    "train.eval_every_steps": 24, "search.space.rank": {"choice": [8, 64]}, "search.trials_per_cell": 2,
}
SMALL_SOURCE_SIZES = {"sst2": {"max_train_examples": 96, "max_eval_examples": 32}}
"""`--small`: the counts of the named sources of task.dataset that differ from the task's."""
SMOL_QUICK = {"model": "builtin:tiny-llama", "search.space.rank": {"choice": [4, 8]},
              "task.max_train_examples": 8, "task.max_eval_examples": 2, "task.max_test_examples": 4}

# Which layers a default adapts (issue 27, part 6): attention projections vs every linear layer,
# LoRA at the default rank 8, each at its own tuned lr; on SST-2 (4 lrs x 2 seeds a cell) and
# on the causal-LM mix with SmolLM2 (2 lrs x 1 seed a cell, 40 records a commonsense source:
# ~25 min on 2 cores).
TARGET_SPACE = {"target": {"choice": ["attention", "all_linear"]}, "lr": {"loguniform": [1.0e-4, 1.0e-2]}}
TARGET = {"name": "target-sst2", "adapter.variant": "lora", "adapter.rank": 8, "search.compare": ["target"],
          "search.space": TARGET_SPACE}
TARGET_SMOL = {
    "name": "target-smol", "task.max_train_examples": 40, "task.max_test_examples": 100,
    "search": {"objectives": {"val_answer_accuracy": "max", "adapter_params": "min"}, "max_concurrent": 2,
               "early_stopping": {"scheduler": "none"}, "compare": ["target"], "trials_per_cell": 2, "seeds": 1,
               "space": {"target": {"choice": ["attention", "all_linear"]}, "lr": {"loguniform": [1.0e-4, 2.0e-3]}}},
}

ONE_SEED = {"target-smol"}  # SmolLM2 trials on 2 cores: one seed, said so wherever it is reported

STUDIES = {
    "target": Study("variants_fair.yaml", "target-sst2", {"target": "attention"}, overrides=TARGET),
    "target-smol": Study("commonsense_smol.yaml", "target-smol", {"target": "attention"}, overrides=TARGET_SMOL,
                         sizes={}, quick={"model": "builtin:tiny-llama", "task.max_train_examples": 8,
                                          "task.max_eval_examples": 2, "task.max_test_examples": 4}),
    "rora": Study("rank_scaling_fair.yaml", "rora-fair-sst2", {"scaling": "lora"},
                  quick={"search.space.rank": {"choice": [4, 8]}}),
    "variants": Study("variants_fair.yaml", "variants-fair-sst2", {"variant": "lora"}, overrides=FEWER,
                      quick={"search.space.variant": {"choice": ["lora", "loraplus"]}}),
    "rora-smol": Study("commonsense_smol.yaml", "rora-fair-smol", {"scaling": "lora"}, overrides=SMOL_RORA, sizes={},
                       quick=SMOL_QUICK, small={**SMOL_RORA_SMALL, "name": "rora-small-smol"}),
    "rora-pruned": Study("commonsense_smol_pruned.yaml", "rora-fair-pruned", {"scaling": "lora"},
                         overrides=SMOL_RORA, sizes={}, quick=SMOL_QUICK,
                         small={**SMOL_RORA_SMALL, "name": "rora-small-pruned"}),
    "init": Study("init.yaml", "init-sst2", {"init": "default"}, overrides=FEWER,
                  quick={"search.space.init": {"choice": ["default", "eva"]}}),
}


def experiment_file(study: Study, quick: bool, small: bool = False, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The study's experiment: its file with the study's sizes and overrides, then `--small`'s,
    then `--quick`'s, then `sets` (`--set KEY=VALUE`, read as `raysearch run --set` reads them)
    on top. ValueError when a layer does not apply."""
    from raysearch.experiment.spec import apply_override, apply_overrides

    if small and study.small is None:
        raise ValueError(f"{study.name} has no --small size; studies with one: "
                         f"{', '.join(k for k, v in sorted(STUDIES.items()) if v.small is not None)}")
    raw = yaml.safe_load((SPACES / study.space).read_text())
    raw["name"] = study.name
    layers = {**study.sizes, **study.overrides, **(study.small if small else {}), **(QUICK | study.quick if quick else {})}
    for key, value in layers.items():
        problem = apply_override(raw, key, copy.deepcopy(value))  # later layers must not edit the study's dicts
        if problem is not None:
            raise ValueError(f"{study.space}: {problem}")
    if small:
        for item in raw["task"]["dataset"]:
            if isinstance(item, dict) and item.get("name") in SMALL_SOURCE_SIZES:
                item.update(SMALL_SOURCE_SIZES[item["name"]])
    problems = apply_overrides(raw, sets, {})
    if problems:
        raise ValueError("; ".join(str(problem) for problem in problems))
    return raw


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def baseline_of(cell: dict[str, Any], baseline: dict[str, Any], cells: list[dict[str, Any]],
                compare: list[str]) -> dict[str, Any] | None:
    """The cell `cell` is compared with: the same compared values except the baseline's
    (None for the baseline cell itself, or when the search has no such cell)."""
    wanted = {name: baseline.get(name, cell[name]) for name in compare}
    if all(str(cell[name]) == str(wanted[name]) for name in compare):
        return None
    return next((c for c in cells if all(str(c[name]) == str(wanted[name]) for name in compare)), None)


def per_record(correct: list[list[bool]]) -> list[float]:
    """Each test record's correctness averaged over the seeds' scorings of the same records."""
    return [sum(column) / len(column) for column in zip(*correct)]


def difference(cell: list[list[bool]], base: list[list[bool]]) -> tuple[float, float, float]:
    """cell − base on the test records (seed-averaged per record), with a 95% paired bootstrap interval."""
    from trainables.evaluation import paired_difference

    return paired_difference(per_record(base), per_record(cell))


def score_cells(mlflow_uri: str, name: str, compare: list[str], max_examples: int | None,
                workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Each cell's best configuration (cell_table), every one of its seed trials scored on the
    test split and the score recorded on the trial's run; returns the cells and the test data."""
    from raysearch.records.score_trial import run_evaluation, search_target
    from raysearch.records.mlflow_reader import cell_table, leaderboard, search_objectives

    objective, sense = next(iter(search_objectives(mlflow_uri, name).items()))
    cells = cell_table(leaderboard(mlflow_uri, name), compare, objective, sense)
    data = ""
    for cell in cells:
        cell["objective"] = objective
        cell["correct"], cell["test"] = [], []
        for trial in cell["trial_ids"]:
            target = search_target(mlflow_uri, name, trial, False, workdir / trial)
            result = run_evaluation(target, data=None, scoring=None, max_examples=max_examples, mlflow_uri=mlflow_uri)
            cell["correct"].append(result.correct)
            cell["test"].append(result.overall.value)
            data = result.data
    return cells, data


def print_table(cells: list[dict[str, Any]], compare: list[str], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """The markdown table docs/benchmarks.md shows, and the rows it is made of."""
    def sd(x: float | None) -> str:
        return f" ± {x:.3f}" if x is not None else " (1 seed)"

    rows = []
    print(f"\n| {' | '.join(compare)} | completed trials | tuned lr | val (mean ± sd over seeds) "
          f"| test (mean ± sd) | test − baseline, 95% CI (points) | each seed's test |")
    print("|" + "---|" * (len(compare) + 6))
    for cell in cells:
        test, test_sd = mean_sd(cell["test"])
        base = baseline_of(cell, baseline, cells, compare)
        diff = difference(cell["correct"], base["correct"]) if base is not None else None
        lr = cell["config"].get("lr")
        rows.append({**{n: cell[n] for n in compare}, "trials": cell["trials"], "seeds": cell["seeds"],
                     "lr": float(lr) if lr is not None else None, "val": cell["best"], "val_sd": cell["spread"],
                     "test": test, "test_sd": test_sd, "diff": diff})
        is_baseline = all(str(cell[n]) == str(baseline.get(n, cell[n])) for n in compare)
        shown = (f"{100 * diff[0]:+.1f} [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]" if diff is not None
                 else "baseline" if is_baseline else "-")
        tuned = f"{float(lr):.1e}" if lr is not None else "-"
        print(f"| {' | '.join(str(cell[n]) for n in compare)} | {cell['trials']} | {tuned} "
              f"| {cell['best']:.3f}{sd(cell['spread'])} | {test:.3f}{sd(test_sd)} | {shown} "
              f"| {' '.join(f'{t:.3f}' for t in cell['test'])} |")
    return rows


def plot(rows: list[dict[str, Any]], compare: list[str], path: Path, title: str) -> None:
    """Test accuracy of each cell's best-by-validation configuration, seeds' spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raysearch.records.plots import comparison_lines

    x, numeric, lines = comparison_lines([{**r, "config": {}} for r in rows], compare)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, members in lines.items():
        xs = [float(r[x]) if numeric else str(r[x]) for r in members]
        ax.errorbar(xs, [r["test"] for r in members], yerr=[r["test_sd"] or 0.0 for r in members], marker="o",
                    capsize=3, label=label, linestyle="-" if numeric else "none")  # no line between categories
    if numeric:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(title, fontsize=10)
    if len(lines) > 1:
        ax.legend()
    if not numeric:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--search", help="Score this finished search instead of running one")
    parser.add_argument("--mlflow-uri", help="The finished search's MLflow store (with --search)")
    parser.add_argument("--workdir", type=Path, help="Keep the search's files here (default: a temporary folder)")
    parser.add_argument("--plot", type=Path, help="Write the test-accuracy plot here (PNG)")
    parser.add_argument("--small", action="store_true",
                        help="The study at one sitting's size on 2 CPU cores (rora-smol, rora-pruned)")
    parser.add_argument("--quick", action="store_true", help="2 cells, 1 point, 1 seed, a few sentences: plumbing only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a field of the study's experiment (YAML value), e.g. "
                             "resources.gpus_per_worker=1 on a GPU; repeatable")
    args = parser.parse_args(argv)
    study = STUDIES[args.study]
    try:
        raw = experiment_file(study, args.quick, args.small, args.set)
    except ValueError as error:
        parser.error(str(error))
    os.chdir(harness.REPO)
    harness.quiet()
    compare = raw["search"]["compare"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if args.search:
            name, uri = args.search, args.mlflow_uri or "sqlite:///mlflow.db"
        else:
            run = harness.run_search(raw, workdir)
            name, uri = raw["name"], f"sqlite:///{workdir / 'mlflow.db'}"
            print(f"search {name}: {run.wall_s / 60:.1f} min", flush=True)
        started = time.perf_counter()
        cells, data = score_cells(uri, name, compare, raw["task"].get("max_test_examples"), workdir / "adapters")
        print(f"test scoring: {sum(len(c['test']) for c in cells)} trials on {data}, "
              f"{time.perf_counter() - started:.0f} s")
    rows = print_table(cells, compare, study.baseline)
    if args.plot:
        plot(rows, compare, args.plot, f"{name}: each cell's best by validation, scored on the test split")
        print(f"plot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
