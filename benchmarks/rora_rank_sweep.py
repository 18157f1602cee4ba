"""The RoRA claim at small scale: validation accuracy vs rank for the scalings α/r and α/√r.

LoRA scales its update by s = α/r, RoRA (= rsLoRA) by s = α/√r. With Adam the first
update's size does not depend on s, so the adapter output's variance grows like s²·r:
flat in r for α/√r, falling like 1/r for α/r. The paper's claim: with α/√r accuracy
holds up (or improves) at high rank, where with α/r it can fall.

Here: variant lora with adapter.scaling `lora` (α/r) or `rora` (α/√r) at ranks 4..128,
α and learning rate fixed, each rank x rule x seed (train.seed: head init, data order,
dropout) trained in this process (the real worker loop in Ray Train's local mode; no
Ray) with MiniLM on an SST-2 subsample, scored on dev examples once at the end. Prints
mean ± std per rank and rule, the seed-paired difference, and whether this run agrees
with the claim (it says so either way); writes a plot.

    python benchmarks/rora_rank_sweep.py            # full: 6 ranks x 2 rules x 3 seeds = 36 trainings of 40 steps
        # (640 SST-2 train examples, batch 16, max_length 32), scored on 500 dev examples; α 16, lr 6e-3
        # (chosen for α/r at rank 8, the usual LoRA setting; the finding depends on it: try --lr);
        # ~11 min on 2 CPU cores; plot in docs/img/rora_rank_sweep.png
    python benchmarks/rora_rank_sweep.py --quick    # ranks 4 and 8, 2 seeds, 2 steps; plot in a temp folder
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()

import numpy as np  # noqa: E402

RANKS = [4, 8, 16, 32, 64, 128]
RULES = {"lora": ("α/r", 1.0), "rora": ("α/√r", 0.5)}  # adapter.scaling -> (label, exponent p of s = α/r^p)
DEFAULT_PLOT = harness.REPO / "docs" / "img" / "rora_rank_sweep.png"


def sweep(data: Path, sizes: harness.Sizes, ranks: list[int], seeds: list[int], alpha: float,
          lr: float, workdir: Path) -> dict[tuple[int, str], list[float]]:
    """(rank, rule) -> val_accuracy per seed."""
    accuracies: dict[tuple[int, str], list[float]] = {(r, rule): [] for r in ranks for rule in RULES}
    for seed in seeds:
        points = [{"rank": rank, "scaling": rule} for rank in ranks for rule in RULES]
        experiment = harness.experiment("rora-rank-sweep", data, sizes, lr=lr, seed=seed,
                                        adapter={"variant": "lora", "alpha": alpha},
                                        search={"space": {"rank": {"choice": ranks}, "scaling": {"choice": list(RULES)}}})
        configs = harness.trial_configs(experiment, points, workdir)
        labels = [f"seed {seed} rank {p['rank']} {RULES[p['scaling']][0]}" for p in points]
        for point, metrics in zip(points, harness.train_each(configs, labels)):
            accuracies[(point["rank"], point["scaling"])].append(metrics["val_accuracy"])
    return accuracies


def rows_of(accuracies: dict[tuple[int, str], list[float]], alpha: float) -> list[dict[str, Any]]:
    return [{"rank": rank, "scaling": rule, "scale": alpha / rank ** RULES[rule][1],
             "mean": float(np.mean(values)), "std": float(np.std(values)), "accuracies": values}
            for (rank, rule), values in accuracies.items()]


def finding(accuracies: dict[tuple[int, str], list[float]], ranks: list[int]) -> str:
    """What this run says about the claim, from the lowest and highest rank."""
    low, high = ranks[0], ranks[-1]
    paired = 100 * (np.array(accuracies[(high, "rora")]) - np.array(accuracies[(high, "lora")]))
    change = {rule: 100 * (np.mean(accuracies[(high, rule)]) - np.mean(accuracies[(low, rule)])) for rule in RULES}
    lines = [f"rank {low} -> {high}: α/r {change['lora']:+.1f} points, α/√r {change['rora']:+.1f} points",
             f"at rank {high}, α/√r - α/r: {paired.mean():+.1f} ± {paired.std():.1f} points (paired by seed)"]
    if abs(paired.mean()) <= paired.std():
        lines.append("finding: no difference beyond the seed spread at this scale; the claim is neither shown nor refuted")
    elif paired.mean() > 0 and change["rora"] >= change["lora"]:
        lines.append("finding: agrees with the RoRA claim at this scale: α/√r holds up at high rank better than α/r")
    else:
        lines.append("finding: does not match the RoRA claim at this scale: α/r is as good or better at high rank")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], ranks: list[int], seeds: int) -> None:
    by = {(r["rank"], r["scaling"]): r for r in rows}
    print(f"\nval_accuracy, mean ± std over {seeds} seeds (s = the update's scale)")
    print(f"{'rank':>4} {'α/r':>15} {'s':>6} {'α/√r':>15} {'s':>6} {'√ - r points':>12}")
    for rank in ranks:
        lora, rora = by[(rank, "lora")], by[(rank, "rora")]
        print(f"{rank:>4} {lora['mean']:>8.4f} ±{lora['std']:.4f} {lora['scale']:>6.3f} "
              f"{rora['mean']:>8.4f} ±{rora['std']:.4f} {rora['scale']:>6.3f} "
              f"{100 * (rora['mean'] - lora['mean']):>+12.1f}")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rule, (label, _) in RULES.items():
        mine = sorted((r for r in rows if r["scaling"] == rule), key=lambda r: r["rank"])
        ax.errorbar([r["rank"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                    marker="o", capsize=3, label=f"{label} ({rule})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["rank"] for r in rows}), [str(r) for r in sorted({r["rank"] for r in rows})])
    ax.set_xlabel("rank r")
    ax.set_ylabel("val_accuracy (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 ranks, 2 seeds, 2 steps: checks the script runs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per rank and rule (at least 3 for the claim)")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--steps", type=int, default=None, help="training steps (batch 16)")
    parser.add_argument("--data", type=Path, default=harness.SST2, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--plot", type=Path, default=None, help=f"PNG to write (default {DEFAULT_PLOT}; "
                        "--quick: a temporary folder)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    harness.quiet()
    ranks = [4, 8] if args.quick else RANKS
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    steps = args.steps or (2 if args.quick else 40)
    sizes = harness.Sizes(train_examples=16 * steps, eval_examples=32 if args.quick else 500)
    with tempfile.TemporaryDirectory(prefix="raysearch-rora-sweep-") as tmp:
        print(f"training ({sizes.describe()}; α {args.alpha:g}, lr {args.lr:g}):", flush=True)
        accuracies = sweep(args.data, sizes, ranks, seeds, args.alpha, args.lr, Path(tmp))
        rows = rows_of(accuracies, args.alpha)
        print_table(rows, ranks, len(seeds))
        print(finding(accuracies, ranks))
        path = args.plot or (Path(tmp, "rora_rank_sweep.png") if args.quick else DEFAULT_PLOT)
        plot(rows, path, f"MiniLM-L6, SST-2 ({sizes.train_examples} train / {sizes.eval_examples} dev), "
                         f"α={args.alpha:g}, lr={args.lr:g}, {len(seeds)} seeds")
        print(f"\nplot: {path}; model {harness.MODEL}, data {args.data}")
    return harness.keep(rows, args.json)


if __name__ == "__main__":
    main()
