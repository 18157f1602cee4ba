"""Every shipped experiment file validates, and the CLI rejects bad input with exit code 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysearch.cli import app
from raysearch.experiment.spec import load_spec

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


@pytest.mark.parametrize("content, says", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not UTF-8 text (byte 0 is b'\\x89')"),
    ("name: caf\u00e9\n".encode("latin-1"), "is not UTF-8 text (byte 9 is b'\\xe9')"),
    (b"name: x\x00\nsearch: {}\n", "holds NUL bytes"),
    (b"", "is empty"),
    (b"\n  \n# only a comment\n", "is empty (or only comments)"),
    (None, "is a folder"),
], ids=["binary", "latin-1", "nul", "empty", "comments", "folder"])
def test_an_experiment_file_that_is_not_yaml_text_exits_2_and_starts_nothing(tmp_path, monkeypatch, content, says):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "experiment.yaml"
    if content is None:
        bad.mkdir()
    else:
        bad.write_bytes(content)
    for command in (["run", "--space", str(bad), "--storage", str(tmp_path / "results")], ["validate", str(bad)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        output = " ".join(result.output.split())
        assert says in output and str(bad) in output and "expected an experiment file" in output, output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]  # no results, no mlflow.db


def test_set_override_is_validated(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(SPACES[0]), "--set", "train.lr=-1"])
    assert result.exit_code == 2 and "train.lr" in result.output


def test_existing_results_need_overwrite(tmp_path):
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "experiment.yaml").write_text("name: demo\n")  # a search started there
    result = CliRunner().invoke(app, ["run", "--space", str(Path(SPACES[0].parent, "demo.yaml")),
                                      "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_a_folder_left_by_a_driver_killed_while_starting_is_not_a_search(tmp_path):
    from raysearch.cli import has_results

    folder = tmp_path / "demo"
    folder.mkdir()  # what a driver killed while Ray started leaves: nothing to resume
    assert not has_results(str(folder))
    (folder / "experiment.yaml").write_text("name: demo\n")  # the first thing a search writes
    assert has_results(str(folder))


@pytest.mark.subprocess
def test_the_driver_validates_and_starts_without_the_training_libraries(tmp_path):
    """Validating an experiment needs the adapter registry, and nothing may start before it
    is valid, so what that import costs is start-up of every search. PEFT, transformers
    and the loop's data code are the trial process's to import (~3.5 s on 2 cores)."""
    code = (
        "import sys\n"
        "import raysearch.cli, raysearch.search.driver\n"
        "from raysearch.experiment.preflight import machine_problems\n"
        "from raysearch.experiment.spec import load_spec\n"
        "for path in sys.argv[2:]:\n"
        "    machine_problems(load_spec(path), sys.argv[1])\n"
        "print(' '.join(m for m in ('peft', 'transformers', 'datasets', 'trainables.loop') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "results"), *map(str, SPACES)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
