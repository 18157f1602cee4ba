"""Fair comparisons (`search.compare`): one cell per combination of the compared `choice`
dimensions, each cell given the same trials, the other dimensions searched inside each cell,
early stopping acting within a cell only, and the best of each cell with its spread over seeds.

The design inside a cell is fixed, not sampled: `trials_per_cell` points of the dimensions
not compared are drawn once, as a Latin hypercube (scipy's, seeded with `search.seed`), and
every cell gets the same points. Cells then differ only in the compared values, and each
cell's tuned lr is the best of the same candidates (a paired design: noise from the draw
cancels between cells). A sampler that learns would give cells tried later, or doing
better early, other candidates than the rest; a per-cell study would give them different
random draws. With `search.seeds: N` every point is trained with N seeds (train.seed, +1, ...).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raysearch.experiment.space import Dimension, dependency_order, grid_points, is_active
from trainables.contract import SEED_DIMENSION



def cells(space: Mapping[str, Dimension], compare: list[str]) -> list[dict[str, Any]]:
    """Every combination of the compared dimensions' values (`when` among them honoured)."""
    return grid_points({name: space[name] for name in compare})


def design(space: Mapping[str, Dimension], compare: list[str], points: int, seed: int) -> list[dict[str, Any]]:
    """`points` values of every dimension not compared, a seeded Latin hypercube: each range is
    cut into `points` strata and each stratum is drawn once (on a log scale where the dimension
    is), so few points still span lr's whole range. Conditions are applied per cell."""
    from scipy.stats import qmc

    names = [name for name in dependency_order(dict(space)) if name not in compare and name != SEED_DIMENSION]
    if not names:
        return [{} for _ in range(points)]
    unit = qmc.LatinHypercube(d=len(names), seed=seed).random(points)
    return [{name: space[name].at(float(u)) for name, u in zip(names, row)} for row in unit]


def cell_points(space: Mapping[str, Dimension], compare: list[str], trials_per_cell: int, seeds: list[int],
                seed: int) -> list[dict[str, Any]]:
    """Every trial of a comparison, as full points: design point by design point (each in every
    cell, with every seed), so all cells progress together. A design value whose `when` does
    not hold in a cell is left out of that cell's point."""
    out, grid, order = [], cells(space, compare), dependency_order(dict(space))
    for values in design(space, compare, trials_per_cell, seed):
        for replicate in seeds:
            for cell in grid:
                point = dict(cell)
                for name in order:
                    if name in values and is_active(space[name], point):
                        point[name] = values[name]
                if len(seeds) > 1:
                    point[SEED_DIMENSION] = replicate
                out.append(point)
    return out


def cell_of(config: Mapping[str, Any], compare: list[str]) -> str:
    """A trial's cell, as text (its compared values, in `compare`'s order)."""
    return json.dumps([config.get(name) for name in compare], default=str)


class CellScheduler(FIFOScheduler):
    """Early stopping within each cell: one scheduler per cell (made by `make(cell)` when the
    cell's first trial arrives), each told only its own cell's trials, so no trial is ever
    compared with, or stopped because of, a trial of another cell."""

    def __init__(self, compare: list[str], make: Callable[[str], TrialScheduler]) -> None:
        super().__init__()
        self.compare, self.make = list(compare), make
        self.schedulers: dict[str, TrialScheduler] = {}

    def of(self, trial: Any) -> TrialScheduler:
        cell = cell_of(trial.config, self.compare)
        if cell not in self.schedulers:
            self.schedulers[cell] = self.make(cell)
        return self.schedulers[cell]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each cell's scheduler knows its metrics

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"early stopping in {len(self.schedulers)} cells of {', '.join(self.compare)}"


def state_name(cell: str, scheduler: str = "moasha") -> str:
    """The file a cell's MOASHA (or ASHA) keeps its rungs in (beside the search's other records)."""
    return f"{scheduler}-{hashlib.sha1(cell.encode()).hexdigest()[:10]}.json"
