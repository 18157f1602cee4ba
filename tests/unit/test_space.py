"""search.space -> Optuna: types, bounds, log/step, `when`, grid points, samplers."""
from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

import raysearch.experiment.checks as checks_module
from raysearch.experiment.sections import num_trials_for
from raysearch.experiment.space import define_by_run, dependency_order, grid_points
from raysearch.search.tuner import make_sampler
from raysearch.experiment.sections import SearchSpec
from raysearch.experiment.space import Dimension

optuna.logging.set_verbosity(optuna.logging.WARNING)

LORA_PARAMS = frozenset({"rank", "alpha", "scaling", "dropout", "loraplus_ratio", "target_modules"})


class _LoRA:
    hyperparams = LORA_PARAMS


class _SoRA:
    hyperparams = LORA_PARAMS | {"sora_lambda"}


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks_module, "ADAPTERS", {"lora": _LoRA, "dora": _LoRA, "sora": _SoRA})


def space_of(raw: dict[str, Any]) -> dict[str, Dimension]:
    return {name: Dimension.model_validate(dim) for name, dim in raw.items()}


def search_of(raw_space: dict[str, Any], **fields: Any) -> SearchSpec:
    return SearchSpec.model_validate({"space": raw_space, **fields})


def ask_many(space: dict[str, Dimension], n: int, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    suggest = define_by_run(space)
    configs = []
    for _ in range(n):
        trial = study.ask()
        assert suggest(trial) is None
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def test_define_by_run_honours_types_bounds_log_and_step() -> None:
    space = space_of({
        "rank": {"choice": [4, 8, 16]},
        "lr": {"loguniform": [1e-4, 1e-2]},
        "dropout": {"uniform": [0.0, 0.2], "step": 0.05},
        "batch_size": {"int": [8, 64], "log": True},
        "alpha": {"int": [4, 32], "step": 4},
        "weight_decay": {"uniform": [1e-3, 1e-1], "log": True},
    })
    configs = ask_many(space, 40)
    for config in configs:
        assert set(config) == set(space)
        assert config["rank"] in (4, 8, 16)
        assert isinstance(config["lr"], float) and 1e-4 <= config["lr"] <= 1e-2
        assert 0.0 <= config["dropout"] <= 0.2
        assert math.isclose(config["dropout"] / 0.05, round(config["dropout"] / 0.05), abs_tol=1e-9)
        assert isinstance(config["batch_size"], int) and 8 <= config["batch_size"] <= 64
        assert isinstance(config["alpha"], int) and config["alpha"] % 4 == 0 and 4 <= config["alpha"] <= 32
        assert 1e-3 <= config["weight_decay"] <= 1e-1
    # the log scale really is used: on a linear scale almost no draw of lr falls below 1e-3
    assert sum(c["lr"] < 1e-3 for c in configs) >= 10
    assert len({c["rank"] for c in configs}) == 3


def test_distributions_match_the_yaml() -> None:
    space = space_of({"lr": {"loguniform": [1e-4, 1e-2]}, "rank": {"int": [2, 64], "log": True},
                      "dropout": {"uniform": [0.0, 0.2], "step": 0.05}, "scaling": {"choice": ["lora", 0.5]}})
    study = optuna.create_study()
    trial = study.ask()
    define_by_run(space)(trial)
    dists = trial.distributions
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["rank"] == optuna.distributions.IntDistribution(2, 64, log=True)
    assert dists["dropout"] == optuna.distributions.FloatDistribution(0.0, 0.2, step=0.05)
    assert dists["scaling"] == optuna.distributions.CategoricalDistribution(["lora", 0.5])


def test_when_dimension_only_sampled_for_its_variant() -> None:
    # `sora_lambda` is listed *before* `variant`: dependency order must still sample variant first.
    space = space_of({
        "sora_lambda": {"loguniform": [1e-4, 1e-1], "when": {"variant": ["sora"]}},
        "variant": {"choice": ["lora", "sora"]},
        "rank": {"choice": [4, 8]},
    })
    assert dependency_order(space) == ["variant", "sora_lambda", "rank"]
    for sampler in (optuna.samplers.RandomSampler(seed=1), make_sampler(search_of({"rank": {"choice": [4]}}))):
        configs = ask_many(space, 50, sampler)
        lora = [c for c in configs if c["variant"] == "lora"]
        sora = [c for c in configs if c["variant"] == "sora"]
        assert lora and sora
        assert all("sora_lambda" not in c for c in lora)
        assert all(1e-4 <= c["sora_lambda"] <= 1e-1 for c in sora)


def test_nested_when_chain() -> None:
    # alpha depends on dropout, which depends on variant: an inactive parent makes its child inactive
    space = space_of({
        "variant": {"choice": ["lora", "sora"]},
        "dropout": {"choice": [0.0, 0.1], "when": {"variant": ["sora"]}},
        "alpha": {"choice": [8, 16], "when": {"dropout": [0.1]}},
    })
    for config in ask_many(space, 50):
        if config["variant"] == "lora":
            assert set(config) == {"variant"}
        if "alpha" in config:
            assert config["dropout"] == 0.1


def test_grid_points_counts_products() -> None:
    space = space_of({"rank": {"choice": [4, 8]}, "alpha": {"choice": [8, 16, 32]}, "lr": {"loguniform": [1e-4, 1e-2]}})
    points = grid_points(space)
    assert len(points) == 6
    assert {(p["rank"], p["alpha"]) for p in points} == {(r, a) for r in (4, 8) for a in (8, 16, 32)}
    assert all("lr" not in p for p in points)  # range dims are left to the sampler


def test_grid_points_conditional_dimension() -> None:
    space = space_of({
        "variant": {"choice": ["lora", "sora"]},
        "rank": {"choice": [4, 8, 16]},
        "sora_lambda": {"choice": [1e-3, 1e-2], "when": {"variant": ["sora"]}},
    })
    points = grid_points(space)
    # lora: 3 ranks; sora: 3 ranks x 2 lambdas -> 9, no duplicates
    assert len(points) == 9
    assert len({tuple(sorted(p.items())) for p in points}) == 9
    assert all("sora_lambda" not in p for p in points if p["variant"] == "lora")
    assert sum(p["variant"] == "sora" for p in points) == 6


def test_num_trials_for() -> None:
    space = {"rank": {"choice": [4, 8]}, "alpha": {"choice": [8, 16, 32]}}
    assert num_trials_for(search_of(space, sampler="grid")) == 6
    assert num_trials_for(search_of(space, sampler="tpe", num_trials=11)) == 11


def test_grid_points_replayed_by_enqueue_give_every_combination() -> None:
    # How the tuner uses grid: enqueue every point, the sampler fills the range dims.
    raw = {"rank": {"choice": [4, 8]}, "alpha": {"choice": [8, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}
    search = search_of(raw, sampler="grid")
    study = optuna.create_study(sampler=make_sampler(search))
    for point in grid_points(search.space):
        study.enqueue_trial(point)
    suggest = define_by_run(search.space)
    seen = []
    for _ in range(num_trials_for(search)):
        trial = study.ask()
        suggest(trial)
        seen.append((trial.params["rank"], trial.params["alpha"]))
        assert 1e-4 <= trial.params["lr"] <= 1e-2
        study.tell(trial, 0.0)
    assert sorted(seen) == [(4, 8), (4, 16), (8, 8), (8, 16)]


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [("tpe", optuna.samplers.TPESampler), ("nsga2", optuna.samplers.NSGAIISampler),
     ("random", optuna.samplers.RandomSampler), ("grid", optuna.samplers.RandomSampler)],
)
def test_make_sampler_kinds(sampler: str, expected: type) -> None:
    search = search_of({"rank": {"choice": [4, 8]}}, sampler=sampler, seed=3)
    assert isinstance(make_sampler(search), expected)


def test_samplers_are_seeded() -> None:
    raw = {"lr": {"loguniform": [1e-4, 1e-2]}, "rank": {"choice": [4, 8, 16]}}
    first = ask_many(space_of(raw), 5, make_sampler(search_of(raw, sampler="random", seed=7)))
    second = ask_many(space_of(raw), 5, make_sampler(search_of(raw, sampler="random", seed=7)))
    assert first == second


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "grid"])
def test_multi_objective_study_runs_with_each_sampler(sampler: str) -> None:
    raw = {
        "variant": {"choice": ["lora", "sora"]},
        "rank": {"choice": [2, 4, 8, 16]},
        "lr": {"loguniform": [1e-4, 1e-2]},
        "sora_lambda": {"loguniform": [1e-4, 1e-1], "when": {"variant": ["sora"]}},
    }
    search = search_of(raw, sampler=sampler, num_trials=10, objectives={"val_accuracy": "max", "adapter_params": "min"})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(search))
    suggest = define_by_run(search.space)
    for _ in range(10):
        trial = study.ask()
        suggest(trial)
        params = trial.params
        # a made-up trade-off: accuracy grows with rank, so does the parameter count
        accuracy = 0.5 + 0.03 * math.log2(params["rank"]) - abs(math.log10(params["lr"]) + 3) * 0.05
        study.tell(trial, [accuracy, params["rank"] * 1000])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 10
    assert study.best_trials  # a Pareto front exists
    for t in complete:
        assert ("sora_lambda" in t.params) == (t.params["variant"] == "sora")


