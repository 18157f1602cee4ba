"""raysearch's Python API (raysearch/api.py) on bad input: the same problems the CLI prints,
raised as RaysearchError with exit code 2, and nothing started or written. The example that
runs a real search through it: tests/integration/test_api_example.py."""
from __future__ import annotations

import subprocess
import sys

import pytest

import raysearch
from raysearch.cli import app  # noqa: F401  (the CLI imports the API: no circle)

GOOD = {"name": "api", "search": {"space": {"rank": {"choice": [4, 8]}}}}


def test_a_dict_is_an_experiment_and_overrides_apply():
    spec = raysearch.load(GOOD, ["train.lr=0.01", "search.num_trials=3"])
    assert spec.name == "api" and spec.train.lr == 0.01 and spec.search.num_trials == 3
    assert GOOD["search"] == {"space": {"rank": {"choice": [4, 8]}}}  # the caller's dict is left alone


def test_an_invalid_experiment_raises_with_every_problem_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = {"search": {"space": {"rank": {"choice": []}, "lr": {"loguniform": [0.1, 0.01]}}}}
    with pytest.raises(raysearch.RaysearchError) as raised:
        raysearch.run(bad, progress=False)
    assert raised.value.exit_code == 2
    assert any("search.space.rank.choice" in p for p in raised.value.problems)
    assert any("search.space.lr" in p for p in raised.value.problems)
    assert list(tmp_path.iterdir()) == []


def test_problems_on_this_machine_raise_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "reviews.csv"
    data.write_text("sentence,label\n")  # a header, no rows
    with pytest.raises(raysearch.RaysearchError) as raised:
        raysearch.run({**GOOD, "task": {"dataset": str(data)}}, progress=False)
    assert "1 problem before starting search 'api'" in raised.value.message
    assert "has a header and no rows" in raised.value.problems[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.csv"]


def test_resume_and_restart_together_are_refused():
    with pytest.raises(raysearch.RaysearchError, match="not both"):
        raysearch.run(GOOD, resume=True, restart=True, progress=False)


def test_a_search_that_never_ran_cannot_be_loaded(tmp_path):
    with pytest.raises(raysearch.RaysearchError, match="no search 'nosuch'"):
        raysearch.load_search("nosuch", storage=str(tmp_path))


@pytest.mark.subprocess
def test_import_raysearch_loads_no_heavy_library():
    code = "import sys, raysearch; print(sorted(m for m in ('ray', 'mlflow', 'pandas', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_cli_verb_is_a_function_of_the_package_even_after_its_modules_load(tmp_path):
    """`raysearch.report` is the API's function, not a module of the same name (issue 30): the
    modules behind the verbs live in subpackages under other names."""
    import raysearch
    import raysearch.cli  # noqa: F401  (loads the CLI and, through it, the package's modules)
    import raysearch.records.report_page  # noqa: F401

    for verb in ("run", "resume_search", "leaderboard", "cells", "export", "evaluate", "report", "load_search"):
        assert callable(getattr(raysearch, verb)) and getattr(raysearch, verb).__module__ == "raysearch.api", verb


@pytest.mark.parametrize("call", [
    lambda api: api.evaluate("s"),  # a search without --best/--trial/--base
    lambda api: api.evaluate("s", best=True, trial="abc"),
    lambda api: api.evaluate(None, space="exp.yaml"),  # neither --adapter nor --base
    lambda api: api.evaluate("s", best=True, scoring="vibes"),
    lambda api: api.evaluate("s", best=True, max_examples=0),
], ids=["no-choice", "two-choices", "space-alone", "unknown-scoring", "zero-examples"])
def test_evaluate_refuses_what_the_cli_refuses_before_reading_anything(call, tmp_path, monkeypatch):
    from raysearch import api

    monkeypatch.chdir(tmp_path)
    with pytest.raises(api.RaysearchError) as raised:
        call(api)
    assert raised.value.exit_code == 2 and str(raised.value).startswith("evaluate:")
    assert list(tmp_path.iterdir()) == []


def test_leaderboard_of_an_unknown_search_raises_and_writes_nothing(tmp_path):
    from raysearch import api

    with pytest.raises(api.RaysearchError, match="no MLflow store"):
        api.leaderboard("nothing", mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert list(tmp_path.iterdir()) == []
