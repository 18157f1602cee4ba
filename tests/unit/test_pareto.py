from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch.records.pareto import hypervolume, pareto_mask, pareto_table


def test_mask_accuracy_max_params_min() -> None:
    values = np.array(
        [
            [0.90, 1000],  # front: best accuracy
            [0.85, 100],  # front
            [0.80, 500],  # dominated by row 1
            [0.70, 10],  # front: fewest params
            [0.90, 2000],  # dominated by row 0 (same accuracy, more params)
        ]
    )
    assert pareto_mask(values, ["max", "min"]).tolist() == [True, True, False, True, False]


def test_mask_duplicates_are_both_on_front() -> None:
    values = np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, True, False]


def test_mask_min_min_and_three_objectives() -> None:
    values = np.array([[1, 2], [2, 1], [2, 2], [0, 3]])
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, True, False, True]
    values3 = np.array([[1, 1, 1], [1, 1, 0], [0, 2, 0]])
    assert pareto_mask(values3, ["max", "max", "max"]).tolist() == [True, False, True]


def test_mask_empty_and_bad_sense() -> None:
    assert pareto_mask(np.zeros((0, 2)), ["max", "min"]).tolist() == []
    with pytest.raises(ValueError, match="sense"):
        pareto_mask(np.zeros((1, 2)), ["max", "up"])


def test_hypervolume_2d_single_box_and_staircase() -> None:
    assert hypervolume(np.array([[2.0, 3.0]]), ["max", "max"], [0, 0]) == 6.0
    # Staircase (1,3), (2,2), (3,1): 3*1 + 2*1 + 1*1 = 6.
    stairs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(stairs, ["max", "max"], [0, 0]) == 6.0


def test_hypervolume_2d_mixed_senses() -> None:
    # accuracy max with reference 0.5, params min with reference 100.
    values = np.array([[0.9, 50.0], [0.7, 10.0]])
    # boxes: (0.4 x 50) and (0.2 x 90), overlap (0.2 x 50): 20 + 18 - 10 = 28
    assert hypervolume(values, ["max", "min"], [0.5, 100.0]) == pytest.approx(28.0)


def test_hypervolume_ignores_points_not_dominating_reference() -> None:
    values = np.array([[2.0, 2.0], [5.0, -1.0], [-3.0, 9.0], [0.0, 4.0]])
    assert hypervolume(values, ["max", "max"], [0, 0]) == 4.0
    assert hypervolume(np.array([[-1.0, -1.0]]), ["max", "max"], [0, 0]) == 0.0


def test_hypervolume_invariant_to_dominated_points() -> None:
    rng = np.random.default_rng(0)
    front = np.array([[1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [2.0, 2.0, 3.0]])
    base = hypervolume(front, ["max"] * 3, [0, 0, 0])
    dominated = front[rng.integers(0, 3, 20)] * rng.uniform(0.1, 1.0, (20, 3))
    assert hypervolume(np.vstack([front, dominated]), ["max"] * 3, [0, 0, 0]) == pytest.approx(base)
    front2 = np.array([[1.0, 3.0], [3.0, 1.0]])
    assert hypervolume(np.vstack([front2, [[0.5, 0.5], [1.0, 1.0], [1.0, 3.0]]]), ["max", "max"], [0, 0]) == 5.0


def test_hypervolume_3d_box_union_exact() -> None:
    # Two boxes from the origin: 2*2*2 + 1*1*4 - overlap 1*1*2 = 10.
    values = np.array([[2.0, 2.0, 2.0], [1.0, 1.0, 4.0]])
    assert hypervolume(values, ["max"] * 3, [0, 0, 0]) == pytest.approx(10.0)


def test_hypervolume_3d_matches_monte_carlo() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0.0, 1.0, (12, 3))
    senses = ["max", "min", "max"]
    reference = [0.0, 1.0, 0.0]
    exact = hypervolume(points, senses, reference)
    samples = rng.uniform(0.0, 1.0, (200_000, 3))
    # sample s is dominated when some point is >= in dims 0, 2 and <= in dim 1.
    covered = np.zeros(len(samples), dtype=bool)
    for p in points:
        covered |= (samples[:, 0] <= p[0]) & (samples[:, 1] >= p[1]) & (samples[:, 2] <= p[2])
    estimate = covered.mean()  # unit cube volume
    stderr = math.sqrt(estimate * (1 - estimate) / len(samples))
    assert exact == pytest.approx(estimate, abs=5 * stderr)


def test_pareto_table_drops_missing_and_flags_front() -> None:
    rows = [
        {"trial_id": "a", "val_accuracy": 0.9, "adapter_params": 1000},
        {"trial_id": "b", "val_accuracy": 0.8, "adapter_params": 2000},
        {"trial_id": "c", "val_accuracy": float("nan"), "adapter_params": 10},
        {"trial_id": "d", "adapter_params": 5},
        {"trial_id": "e", "val_accuracy": 0.7, "adapter_params": 100},
    ]
    table = pareto_table(rows, {"val_accuracy": "max", "adapter_params": "min"})
    assert [(r["trial_id"], r["pareto"]) for r in table] == [("a", True), ("b", False), ("e", True)]
    assert "pareto" not in rows[0]
    assert pareto_table([], {"val_accuracy": "max"}) == []
