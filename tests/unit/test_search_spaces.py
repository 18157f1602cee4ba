"""Every shipped experiment file validates, and the CLI rejects bad input with exit code 2."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.spec import load_spec

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


def test_there_are_shipped_spaces():
    assert {p.name for p in SPACES} >= {"demo.yaml", "rank_scaling.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_space_validates(path):
    spec = load_spec(path)
    assert spec.search.space
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_run_with_bad_file_exits_2_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  space:\n    rank: {choice: []}\n    lr: {loguniform: [0.1, 0.01]}\n")
    result = CliRunner().invoke(app, ["run", "--space", str(bad), "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert "search.space.rank.choice" in result.output
    assert "search.space.lr" in result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_set_override_is_validated(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(SPACES[0]), "--set", "train.lr=-1"])
    assert result.exit_code == 2 and "train.lr" in result.output


def test_existing_results_need_overwrite(tmp_path):
    (tmp_path / "results" / "demo").mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", "--space", str(Path(SPACES[0].parent, "demo.yaml")),
                                      "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2 and "--overwrite" in result.output
