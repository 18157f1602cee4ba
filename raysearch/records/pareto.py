"""Pareto fronts and hypervolume, pure numpy.

A point a dominates b when a is at least as good in every objective and strictly
better in one. Internally every objective is turned into "bigger is better" by
negating the ones to minimize, so one rule serves every mix of senses.
Hypervolume is the volume dominated by a set of points and bounded by a
reference point; it grows only when the front improves, which makes it the usual
single number for comparing two searches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SENSES = ("max", "min")


def _signs(senses: Sequence[str], n_objectives: int) -> np.ndarray:
    if len(senses) != n_objectives:
        raise ValueError(f"got {len(senses)} senses for {n_objectives} objectives")
    bad = [s for s in senses if s not in SENSES]
    if bad:
        raise ValueError(f"objective sense must be one of {SENSES}, got {bad}")
    return np.array([1.0 if s == "max" else -1.0 for s in senses])


def _as_maximization(values: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (n_points, n_objectives), got {values.shape}")
    return values * _signs(senses, values.shape[1])


def pareto_mask(values: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """True for the non-dominated rows of `values` (n_points, n_objectives).

    Identical points do not dominate each other, so duplicates on the front are
    all marked True.
    """
    points = _as_maximization(values, senses)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    # geq[i, j]: j is at least as good as i everywhere; gt[i, j]: j is better somewhere.
    geq = (points[None, :, :] >= points[:, None, :]).all(axis=2)
    gt = (points[None, :, :] > points[:, None, :]).any(axis=2)
    dominated = (geq & gt).any(axis=1)
    return ~dominated


def _hv_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by `points` (maximization) above `reference`: one sweep."""
    order = np.lexsort((-points[:, 1], -points[:, 0]))  # x descending, then y descending
    area, best_y = 0.0, reference[1]
    for x, y in points[order]:
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return float(area)


def _hv(points: np.ndarray, reference: np.ndarray) -> float:
    """Slice along the last objective and recurse (HSO); fine for small fronts."""
    k = points.shape[1]
    if len(points) == 0:
        return 0.0
    if k == 1:
        return float(points[:, 0].max() - reference[0])
    if k == 2:
        return _hv_2d(points, reference)
    levels = np.unique(points[:, -1])[::-1]  # descending
    volume = 0.0
    for i, level in enumerate(levels):
        below = levels[i + 1] if i + 1 < len(levels) else reference[-1]
        # Between `below` and `level`, the slice is dominated by every point reaching `level`.
        active = points[points[:, -1] >= level, :-1]
        active = active[pareto_mask(active, ["max"] * (k - 1))]
        volume += (level - below) * _hv(active, reference[:-1])
    return float(volume)


def hypervolume(values: np.ndarray, senses: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume of `values` with respect to `reference`.

    `reference` is given in the objectives' own units (e.g. accuracy 0.0 for a
    "max" objective, the largest acceptable parameter count for a "min" one).
    Points that do not strictly dominate the reference contribute nothing.
    """
    points = _as_maximization(values, senses)
    ref = np.asarray(reference, dtype=float) * _signs(senses, points.shape[1])
    if ref.shape != (points.shape[1],):
        raise ValueError(f"reference must have {points.shape[1]} values, got {len(reference)}")
    points = points[np.isfinite(points).all(axis=1)]
    points = points[(points > ref).all(axis=1)]
    if len(points) == 0:
        return 0.0
    return _hv(points[pareto_mask(points, ["max"] * points.shape[1])], ref)


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def pareto_table(rows: list[dict], objectives: dict[str, str]) -> list[dict]:
    """Rows having every objective as a finite number, each with a "pareto" flag added.

    `objectives` maps a column to "max" or "min", e.g.
    {"val_accuracy": "max", "adapter_params": "min"}. Rows lacking an objective
    (diverged or failed trials) are left out.
    """
    names = list(objectives)
    kept = [dict(row) for row in rows if all(_finite_number(row.get(name)) for name in names)]
    if not kept:
        return []
    values = np.array([[float(row[name]) for name in names] for row in kept])
    mask = pareto_mask(values, [objectives[name] for name in names])
    for row, on_front in zip(kept, mask):
        row["pareto"] = bool(on_front)
    return kept
