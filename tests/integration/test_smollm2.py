"""A short real trial on builtin:smollm2 (SmolLM2-135M-Instruct, pretrained, offline): the
GGUF conversion (or its cache), the worker loop on BoolQ + SST-2 instruction records,
validation loss falling, generated answers that parse, and the exported adapter scored on
the held-out test split by `raysearch evaluate`'s code. Runs in this process, no Ray."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from raysearch.records.score_trial import worker_experiment
from raysearch.experiment.spec import spec_from_dict
from raysearch.search.tuner import base_config
from trainables import loop
from trainables.evaluation import evaluate
from trainables.trial import trial_config

# slow (make test-slow and CI, not make test): the same trial and test-split scoring run on
# builtin:tiny-llama in test_causal_lm.py, and the GGUF conversion's cache in test_pretrained.py.
pytestmark = [pytest.mark.slow, pytest.mark.integration]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "sst2" / "train.tsv").is_file(), reason=f"no data at {DATA}")


class KeepingSession:
    """One worker in this process; keeps every report and the last checkpoint folder."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, root: Path) -> None:
        self.root, self.reports = root, []

    def report(self, metrics: dict[str, Any], folder: Path | None = None) -> None:
        if folder is not None:
            shutil.copytree(folder, self.root / f"checkpoint_{len(self.reports)}")
        self.reports.append(dict(metrics))

    def get_checkpoint(self) -> None:
        return None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


def experiment() -> dict[str, Any]:
    return {
        "name": "smol-itest", "model": "builtin:smollm2",
        "task": {
            "type": "causal_lm", "max_length": 128, "max_new_tokens": 8, "scoring": "generate",
            "prompt_template": "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
            "dataset": [str(DATA / "commonsense" / "boolq.train.json"),
                        {"path": str(DATA / "sst2" / "train.tsv"), "name": "sst2", "label_names": ["negative", "positive"],
                         "instruction": "Sentiment of this review, positive or negative: {sentence}\n\n"
                                        "Answer format: positive/negative",
                         "output": "the correct answer is {answer}"}],
            "test_fraction": 0.2, "max_train_examples": 24, "max_eval_examples": 8, "max_test_examples": 16,
        },
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "eval_every_steps": 3, "warmup_ratio": 0.0},
        "search": {"space": {"rank": {"choice": [8]}}, "objectives": {"val_answer_accuracy": "max"}},
    }


@needs_data
def test_a_short_real_trial_learns_and_its_adapter_is_scored_on_the_test_split(tmp_path):
    spec = spec_from_dict(experiment())
    session = KeepingSession(tmp_path)
    loop.run_loop(trial_config(base_config(spec, str(tmp_path)), {"variant": "lora"}), session)
    steps = [m["step"] for m in session.reports]
    assert steps == [3, 6]  # 48 records, batch 8
    first, last = session.reports
    assert last["val_loss"] < first["val_loss"]  # it learns the response format and more
    # Generated answers parse ("the correct answer is true"): measured 15/16 after 3 steps, 14/16 after 6.
    assert min(first["val_answer_parsed"], last["val_answer_parsed"]) >= 0.75
    assert 0 < last["eval_s"] < 600

    adapter = tmp_path / "checkpoint_1" / "adapter"
    result = evaluate(worker_experiment(spec), adapter, scoring="loglik")
    assert result.overall.n == 32 and [s.source for s in result.per_source] == ["boolq", "sst2"]
    assert all(s.chance == pytest.approx(0.5) for s in result.per_source)
    assert result.overall.low <= result.overall.value <= result.overall.high
