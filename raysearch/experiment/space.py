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

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from raysearch.experiment.problems import Problem, StrictModel

if TYPE_CHECKING:  # optuna is imported where it is used: reading a file should not pay for it
    import optuna

SCALAR_TYPES = (str, int, float, bool, type(None))  # what Optuna's suggest_categorical accepts


class Dimension(StrictModel):
    """One search dimension: exactly one of `choice`, `uniform`, `loguniform`, `int`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)
    mapping_help: ClassVar[str] = ("must be a mapping like {choice: [...]}, {uniform: [low, high]}, "
                                   "{loguniform: [low, high]} or {int: [low, high]}")

    choice: list[Any] | None = None
    """Categorical values (strings, numbers, booleans)."""
    uniform: tuple[float, float] | None = None
    """Float range [low, high]."""
    loguniform: tuple[float, float] | None = None
    """Float range [low, high] sampled on a log scale; low > 0."""
    int_: tuple[int, int] | None = Field(None, alias="int")
    """Integer range [low, high], both included."""
    log: bool = False
    """Sample `uniform`/`int` on a log scale."""
    step: float | None = None
    """Discretization step for `uniform`/`int`; cannot be combined with `log`."""
    when: dict[str, list[Any]] | None = None
    """Sample this dimension only when each named `choice` dimension took one of the listed values."""

    @field_validator("choice")
    @classmethod
    def _check_choice(cls, values: list[Any] | None) -> list[Any] | None:
        if values is None:
            return values
        if not values:
            raise ValueError("must list at least one value")
        for value in values:
            if not isinstance(value, SCALAR_TYPES):
                raise ValueError(f"values must be strings, numbers or booleans, got {value!r}")
        return values

    @field_validator("uniform", "loguniform", "int_", mode="before")
    @classmethod
    def _check_pair(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ValueError("must be a list [low, high]")
        return value

    @field_validator("uniform", "loguniform")
    @classmethod
    def _check_float_range(cls, value: tuple[float, float] | None, info: Any) -> Any:
        if value is None:
            return value
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("low and high must be finite numbers")
        if info.field_name == "loguniform" and low <= 0:
            raise ValueError(f"low must be > 0 for a log scale, got {low}")
        if low >= high:
            raise ValueError(f"low must be < high, got [{low}, {high}]")
        return value

    @field_validator("int_")
    @classmethod
    def _check_int_range(cls, value: tuple[int, int] | None) -> Any:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"low must be <= high, got [{value[0]}, {value[1]}]")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> Dimension:
        given = [k for k in ("choice", "uniform", "loguniform", "int") if self._raw(k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of choice, uniform, loguniform, int (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if self.log and kind not in ("uniform", "int"):
            raise ValueError(f"`log` applies to `uniform` and `int` only (`{kind}` given)")
        if self.step is not None:
            if kind not in ("uniform", "int"):
                raise ValueError(f"`step` applies to `uniform` and `int` only (`{kind}` given)")
            if self.log:
                raise ValueError("Optuna cannot combine `log: true` with `step`; drop one of them")
            if self.step <= 0 or (kind == "int" and self.step != int(self.step)):
                raise ValueError(f"`step` must be a positive {'integer' if kind == 'int' else 'number'}, got {self.step}")
        if self.log and kind != "loguniform":
            low = self.bounds[0]
            if (kind == "int" and low < 1) or (kind == "uniform" and low <= 0):
                raise ValueError(f"`log: true` needs low {'>= 1' if kind == 'int' else '> 0'}, got {low}")
        return self

    def _raw(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform", "int"]:
        """Which of the four forms this dimension uses."""
        for kind in ("choice", "uniform", "loguniform", "int"):
            if self._raw(kind) is not None:
                return kind  # type: ignore[return-value]
        raise AssertionError("validated Dimension has no kind")

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range dimension."""
        value = self._raw(self.kind)
        if self.kind == "choice":
            raise TypeError("a choice dimension has no bounds")
        return value[0], value[1]

    @property
    def is_log(self) -> bool:
        return self.kind == "loguniform" or self.log

    def at(self, u: float) -> Any:
        """The value at quantile `u` in [0, 1): a choice's values as equal strata, a range on a log
        scale where it is one, an int range as strata of [low, high + 1), `step` respected."""
        if self.kind == "choice":
            values = self.choice or []
            return values[min(int(u * len(values)), len(values) - 1)]
        low, high = self.bounds
        top = high + 1 if self.kind == "int" else high
        value = math.exp(math.log(low) + u * (math.log(top) - math.log(low))) if self.is_log else low + u * (top - low)
        if self.kind == "int":
            value = min(int(high), int(math.floor(value)))
            return int(low + (value - low) // self.step * self.step) if self.step else value
        return min(high, low + round((value - low) / self.step) * self.step) if self.step else value



def when_problems(space: dict[str, Dimension]) -> list[Problem]:
    problems = []
    for name, dim in space.items():
        for key, values in (dim.when or {}).items():
            path = f"search.space.{name}.when.{key}"
            parent = space.get(key)
            if key == name:
                problems.append(Problem(path, values, "a dimension cannot depend on itself"))
            elif parent is None:
                problems.append(Problem(path, values, f"no dimension named '{key}'; `when` can name: "
                                        + ", ".join(n for n, d in space.items() if d.kind == "choice" and n != name)))
            elif parent.kind != "choice":
                problems.append(Problem(path, values, f"'{key}' is a `{parent.kind}` dimension; `when` can only name `choice` dimensions"))
            elif not values:
                problems.append(Problem(path, values, f"must list at least one of {parent.choice}"))
            else:
                for i, value in enumerate(values):
                    if value not in parent.choice:  # type: ignore[operator]
                        problems.append(Problem(f"{path}[{i}]", value, f"not a choice of '{key}'; choices: {parent.choice}"))
    if not problems:
        cycle = _find_cycle(space)
        if cycle:
            problems.append(Problem(f"search.space.{cycle[0]}.when", space[cycle[0]].when,
                                    "`when` conditions form a cycle: " + " -> ".join(cycle)))
    return problems


def _find_cycle(space: dict[str, Dimension]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if state.get(name) == 1:
            return stack[stack.index(name):] + [name]
        if state.get(name) == 2 or name not in space:
            return None
        state[name] = 1
        for parent in space[name].when or {}:
            found = visit(parent, stack + [name])
            if found:
                return found
        state[name] = 2
        return None

    for name in space:
        found = visit(name, [])
        if found:
            return found
    return None




def dependency_order(space: dict[str, Dimension]) -> list[str]:
    """Dimension names with every dimension named in a `when` before its dependents.

    Stable: otherwise the file's order. Assumes no cycles (`when_problems` rejects them).
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


__all__ = [
    "Dimension",
    "contains",
    "default_point",
    "define_by_run",
    "dependency_order",
    "grid_points",
    "is_active",
    "sample_config",
    "when_problems",
]
