"""search.compare (raysearch/experiment/comparison.py): cells and budgets from a spec, the same design in every
cell, early stopping inside a cell only, and the best of each cell over seeds."""
from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from raysearch.experiment.comparison import CellScheduler, cell_of, cell_points, cells
from raysearch.records.mlflow_reader import cell_table
from raysearch.experiment.sections import num_trials_for
from raysearch.experiment.spec import SpecError, spec_from_dict
from raysearch.search.tuner import build_scheduler

SPACE = {"scaling": {"choice": ["lora", "rora"]}, "rank": {"choice": [4, 16]},
         "lr": {"loguniform": [1e-4, 1e-2]}, "alpha": {"choice": [8, 16]}}


def comparison(**search):
    return spec_from_dict({"train": {"seed": 7}, "search": {"space": SPACE, "compare": ["scaling", "rank"],
                                                            "trials_per_cell": 3, **search}})


def points_of(spec):
    search = spec.search
    seeds = search.space["seed"].choice if search.seeds > 1 else [spec.train.seed]
    return cell_points(search.space, search.compare, search.trials_per_cell, seeds, search.seed)


def test_every_cell_gets_the_same_points_and_the_budget_is_cells_times_trials_times_seeds():
    spec = comparison(seeds=2)
    assert spec.search.space["seed"].choice == [7, 8]  # train.seed, +1: the seed became a dimension
    assert num_trials_for(spec.search) == 4 * 3 * 2
    points = points_of(spec)
    assert len(points) == 24
    by_cell: dict[tuple, list] = {}
    for point in points:
        by_cell.setdefault((point["scaling"], point["rank"]), []).append((point["lr"], point["alpha"], point["seed"]))
    assert sorted(by_cell) == [("lora", 4), ("lora", 16), ("rora", 4), ("rora", 16)]
    designs = {cell: sorted(values) for cell, values in by_cell.items()}
    assert len({tuple(d) for d in designs.values()}) == 1  # one design, every cell: a paired comparison
    lrs = sorted({lr for lr, _, _ in designs[("lora", 4)]})
    # a Latin hypercube on lr's log scale: each third of [1e-4, 1e-2] holds exactly one of the 3 points
    strata = sorted(int(3 * (math.log(lr) - math.log(1e-4)) / (math.log(1e-2) - math.log(1e-4))) for lr in lrs)
    assert strata == [0, 1, 2]
    assert all(sorted(s for _, _, s in by_cell[cell]) == [7, 7, 7, 8, 8, 8] for cell in by_cell)
    # design point by design point, every cell and seed before the next: cells progress together
    assert {(p["scaling"], p["rank"]) for p in points[:8]} == set(by_cell)


def test_a_design_value_whose_condition_fails_in_a_cell_is_left_out_of_it():
    spec = spec_from_dict({"search": {"space": {
        "variant": {"choice": ["lora", "sora"]}, "lr": {"loguniform": [1e-4, 1e-2]},
        "sora_lambda": {"loguniform": [1e-3, 1.0], "when": {"variant": ["sora"]}},
    }, "compare": ["variant"], "trials_per_cell": 2}})
    assert cells(spec.search.space, ["variant"]) == [{"variant": "lora"}, {"variant": "sora"}]
    points = points_of(spec)
    assert all(("sora_lambda" in p) == (p["variant"] == "sora") for p in points) and len(points) == 4


@pytest.mark.parametrize("search, path, words", [
    ({"compare": ["nope"]}, "search.compare[0]", "no dimension named 'nope' to compare"),
    ({"compare": ["lr"]}, "search.compare[0]", "is a `loguniform` dimension"),
    ({"compare": ["rank"], "trials_per_cell": None}, "search.trials_per_cell", "required with search.compare"),
    ({"compare": ["rank"], "sampler": "grid"}, "search.sampler", "remove sampler: grid"),
    ({"compare": ["rank"], "num_trials": 5}, "search.num_trials", "= 6 trials"),
    ({"compare": None, "trials_per_cell": None, "seeds": 3}, "search.seeds", "set search.compare"),
])
def test_a_bad_comparison_names_the_field_and_what_is_allowed(search, path, words):
    data = {"search": {"space": SPACE, "compare": ["scaling", "rank"], "trials_per_cell": 3, **search}}
    data["search"] = {k: v for k, v in data["search"].items() if v is not None}
    with pytest.raises(SpecError) as error:
        spec_from_dict(data)
    assert any(p.path == path and words in p.message for p in error.value.problems), error.value


