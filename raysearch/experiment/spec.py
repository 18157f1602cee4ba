"""The experiment file: one YAML file describes one search.

`load_spec()` reads the file, applies `--set key=value` overrides and CLI options,
validates the result in two passes and reports *every* problem at once, each with
its YAML path (`search.space.rank.choice[0]`), the bad value and what is allowed:

1. pydantic checks shapes, types and ranges (`extra="forbid"`: unknown keys are errors);
2. `checks.semantic_problems()` checks what needs the whole file: dimension names against
   the adapter registry, which variants can use which dimension, `when` conditions,
   objective names, and the grid size.

The file is split along those seams: `sections.py` (the models), `problems.py` (errors and
pydantic's translated), `checks.py` (pass 2), `space.py` (the `space` syntax and Optuna).
This module reads files and is where callers import the experiment's types from.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import ValidationError

from raysearch.experiment.checks import dataset_paths, semantic_problems, source_name
from raysearch.experiment.problems import MISSING, Problem, SpecError, problems_from_validation
from raysearch.experiment.sections import (CAUSAL_LM_METRICS, CLASSIFICATION_METRICS, DEFAULT_STORAGE, AdapterSpec, EarlyStoppingSpec, ResourcesSpec, SearchSpec,
                                SourceSpec, Spec, TaskSpec, TrackingSpec, TrainSpec, rung_metrics)
from raysearch.experiment.space import Dimension
from trainables.contract import TASK_DIMENSIONS, TRAIN_DIMENSIONS

__all__ = [
    "CAUSAL_LM_METRICS", "CLASSIFICATION_METRICS", "DEFAULT_STORAGE", "MISSING", "TASK_DIMENSIONS",
    "TRAIN_DIMENSIONS", "AdapterSpec", "Dimension", "EarlyStoppingSpec", "Problem", "ResourcesSpec",
    "SearchSpec", "SourceSpec", "Spec", "SpecError", "TaskSpec", "TrackingSpec", "TrainSpec", "dataset_paths",
    "load_spec", "rung_metrics", "source_name", "spec_from_dict",
]


def apply_override(data: dict[str, Any], key: str, value: Any) -> Problem | None:
    """Set the dotted `key` (e.g. search.space.lr) of a raw experiment dict to `value`, making the
    sections on the way; a Problem when the key is malformed or passes through a non-mapping."""
    parts = key.split(".")
    if not all(parts):
        return Problem("--set", key, "key must be a dotted path like search.num_trials")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return Problem("--set", key, f"'{'.'.join(parts[:i + 1])}' is not a mapping, cannot set '{key}'")
        node = child
    node[parts[-1]] = value
    return None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], options: dict[str, Any]) -> list[Problem]:
    """Apply `--set key=value` strings (values read as YAML) and then the CLI's option values to
    the raw experiment dict; the problems of the malformed ones."""
    problems = []
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            problems.append(Problem("--set", override, "must be key=value, e.g. search.num_trials=8"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problems.append(Problem("--set", override, f"value is not valid YAML: {error}"))
            continue
        problem = apply_override(data, key.strip(), value)
        if problem:
            problems.append(problem)
    for key, value in options.items():  # CLI options: raw values, validated like the file
        if value is not None:
            problem = apply_override(data, key, value)
            if problem:
                problems.append(problem)
    return problems


def _validate(data: dict[str, Any], source: str, problems: list[Problem]) -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        raise SpecError(problems + problems_from_validation(error, Spec), source) from None
    problems = problems + semantic_problems(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


def spec_from_dict(data: dict[str, Any], *, source_name: str = "experiment") -> Spec:
    """Validate an already-parsed experiment; `name` defaults to `source_name`."""
    data = dict(data)
    data.setdefault("name", source_name)
    return _validate(data, f"experiment '{source_name}'", [])


def read_experiment_text(path: Path) -> str:
    """The experiment file's text; SpecError (exit 2, the path and what was expected) for a
    folder, an unreadable file, bytes that are not UTF-8 text, or an empty file."""
    source, expected = str(path), "expected an experiment file: YAML text (name:, search:, ...)"
    if path.is_dir():
        raise SpecError([Problem("<file>", source, f"is a folder; {expected}")], source)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SpecError([Problem("<file>", source, f"cannot read the experiment file: {error.strerror or error}")],
                        source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError([Problem("<file>", source, f"is not UTF-8 text (byte {error.start} is "
                                 f"{raw[error.start:error.start + 1]!r}); {expected}")], source) from None
    if "\x00" in text:
        raise SpecError([Problem("<file>", source, f"holds NUL bytes, so it is not text; {expected}")], source)
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise SpecError([Problem("<file>", source, f"is empty (or only comments); {expected}")], source)
    return text


def load_spec(
    path: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    name: str | None = None,
    num_trials: int | None = None,
    mlflow_uri: str | None = None,
    storage: str | None = None,
) -> Spec:
    """Read, override and validate an experiment file (or its contents as a dict, from Python);
    raises SpecError listing every problem."""
    if isinstance(path, Mapping):
        data, source, stem = copy.deepcopy(dict(path)), "experiment", "experiment"
    else:
        path = Path(path)
        source, stem = str(path), path.stem
        text = read_experiment_text(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpecError([Problem("<file>", source, f"invalid YAML: {error}")], source) from None
    if not isinstance(data, dict):
        raise SpecError([Problem("<file>", data, "the top level must be a mapping (name:, search:, ...)")], source)
    options = {"name": name, "search.num_trials": num_trials, "tracking.mlflow_uri": mlflow_uri, "storage": storage}
    problems = apply_overrides(data, overrides, options)
    data.setdefault("name", stem)
    return _validate(data, source, problems)
