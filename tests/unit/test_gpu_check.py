"""benchmarks/gpu_check.py: its --quick mode (CPU, tiny models) runs every code path the GPU run
takes, including the two worker processes, and without a GPU the full run is a skip (exit 0).
Numbers are not checked: on a CPU they mean nothing."""
from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.subprocess
def test_gpu_check_quick(tmp_path, capsys):
    from trainables.adapters import ADAPTERS

    gpu_check = load_gpu_check()
    result = gpu_check.main(["--quick", "--json", str(tmp_path / "gpu_check.json")])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(result))
    assert gpu_check.exit_code(result) == 0 and not result["measured_on_gpu"] and result["dtype"] == "float32"

    rows = result["rows"]
    assert sorted((r["model"], r["variant"]) for r in rows) == sorted(
        (model, variant) for model in ("full", "pruned") for variant in ADAPTERS)
    assert not [r for r in rows if r.get("error")]
    assert all(r["step_ms"] > 0 and len(r["steps_ms"]) == 2 and r["trainable_params"] > 0 for r in rows)
    assert all(r["peak_mb"] is None and r["peak_vs_lora"] is None for r in rows)  # not measured on a CPU
    for model in ("full", "pruned"):
        lora = next(r for r in rows if r["model"] == model and r["variant"] == "lora")
        assert lora["vs_lora"] == 1.0
        assert all(r["vs_lora"] == pytest.approx(r["step_ms"] / lora["step_ms"]) for r in rows if r["model"] == model)
    full, pruned = result["models"]["full"], result["models"]["pruned"]  # RECIPE's cut: 1 of 3 KV groups, half the MLP
    assert (pruned["shape"]["kv_groups"], pruned["shape"]["intermediate_size"]) == (2, 20)
    assert pruned["parameters"] < full["parameters"] and pruned["importance"] == "taylor"
    assert next(r for r in rows if r["model"] == "pruned" and r["variant"] == "lora")["trainable_params"] < \
        next(r for r in rows if r["model"] == "full" and r["variant"] == "lora")["trainable_params"]

    share = result["sharing"]
    assert share["both_fit"] and not share.get("error") and len(share["workers"]) == 2
    assert sorted(w["index"] for w in share["workers"]) == [0, 1]
    for worker, slowdown in zip(share["workers"], share["slowdown"]):
        assert worker["fits"] and worker["alone"]["step_ms"] > 0 and worker["together"]["step_ms"] > 0
        assert slowdown == pytest.approx(worker["together"]["step_ms"] / worker["alone"]["step_ms"])
        assert worker["alone"]["ended"] <= worker["together"]["started"]
    assert 0.0 <= share["overlap"] <= 1.0
    out = capsys.readouterr().out
    assert "x LoRA" in out and "n/m" in out and "both fit: yes" in out


def test_without_a_gpu_the_full_run_says_so_and_is_a_skip(tmp_path, capsys, monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = gpu_check.main(["--json", str(tmp_path / "gpu_check.json")])
    assert gpu_check.NO_GPU in capsys.readouterr().out
    assert "no CUDA GPU here" in gpu_check.NO_GPU and "--quick" in gpu_check.NO_GPU
    assert result == {"skipped": gpu_check.NO_GPU} == json.loads((tmp_path / "gpu_check.json").read_text())
    assert gpu_check.exit_code(result) == 0
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])  # the script as run: exit status 0, a skip
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / "gpu_check.py"), run_name="__main__")
    assert exited.value.code == 0 and gpu_check.NO_GPU in capsys.readouterr().out
    assert gpu_check.exit_code({"rows": [{"variant": "dora", "error": "OutOfMemoryError: ..."}]}) == 1
    assert gpu_check.exit_code({"rows": [{"variant": "lora"}], "sharing": {"error": "worker exited with 1"}}) == 1
