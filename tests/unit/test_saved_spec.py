"""`raysearch resume` reads the experiment a search ran with back from its folder
(search.saved_spec): each way that can fail says why, and a good file comes back as the
same search, with the storage and MLflow store it is resumed with."""
from __future__ import annotations

import pytest

from raysearch.records.export_trial import experiment_text
from raysearch.experiment.redaction import redact
from raysearch.search.driver import ResumeError, saved_spec
from raysearch.experiment.spec import spec_from_dict

EXPERIMENT = {"name": "resumable", "search": {"space": {"rank": {"choice": [4, 8]}}, "num_trials": 3}}


def save(root, data: dict) -> None:
    folder = root / data["name"]
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(experiment_text(spec_from_dict(data)))


def test_a_saved_experiment_comes_back_with_the_storage_and_store_it_is_resumed_with(tmp_path):
    save(tmp_path, EXPERIMENT)
    spec = saved_spec("resumable", str(tmp_path), "sqlite:////elsewhere/mlflow.db")
    assert spec.name == "resumable" and spec.search.num_trials == 3 and spec.search.space["rank"].choice == [4, 8]
    assert spec.storage_dir == str((tmp_path / "resumable").resolve())
    assert spec.tracking.mlflow_uri == "sqlite:////elsewhere/mlflow.db"
    assert saved_spec("resumable", str(tmp_path)).tracking.mlflow_uri == "sqlite:///mlflow.db"  # the one it ran with


def test_no_such_search_names_the_folder_and_the_option(tmp_path):
    with pytest.raises(ResumeError, match=r"no search 'missing' in .*experiment.yaml not found.*--storage"):
        saved_spec("missing", str(tmp_path))


def test_a_saved_experiment_that_is_no_longer_valid_says_what_is_wrong(tmp_path):
    save(tmp_path, EXPERIMENT)
    path = tmp_path / "resumable" / "experiment.yaml"
    path.write_text(path.read_text().replace("num_trials: 3", "num_trials: -1"))
    with pytest.raises(ResumeError, match=r"no longer valid:\n1 problem in experiment .resumable.:\n  search.num_trials = -1: must be > 0"):
        saved_spec("resumable", str(tmp_path))


def test_a_store_saved_without_its_credentials_must_be_given_again(tmp_path):
    save(tmp_path, {**EXPERIMENT, "tracking": {"mlflow_uri": redact("https://user:secret@mlflow.example/")}})
    with pytest.raises(ResumeError, match="saved without its credentials; pass --mlflow-uri"):
        saved_spec("resumable", str(tmp_path))
    assert saved_spec("resumable", str(tmp_path), "https://user:secret@mlflow.example/").tracking.mlflow_uri.endswith(
        "@mlflow.example/")
