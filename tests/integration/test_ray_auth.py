"""A search started as the README starts it (no RAY_AUTH_MODE in the environment) runs a
local Ray with token authentication, prints no warning about it, and leaves a token that
only its owner can read (issue 29, part 7; README, "Security defaults")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_search import write_experiment

pytestmark = [pytest.mark.integration, pytest.mark.subprocess]

RAYSEARCH = str(Path(sys.executable).with_name("raysearch"))


def test_a_search_without_ray_auth_mode_runs_with_a_token_and_no_warning(tmp_path, tiny_model_dir):
    space = write_experiment(tmp_path / "auth.yaml", tiny_model_dir, name="auth", search={
        "sampler": "random", "num_trials": 1, "early_stopping": {"scheduler": "none"},
        "space": {"rank": {"choice": [2]}}})
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1")
    result = subprocess.run([RAYSEARCH, "run", "--space", str(space), "--storage", str(tmp_path / "results"),
                             "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    printed = result.stdout + result.stderr
    assert "Token authentication is" not in printed and "RAY_AUTH_MODE" not in printed
    token = home / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and (token.stat().st_mode & 0o777) == 0o600
