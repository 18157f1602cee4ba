"""Security defaults: remote model code off unless the file turns it on, YAML read safely,
Ray's dashboard on loopback only, and no credentials in what is printed or logged."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysearch.search import resources
from raysearch.cli import app
from raysearch.experiment.redaction import is_redacted, loggable, redact
from raysearch.experiment.spec import spec_from_dict
from raysearch.records.run_fields import params_of
from raysearch.search.tuner import base_config
from trainables import models

MINIMAL = {"name": "sec", "search": {"space": {"rank": {"choice": [4]}}}}


def test_trust_remote_code_is_off_unless_the_file_turns_it_on(tmp_path):
    assert base_config(spec_from_dict(MINIMAL), str(tmp_path))["trust_remote_code"] is False
    on = spec_from_dict({**MINIMAL, "trust_remote_code": True})
    assert base_config(on, str(tmp_path))["trust_remote_code"] is True


@pytest.mark.parametrize("trust", [False, True])
def test_model_loading_passes_the_setting_to_transformers(trust, monkeypatch, tmp_path):
    import transformers

    seen = []

    class Recorder:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "not passed"))
            raise RuntimeError("stop here")

    monkeypatch.setattr(transformers, "AutoTokenizer", Recorder)
    with pytest.raises(RuntimeError, match="stop here"):
        models.load_classifier("builtin:minilm", 2, trust_remote_code=trust)
    with pytest.raises(RuntimeError, match="stop here"):
        models.load_causal_lm(str(tmp_path), trust_remote_code=trust)
    assert seen == [trust, trust]


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    space = tmp_path / "evil.yaml"
    space.write_text(f"name: evil\nmodel: !!python/object/apply:os.system ['touch {marker}']\n"
                     "search: {space: {rank: {choice: [4]}}}\n")
    result = CliRunner().invoke(app, ["validate", str(space)])
    assert result.exit_code == 2, result.output
    assert "invalid YAML" in result.output
    assert not marker.exists()


@pytest.mark.parametrize("inline", [True, False])
def test_local_ray_serves_its_dashboard_on_loopback_only(monkeypatch, inline):
    """On loopback, and only when trials use Ray Train (whose cleaner needs the state API)."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    resources.init_ray(spec_from_dict({**MINIMAL, "resources": {"inline_single_worker": inline}}))
    (kwargs,) = calls
    assert kwargs["address"] == "local" and kwargs["dashboard_host"] == "127.0.0.1"
    assert kwargs["include_dashboard"] is (not inline)


def test_cluster_head_dashboard_is_on_loopback():
    text = (Path(__file__).parents[2] / "cluster.yaml").read_text()
    starts = [line for line in text.splitlines() if "ray start --head" in line]
    assert starts and all("--dashboard-host=127.0.0.1" in line for line in starts)


def test_credentials_are_redacted_and_secret_names_masked():
    assert redact("https://user:pw@host:5000/x") == "https://***@host:5000/x"
    assert redact("mlflow at postgresql://bob:s3cr3t@db/mlflow, then s3://bucket/x") == (
        "mlflow at postgresql://***@db/mlflow, then s3://bucket/x")
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert is_redacted(redact("https://user:pw@host:5000/x")) and not is_redacted("sqlite:///mlflow.db")
    assert loggable("task.hf_token", "hf_abc") == "***"
    assert loggable("tracking.mlflow_uri", "https://a:b@h") == "https://***@h"
    params = params_of({"tracking": {"mlflow_uri": "https://a:b@h"}, "api_key": "k", "train": {"lr": 0.1}})
    assert params == {"tracking.mlflow_uri": "https://***@h", "api_key": "***", "train.lr": "0.1"}


# Ray's token authentication (issue 29, part 7): decided in code, not by the Makefile.


@pytest.fixture
def ray_home(tmp_path, monkeypatch):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_a_local_ray_uses_token_authentication_with_a_token_only_its_owner_reads(ray_home):
    import os

    assert resources.local_authentication() == "token" and "RAY_AUTH_MODE" not in os.environ  # Ray sets it
    token = ray_home / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and (token.stat().st_mode & 0o777) == 0o600
    before = token.read_text()
    resources.local_authentication()
    assert token.read_text() == before  # an existing token is kept: a running Ray may use it


@pytest.mark.parametrize("setting", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "given"},
                                     {"RAY_AUTH_TOKEN_PATH": "/somewhere/token"}])
def test_an_explicit_ray_auth_setting_is_respected_and_nothing_is_written(setting, ray_home, monkeypatch):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    mode = resources.local_authentication()
    assert mode == setting.get("RAY_AUTH_MODE", "token")
    assert not (ray_home / ".ray").exists()


def test_the_makefile_leaves_ray_authentication_to_the_code():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "RAY_AUTH_MODE" not in makefile