class Trial:
    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config


def test_early_stopping_compares_a_trial_with_its_own_cell_only():
    """ASHA (reduction 2, grace 1) per cell: b1, worse than a1, is the first of its own cell at
    the rung and goes on; a2 is worse than a1 in their shared cell and is stopped. One ASHA over
    both cells would have stopped b1."""
    spec = comparison(early_stopping={"scheduler": "asha", "metric": "val_loss", "grace_period": 1,
                                      "reduction_factor": 2})
    scheduler = build_scheduler(spec)
    assert isinstance(scheduler, CellScheduler)
    a1, a2 = Trial("a1", {"scaling": "lora", "rank": 4, "lr": 1e-3}), Trial("a2", {"scaling": "lora", "rank": 4, "lr": 2e-3})
    b1 = Trial("b1", {"scaling": "rora", "rank": 4, "lr": 1e-3})
    for trial in (a1, a2, b1):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, a1, {"evaluation": 1, "val_loss": 0.1}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, b1, {"evaluation": 1, "val_loss": 0.9}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, a2, {"evaluation": 1, "val_loss": 0.5}) == TrialScheduler.STOP
    assert sorted(scheduler.schedulers) == sorted({cell_of(t.config, ["scaling", "rank"]) for t in (a1, b1)})


def run(trial_id: str, status: str, acc: float | None, **params) -> dict:
    return {"trial_id": trial_id, "status": status, "val_accuracy": acc,
            "params": {k: str(v) for k, v in params.items()}, "metrics": {}}


def test_the_best_of_each_cell_is_the_best_mean_over_seeds_with_its_spread():
    rows = [
        run("1", "completed", 0.80, rank=4, lr=1e-3, seed=0), run("2", "completed", 0.84, rank=4, lr=1e-3, seed=1),
        run("3", "completed", 0.90, rank=4, lr=3e-3, seed=0), run("4", "completed", 0.70, rank=4, lr=3e-3, seed=1),
        run("5", "early_stopped", 0.99, rank=4, lr=9e-3, seed=0),  # partial training: never a cell's best
        run("6", "completed", 0.88, rank=16, lr=3e-3, seed=0, scaling_rule="alpha/r"),
    ]
    table = cell_table(rows, ["rank"], "val_accuracy", "max")
    assert [c["rank"] for c in table] == ["4", "16"]
    four, sixteen = table
    assert four["best"] == pytest.approx(0.82) and four["config"] == {"lr": "0.001"} and four["seeds"] == 2
    assert four["trial_ids"] == ["1", "2"]  # the winning configuration's trials, one a seed
    assert four["spread"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))  # sample std of 0.80, 0.84
    assert four["trials"] == 4  # its completed trials
    assert sixteen["best"] == 0.88 and sixteen["spread"] is None and sixteen["config"] == {"lr": "0.003"}
    assert cell_table(rows, ["rank"], "val_accuracy", "min")[0]["config"] == {"lr": "0.003"}  # mean 0.80 < 0.82


def test_the_comparison_plot_has_a_line_per_other_value_along_the_numeric_dimension(tmp_path):
    from raysearch.records.plots import comparison_lines, write_comparison

    rows = [run(str(i), "completed", acc, scaling=scaling, rank=rank, lr=1e-3, seed=seed)
            for i, (scaling, rank, seed, acc) in enumerate([
                ("lora", 16, 0, 0.8), ("lora", 16, 1, 0.82), ("lora", 4, 0, 0.7), ("rora", 16, 0, 0.9),
                ("rora", 4, 0, 0.75), ("rora", 128, 0, 0.6)])]
    table = cell_table(rows, ["scaling", "rank"], "val_accuracy", "max")
    x, numeric, lines = comparison_lines(table, ["scaling", "rank"])
    assert x == "rank" and numeric and sorted(lines) == ["scaling=lora", "scaling=rora"]
    assert [r["rank"] for r in lines["scaling=rora"]] == ["4", "16", "128"]  # by value, not as text
    assert [r["best"] for r in lines["scaling=lora"]] == [0.7, pytest.approx(0.81)]
    write_comparison(tmp_path, table, ["scaling", "rank"], "val_accuracy")
    assert (tmp_path / "comparison.png").stat().st_size > 0
    html = (tmp_path / "comparison.html").read_text()
    assert html.count('"name":"scaling=') == 2 and '"error_y"' in html