def test_contains_follows_choices_ranges_types_and_steps() -> None:
    from raysearch.experiment.space import contains

    assert contains(Dimension(choice=[2, 8]), 8) and not contains(Dimension(choice=[2, 8]), 4)
    assert not contains(Dimension(choice=[1, 2]), True)  # a boolean is not the number 1
    assert contains(Dimension(loguniform=(1e-4, 1e-2)), 5e-4) and not contains(Dimension(loguniform=(1e-4, 1e-2)), 0.05)
    assert contains(Dimension(uniform=(4, 64), step=4), 16) and not contains(Dimension(uniform=(4, 64), step=4), 18)
    assert not contains(Dimension(int=(2, 64)), 2.5) and not contains(Dimension(int=(2, 64)), "8")


def test_default_point_keeps_what_the_space_allows_and_honours_when() -> None:
    from raysearch.experiment.space import default_point

    space = {
        "variant": Dimension(choice=["lora", "sora"]),
        "rank": Dimension(choice=[4, 16]),
        "alpha": Dimension(choice=[8, 32]),
        "sora_lambda": Dimension(loguniform=(1e-4, 1e-2), when={"variant": ["sora"]}),
        "lr": Dimension(loguniform=(1e-4, 1e-2)),
    }
    defaults = {"variant": "lora", "rank": 16, "alpha": 16, "sora_lambda": 1e-3, "lr": 5e-4}
    # alpha 16 is not a choice: sampled; sora_lambda is inactive for lora
    assert default_point(space, defaults) == {"variant": "lora", "rank": 16, "lr": 5e-4}
    assert default_point(space, {**defaults, "variant": "sora"})["sora_lambda"] == 1e-3


def test_startup_trials_sets_tpes_random_start_up() -> None:
    space = {"rank": {"choice": [4, 8]}}
    short = SearchSpec.model_validate({"sampler": "tpe", "startup_trials": 3, "space": space})
    default = SearchSpec.model_validate({"sampler": "tpe", "space": space})
    assert make_sampler(short)._n_startup_trials == 3  # Optuna keeps it private; no public accessor
    assert make_sampler(default)._n_startup_trials == 10
