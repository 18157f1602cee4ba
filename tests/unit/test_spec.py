"""The experiment file: defaults, every error kind with its YAML path, overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from typing import Literal

from pydantic import Field

import raysearch.experiment.checks as checks_module
from trainables.adapters.base import Options
from raysearch.experiment.spec import Problem, Spec, SpecError, load_spec, spec_from_dict

LORA_PARAMS = frozenset({"rank", "alpha", "scaling", "dropout", "loraplus_ratio", "target_modules"})


class _Variant:
    hyperparams: frozenset[str] = LORA_PARAMS


class _RoRA:
    hyperparams = LORA_PARAMS - {"scaling"}


class _SoRAOptions(Options):
    sora_lambda: float = Field(1e-3, gt=0)
    sora_gate_init: Literal["ones", "normal"] = "ones"


class _SoRA:
    options = _SoRAOptions
    hyperparams = LORA_PARAMS | frozenset(_SoRAOptions.model_fields)


FAKE_ADAPTERS = {"lora": _Variant, "dora": _Variant, "loraplus": _Variant, "rora": _RoRA, "sora": _SoRA}


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fixed registry (with a SoRA-like variant owning `sora_lambda`) so these tests
    # don't change meaning when variants are added to trainables/adapters.
    monkeypatch.setattr(checks_module, "ADAPTERS", FAKE_ADAPTERS)


MINIMAL = {"search": {"space": {"rank": {"choice": [4, 8, 16]}}}}


def write(tmp_path: Path, data: Any, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def problems_of(data: dict[str, Any]) -> dict[str, Problem]:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(data)
    return {problem.path: problem for problem in caught.value.problems}


def with_space(space: dict[str, Any], **search: Any) -> dict[str, Any]:
    return {"search": {"space": space, **search}}


def test_minimal_file_loads_with_all_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL, "rank-sweep.yaml"))
    assert isinstance(spec, Spec)
    assert spec.name == "rank-sweep"  # the file's stem
    assert spec.model == "builtin:minilm"
    assert spec.task.dataset == "builtin:demo" and spec.task.metric == "accuracy"
    assert spec.task.text_fields is None and spec.task.max_length == 64
    assert spec.train.epochs == 3 and spec.train.batch_size == 32 and spec.train.lr == 5e-4
    assert spec.train.warmup_ratio == 0.06 and spec.train.max_grad_norm == 1.0
    assert spec.adapter.variant == "lora" and spec.adapter.rank == 8 and spec.adapter.scaling == "lora"
    assert spec.search.objectives == {"val_accuracy": "max", "adapter_params": "min"}
    assert spec.search.sampler == "tpe" and spec.search.num_trials == 24 and spec.search.max_concurrent == 2
    assert spec.search.early_stopping.scheduler == "moasha" and spec.search.early_stopping.metric == "val_loss"
    assert spec.resources.workers_per_trial == 1 and spec.resources.gpus_per_worker == 0
    assert spec.tracking.mlflow_uri == "sqlite:///mlflow.db"
    assert spec.storage is None
    assert spec.storage_dir == str(Path("raysearch_results").resolve() / "rank-sweep")
    dim = spec.search.space["rank"]
    assert dim.kind == "choice" and dim.choice == [4, 8, 16]


def test_storage_dir_keeps_uris_and_resolves_local_paths(tmp_path: Path) -> None:
    assert spec_from_dict({**MINIMAL, "storage": "s3://bucket/runs/"}).storage_dir == "s3://bucket/runs/experiment"
    local = spec_from_dict({**MINIMAL, "storage": str(tmp_path / "out")})
    assert local.storage_dir == str(tmp_path / "out" / "experiment")


def test_full_design_example_is_valid() -> None:
    data = {
        "name": "rank-scaling",
        "task": {"type": "classification", "dataset": "builtin:demo", "text_fields": ["sentence"], "max_length": 64},
        "train": {"epochs": 3, "batch_size": 32, "lr": 5.0e-4, "eval_every_steps": 50, "seed": 0},
        "search": {
            "objectives": {"val_accuracy": "max", "adapter_params": "min"},
            "sampler": "tpe",
            "early_stopping": {"scheduler": "asha", "metric": "val_loss", "grace_period": 1, "reduction_factor": 3},
            "space": {
                "variant": {"choice": ["lora", "dora", "sora"]},
                "rank": {"choice": [4, 8, 16, 32, 64, 128]},
                "alpha": {"choice": [8, 16, 32]},
                "scaling": {"choice": ["lora", "rora", 0.75]},
                "lr": {"loguniform": [1.0e-4, 3.0e-3]},
                "sora_lambda": {"loguniform": [1.0e-4, 1.0e-1], "when": {"variant": ["sora"]}},
                "dropout": {"uniform": [0.0, 0.2], "step": 0.05},
                "batch_size": {"int": [8, 64], "log": True},
            },
        },
        "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 0},
    }
    spec = spec_from_dict(data)
    space = spec.search.space
    assert space["lr"].is_log and space["lr"].bounds == (1.0e-4, 3.0e-3)
    assert space["batch_size"].kind == "int" and space["batch_size"].bounds == (8, 64)
    assert space["sora_lambda"].when == {"variant": ["sora"]}


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({**MINIMAL, "bogus": 1}, "bogus", "allowed: name, model, trust_remote_code, task"),
        ({**MINIMAL, "task": {"datset": "x"}}, "task.datset", "allowed: type, dataset"),
        (with_space({"rank": {"choice": [4], "whenn": {}}}), "search.space.rank.whenn", "allowed: choice, uniform, loguniform, int"),
        ({**MINIMAL, "train": {"lr": "fast"}}, "train.lr", "must be a number"),
        ({**MINIMAL, "train": {"batch_size": 0}}, "train.batch_size", "must be > 0"),
        ({**MINIMAL, "train": {"warmup_ratio": 1.0}}, "train.warmup_ratio", "must be < 1"),
        ({**MINIMAL, "task": {"metric": "auc"}}, "task.metric", "'accuracy', 'f1' or 'matthews'"),
        ({**MINIMAL, "adapter": {"scaling": 2}}, "adapter.scaling", "[0, 1]"),
        ({**MINIMAL, "adapter": {"scaling": "big"}}, "adapter.scaling", "'lora', 'rora', 'rslora'"),
        ({**MINIMAL, "name": "bad name!"}, "name", "letters, digits"),
        ({"name": "x"}, "search", "required"),
        ({"search": {}}, "search.space", "required"),
        (with_space({}), "search.space", "at least one dimension"),
        (with_space({"rank": {"choice": []}}), "search.space.rank.choice", "at least one value"),
        (with_space({"rank": {"choice": [[4, 8]]}}), "search.space.rank.choice", "strings, numbers or booleans"),
        (with_space({"lr": {"uniform": [0.1, 0.01]}}), "search.space.lr.uniform", "low must be < high"),
        (with_space({"lr": {"uniform": [0.1]}}), "search.space.lr.uniform", "[low, high]"),
        (with_space({"rank": {"int": [16, 4]}}), "search.space.rank.int", "low must be <= high"),
        (with_space({"lr": {"loguniform": [0, 0.1]}}), "search.space.lr.loguniform", "low must be > 0"),
        (with_space({"lr": {"uniform": [0, 0.1], "log": True}}), "search.space.lr", "needs low > 0"),
        (with_space({"rank": {"choice": [4], "int": [1, 4]}}), "search.space.rank", "exactly one of"),
        (with_space({"rank": {"log": True}}), "search.space.rank", "exactly one of"),
        (with_space({"rank": {"int": [1, 64], "log": True, "step": 2}}), "search.space.rank", "cannot combine `log: true` with `step`"),
        (with_space({"rank": {"choice": [4, 8], "step": 2}}), "search.space.rank", "`step` applies to `uniform` and `int`"),
        (with_space({"rank": {"int": [1, 64], "step": 1.5}}), "search.space.rank", "positive integer"),
        (with_space({"rank": [4, 8]}), "search.space.rank", "{choice: [...]}"),
    ],
)
def test_schema_errors_name_the_yaml_path(data: dict[str, Any], path: str, words: str) -> None:
    problems = problems_of(data)
    assert path in problems, f"expected a problem at {path}, got {sorted(problems)}"
    assert words in problems[path].message


@pytest.mark.parametrize(
    ("space", "path", "words"),
    [
        ({"rank": {"choice": [0, 8]}}, "search.space.rank.choice[0]", "must be > 0"),
        ({"rank": {"choice": [4, 8.5]}}, "search.space.rank.choice[1]", "whole number"),
        ({"rank": {"int": [0, 8]}}, "search.space.rank.int[0]", "must be > 0"),
        ({"rank": {"uniform": [2, 8]}}, "search.space.rank.uniform", "use `int: [low, high]`"),
        ({"dropout": {"uniform": [0.0, 1.5]}}, "search.space.dropout.uniform[1]", "must be < 1"),
        ({"warmup_ratio": {"choice": [-0.1]}}, "search.space.warmup_ratio.choice[0]", "must be >= 0"),
        ({"scaling": {"choice": ["lora", "cubic"]}}, "search.space.scaling.choice[1]", "'lora', 'rora', 'rslora'"),
        ({"variant": {"choice": ["lora", "qlora"]}}, "search.space.variant.choice[1]", "registered: ['dora', 'lora'"),
        ({"variant": {"uniform": [0, 1]}}, "search.space.variant", "must be a `choice` of variants"),
        ({"ranks": {"choice": [4]}}, "search.space.ranks", "unknown dimension; allowed: alpha, batch_size"),
        ({"variant": {"choice": ["lora", "rora"]}, "scaling": {"choice": ["lora", "rora"]}},
         "search.space.scaling", "variant 'rora' cannot use 'scaling'; add `when: {variant: [lora]}`"),
        ({"variant": {"choice": ["lora", "sora"]}, "sora_lambda": {"loguniform": [1e-4, 1e-1]}},
         "search.space.sora_lambda", "variant 'lora' cannot use 'sora_lambda'; add `when: {variant: [sora]}`"),
        ({"sora_lambda": {"loguniform": [1e-4, 1e-1]}}, "search.space.sora_lambda", "variants that can: sora"),
        ({"rank": {"choice": [4], "when": {"variant": ["sora"]}}}, "search.space.rank.when.variant", "no dimension named 'variant'"),
        ({"variant": {"choice": ["lora", "sora"]}, "rank": {"choice": [4], "when": {"variant": ["dora"]}}},
         "search.space.rank.when.variant[0]", "not a choice of 'variant'"),
        ({"lr": {"loguniform": [1e-4, 1e-2]}, "rank": {"choice": [4], "when": {"lr": [1e-3]}}},
         "search.space.rank.when.lr", "only name `choice` dimensions"),
        ({"rank": {"choice": [4, 8], "when": {"alpha": [8]}}, "alpha": {"choice": [8, 16], "when": {"rank": [4]}}},
         "search.space.rank.when", "cycle: rank -> alpha -> rank"),
    ],
)
def test_space_errors_name_the_yaml_path(space: dict[str, Any], path: str, words: str) -> None:
    problems = problems_of(with_space(space))
    assert path in problems, f"expected a problem at {path}, got {sorted(problems)}"
    assert words in problems[path].message


def test_conditional_dimension_used_only_by_its_variant_is_valid() -> None:
    spec = spec_from_dict(with_space({
        "variant": {"choice": ["lora", "rora", "sora"]},
        "scaling": {"choice": ["lora", "rora"], "when": {"variant": ["lora", "sora"]}},
        "sora_lambda": {"loguniform": [1e-4, 1e-1], "when": {"variant": ["sora"]}},
    }))
    assert spec.search.space["scaling"].when == {"variant": ["lora", "sora"]}


def test_adapter_default_variant_is_checked() -> None:
    problems = problems_of({**MINIMAL, "adapter": {"variant": "qlora"}})
    assert "registered" in problems["adapter.variant"].message
    # with no variant dimension the default variant must accept every adapter dimension
    problems = problems_of({"adapter": {"variant": "rora"}, **with_space({"scaling": {"choice": ["lora"]}})})
    assert "variants that can" in problems["search.space.scaling"].message


def test_objectives_and_early_stopping_metric_must_be_reported_metrics() -> None:
    problems = problems_of({**MINIMAL, "search": {**MINIMAL["search"], "objectives": {"val_f1": "max"},
                                                  "early_stopping": {"metric": "loss"}}})
    assert "val_accuracy" in problems["search.objectives.val_f1"].message
    assert "search.early_stopping.metric" in problems
    spec = spec_from_dict({"task": {"metric": "f1"}, "search": {**MINIMAL["search"], "objectives": {"val_f1": "max"}}})
    assert spec.search.objectives == {"val_f1": "max"}
    problems = problems_of({**MINIMAL, "search": {**MINIMAL["search"], "objectives": {"val_accuracy": "up"}}})
    assert "'max' or 'min'" in problems["search.objectives.val_accuracy"].message


def test_grid_num_trials_must_match_grid_size() -> None:
    space = {"rank": {"choice": [4, 8]}, "alpha": {"choice": [8, 16, 32]}}
    assert spec_from_dict(with_space(space, sampler="grid")).search.num_trials == 24  # unset: ignored
    spec_from_dict(with_space(space, sampler="grid", num_trials=6))
    problems = problems_of(with_space(space, sampler="grid", num_trials=5))
    assert "the grid has 6 points" in problems["search.num_trials"].message
    problems = problems_of(with_space({"lr": {"loguniform": [1e-4, 1e-2]}}, sampler="grid"))
    assert "at least one `choice`" in problems["search.sampler"].message


def test_all_problems_are_reported_at_once() -> None:
    data = {
        "bogus": 1,
        "train": {"lr": -1, "batch_size": "many"},
        "search": {"sampler": "annealing", "space": {"rank": {"choice": []}, "lr": {"loguniform": [0, 1]}}},
    }
    with pytest.raises(SpecError) as caught:
        spec_from_dict(data)
    paths = {problem.path for problem in caught.value.problems}
    assert paths == {"bogus", "train.lr", "train.batch_size", "search.sampler",
                     "search.space.rank.choice", "search.space.lr.loguniform"}
    text = str(caught.value)
    assert text.startswith("6 problems in")
    assert "train.lr = -1: must be > 0" in [line.strip() for line in text.splitlines()]


def test_all_semantic_problems_are_reported_at_once() -> None:
    problems = problems_of(with_space({
        "variant": {"choice": ["lora", "nope"]},
        "rank": {"choice": [0]},
        "typo": {"choice": [1]},
        "alpha": {"choice": [8], "when": {"missing": [1]}},
    }))
    assert set(problems) == {"search.space.variant.choice[1]", "search.space.rank.choice[0]",
                             "search.space.typo", "search.space.alpha.when.missing"}


def test_problem_text_truncates_long_values() -> None:
    problem = Problem("search.space.rank.choice", list(range(100)), "too long")
    text = str(problem)
    assert text.startswith("search.space.rank.choice = [0, 1, 2") and text.endswith("...: too long")
    assert len(text) < 120


def test_overrides_are_parsed_as_yaml_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    spec = load_spec(path, [
        "train.lr=1e-3", "search.space.rank={choice: [2, 4]}", "search.space.alpha.choice=[8,16]",
        "task.text_fields=[question, sentence]", "adapter.scaling=0.5",
    ])
    assert spec.train.lr == 1e-3
    assert spec.search.space["rank"].choice == [2, 4]
    assert spec.search.space["alpha"].choice == [8, 16]
    assert spec.task.text_fields == ["question", "sentence"]
    assert spec.adapter.scaling == 0.5


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "model": "builtin:minilm"})
    with pytest.raises(SpecError) as caught:
        load_spec(path, ["train.batch_size=0", "search.space.rank.choice=[0]", "no-equals-sign", "model.x=1"])
    problems = caught.value.problems
    assert [p.path for p in problems if p.path == "--set"] == ["--set", "--set"]
    assert any("key=value" in p.message and p.value == "no-equals-sign" for p in problems)
    assert any("'model' is not a mapping" in p.message for p in problems)
    # schema problems from overrides are reported alongside the override problems
    assert "train.batch_size" in {p.path for p in problems}


def test_override_semantic_problem(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, MINIMAL), ["search.space.rank.choice=[0, 4]"])
    assert [p.path for p in caught.value.problems] == ["search.space.rank.choice[0]"]


def test_cli_options_set_fields_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "name": "from-file"})
    spec = load_spec(path, name="cli-name", num_trials=5, mlflow_uri="file:/tmp/x", storage=str(tmp_path))
    assert spec.name == "cli-name"
    assert spec.search.num_trials == 5
    assert spec.tracking.mlflow_uri == "file:/tmp/x"
    assert spec.storage_dir == str(tmp_path / "cli-name")
    with pytest.raises(SpecError) as caught:
        load_spec(path, name="bad name", num_trials=0)
    assert {p.path for p in caught.value.problems} == {"name", "search.num_trials"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "absent.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "<file>" and "cannot read" in problem.message


def test_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, "search: {space: [unclosed\n"))
    (problem,) = caught.value.problems
    assert problem.path == "<file>" and "invalid YAML" in problem.message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, "- just\n- a list\n"))
    (problem,) = caught.value.problems
    assert problem.path == "<file>" and "mapping" in problem.message


def test_spec_validates_against_the_real_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from trainables.adapters import ADAPTERS
    except ImportError:
        pytest.skip("trainables.adapters registry not importable")
    monkeypatch.setattr(checks_module, "ADAPTERS", None)  # force the lazy import path
    variants = sorted(ADAPTERS)
    users_of_scaling = [v for v in variants if "scaling" in ADAPTERS[v].hyperparams]
    spec = spec_from_dict(with_space({
        "variant": {"choice": variants},
        "rank": {"choice": [4, 8]},
        "scaling": {"choice": ["lora", "rora"], "when": {"variant": users_of_scaling}},
    }))
    assert spec.search.space["variant"].choice == variants
    assert checks_module.ADAPTERS is ADAPTERS


def test_variant_options_in_the_adapter_section_are_validated() -> None:
    ok = spec_from_dict({**MINIMAL, "adapter": {"variant": "sora", "sora_lambda": 0.01}})
    assert ok.adapter.model_dump()["sora_lambda"] == 0.01
    problems = problems_of({**MINIMAL, "adapter": {"variant": "sora", "sora_lambda": -1, "sora_gate_init": "zeros",
                                                   "sparsity_lamda": 0.1}})
    assert "must be > 0" in problems["adapter.sora_lambda"].message
    assert "'ones' or 'normal'" in problems["adapter.sora_gate_init"].message
    assert "unknown adapter option" in problems["adapter.sparsity_lamda"].message
    assert "sora_lambda" in problems["adapter.sparsity_lamda"].message  # lists what is allowed


def test_variant_option_dimensions_are_checked_against_the_options_model() -> None:
    problems = problems_of({"search": {"space": {
        "variant": {"choice": ["sora"]},
        "sora_lambda": {"uniform": [-1.0, 0.1]},
        "sora_gate_init": {"choice": ["ones", "uniform"]},
    }}})
    assert "must be > 0" in problems["search.space.sora_lambda.uniform[0]"].message
    assert "search.space.sora_gate_init.choice[1]" in problems
