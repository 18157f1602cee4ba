"""The `search.space` section of the experiment file -> Optuna.

The only module that knows the YAML space syntax. A dimension is one of

    rank:  {choice: [4, 8, 16]}                     -> trial.suggest_categorical
    lr:    {loguniform: [1.0e-4, 3.0e-3]}           -> trial.suggest_float(log=True)
    alpha: {uniform: [4, 64], step: 4}              -> trial.suggest_float(step=4)
    rank:  {int: [2, 64], log: true}                -> trial.suggest_int(log=True)

and may carry `when: {variant: [sora]}`: it is sampled only when every named
`choice` dimension took one of the listed values (define-by-run, so Optuna's TPE
models conditional dimensions without inventing values for inactive ones).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

import optuna

if TYPE_CHECKING:
    from raysearch.spec import Dimension, SearchSpec


def dependency_order(space: dict[str, Dimension]) -> list[str]:
    """Dimension names with every dimension named in a `when` before its dependents.

    Stable: otherwise the file's order. Assumes no cycles (spec.py rejects them).
    """
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in space:
            return
        for parent in space[name].when or {}:
            visit(parent)
        ordered.append(name)

    for name in space:
        visit(name)
    return ordered


def is_active(dim: Dimension, sampled: dict[str, Any]) -> bool:
    """Whether `dim`'s `when` condition holds for the values sampled so far."""
    return all(key in sampled and sampled[key] in values for key, values in (dim.when or {}).items())


def _suggest(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    if dim.kind == "choice":
        return trial.suggest_categorical(name, dim.choice)
    low, high = dim.bounds
    if dim.kind == "int":
        step = int(dim.step) if dim.step is not None else 1
        return trial.suggest_int(name, int(low), int(high), step=step, log=dim.log)
    return trial.suggest_float(name, low, high, log=dim.is_log, step=dim.step)


class DefineByRun:
    """An Optuna define-by-run function (as `OptunaSearch(space=...)` takes) for the space.

    A class rather than a closure: Tune pickles the searcher with its state.
    """

    def __init__(self, space: dict[str, Dimension]) -> None:
        self.space = space
        self.order = dependency_order(space)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        sampled: dict[str, Any] = {}
        for name in self.order:
            if is_active(self.space[name], sampled):
                sampled[name] = _suggest(trial, name, self.space[name])
        return None


def define_by_run(space: dict[str, Dimension]) -> Callable[[optuna.Trial], dict[str, Any] | None]:
    return DefineByRun(space)


def sample_config(space: dict[str, Dimension], trial: optuna.Trial) -> dict[str, Any]:
    """Sample one configuration directly (for tests and dry runs): {name: value} of active dims."""
    define_by_run(space)(trial)
    return dict(trial.params)


def grid_points(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """Every combination of the `choice` dimensions, honouring `when`.

    A conditional dimension is combined only where its condition holds, so no two
    points describe the same effective configuration. Range dimensions are left out:
    the sampler fills them in.
    """
    points: list[dict[str, Any]] = [{}]
    for name in dependency_order(space):
        dim = space[name]
        if dim.kind != "choice":
            continue
        grown = []
        for point in points:
            if is_active(dim, point):
                grown += [{**point, name: value} for value in dim.choice or []]
            else:
                grown.append(point)
        points = grown
    return points


def contains(dim: Dimension, value: Any) -> bool:
    """Whether the dimension could sample `value` (one of its choices; in its range, on its step)."""
    if dim.kind == "choice":
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dim.choice or [])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high = dim.bounds
    if not low <= value <= high or (dim.kind == "int" and int(value) != value):
        return False
    if dim.step:
        steps = (value - low) / dim.step
        return abs(steps - round(steps)) < 1e-9
    return True


def default_point(space: dict[str, Dimension], defaults: dict[str, Any]) -> dict[str, Any]:
    """The experiment file's own configuration, as a point of the space: each active dimension's
    value in `defaults` when the dimension could sample it. Dimensions left out (no default,
    or one the dimension excludes, or a `when` on a dimension left out) are sampled."""
    point: dict[str, Any] = {}
    for name in dependency_order(space):
        dim, value = space[name], defaults.get(name)
        if is_active(dim, point) and value is not None and contains(dim, value):
            point[name] = value
    return point


def num_trials_for(search: SearchSpec) -> int:
    """Trials the search will run: the grid size for `grid`, else `num_trials`."""
    if search.sampler == "grid":
        return len(grid_points(search.space))
    return search.num_trials


def make_sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for `search.sampler`, seeded with `search.seed`.

    `grid` returns a RandomSampler: the tuner enqueues `grid_points()` as the points to
    evaluate, and the random sampler only fills the range dimensions. (Optuna's
    GridSampler cannot express conditional dimensions.)
    """
    seed = search.seed
    if search.sampler == "tpe":
        # multivariate+group model the joint and conditional structure; constant_liar keeps
        # concurrent trials from being proposed the same point. All three are "experimental".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            startup = {} if search.startup_trials is None else {"n_startup_trials": search.startup_trials}
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **startup)
    if search.sampler == "nsga2":
        # Small populations: searches here run tens of trials, not thousands.
        population = max(2, min(8, search.num_trials))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if search.sampler in ("random", "grid"):
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {search.sampler!r}; allowed: tpe, nsga2, random, grid")


__all__ = [
    "contains",
    "default_point",
    "define_by_run",
    "dependency_order",
    "grid_points",
    "is_active",
    "make_sampler",
    "num_trials_for",
    "sample_config",
]
