"""Commands that only read (leaderboard, report, export, evaluate, dashboard) write nothing
when there is nothing to read (issue 29): no new MLflow store, no results folder, no output
folder; exit 2 with what was missing."""
from __future__ import annotations

import hashlib

import mlflow
import pytest
from typer.testing import CliRunner

from raysearch.cli import app

COMMANDS = {
    "leaderboard": ["leaderboard", "nosuch"],
    "report": ["report", "nosuch"],
    "export": ["export", "nosuch", "exported", "--best"],
    "evaluate": ["evaluate", "nosuch", "--best"],
    "dashboard": ["dashboard", "nosuch"],
}


def snapshot(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_with_no_store_a_read_only_command_creates_none(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the default store, sqlite:///mlflow.db, and ./raysearch_results are here
    result = CliRunner().invoke(app, COMMANDS[command])
    assert result.exit_code == 2, result.output
    assert list(tmp_path.iterdir()) == [], result.output
    if command != "dashboard":  # the dashboard reads the Optuna journal, not MLflow
        assert "no MLflow store at sqlite:///mlflow.db" in " ".join(result.output.split())


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "dashboard"])
def test_with_a_store_but_no_such_search_nothing_changes(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("another")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, [*COMMANDS[command], "--mlflow-uri", uri])
    assert result.exit_code == 2, result.output
    assert "no MLflow experiment named 'nosuch'" in result.output
    assert snapshot(tmp_path) == before
