"""What the SST-2 benchmarks share: the data, the experiment dict, one trial run in this
process, and a search run through the `raysearch` command line.

Each benchmark imports this file from beside it (`sys.path` is set by the script), and
calls `set_environment()` before torch, transformers or Ray are imported.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# Read in place, from ../shared beside the checkout; never copied into the repo.
SST2 = REPO.parent / "shared" / "data" / "sst2"

MODEL = "builtin:minilm"  # the packaged MiniLM-L6, also in --quick (fewer steps: its numbers mean nothing)

ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "RAY_TRAIN_V2_ENABLED": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
}


def set_environment() -> None:
    """Offline, Ray Train V2: what `make` exports, for this process and the ones it starts."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Sizes:
    """One trial's share of SST-2 and its schedule: 1 epoch of `train_examples`."""

    train_examples: int
    eval_examples: int
    batch_size: int = 16
    max_length: int = 32
    evaluations: int = 1
    """Evaluations (= reports to Tune, each with a checkpoint) per trial."""

    @property
    def steps(self) -> int:
        return max(1, self.train_examples // self.batch_size)

    def describe(self) -> str:
        return (f"{self.train_examples} train / {self.eval_examples} dev examples, batch {self.batch_size}, "
                f"{self.steps} steps, {self.evaluations} evaluation(s), max_length {self.max_length}")


def experiment(name: str, data: Path, sizes: Sizes, search: dict[str, Any], *,
               lr: float = 4e-3, seed: int = 0, adapter: dict[str, Any] | None = None,
               cpus_per_worker: float = 1) -> dict[str, Any]:
    """An experiment file's contents (as `raysearch run --space` reads it)."""
    return {
        "name": name,
        "model": MODEL,
        "task": {"dataset": str(data), "max_length": sizes.max_length,
                 "max_train_examples": sizes.train_examples, "max_eval_examples": sizes.eval_examples},
        "train": {"epochs": 1, "batch_size": sizes.batch_size, "lr": lr, "seed": seed,
                  "eval_every_steps": max(1, sizes.steps // sizes.evaluations)},
        "adapter": adapter or {},
        "search": search,
        "resources": {"workers_per_trial": 1, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": 0},
    }


def trial_configs(experiment_dict: dict[str, Any], points: list[dict[str, Any]], storage: Path) -> list[dict[str, Any]]:
    """The workers' configs raysearch would build for these sampled points of the validated experiment."""
    from raysearch.experiment.spec import spec_from_dict
    from raysearch.search.tuner import base_config
    from trainables.trial import trial_config

    base = base_config(spec_from_dict(experiment_dict), str(storage))
    return [trial_config(base, point) for point in points]


def quiet() -> None:
    """No progress bars, load reports or per-report log lines from the in-process runs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


def train_in_process(config: dict[str, Any]) -> dict[str, Any]:
    """One trial's real worker loop in this process; its last reported metrics.

    Ray Train's local mode (`ScalingConfig(num_workers=0)`) runs `train_loop_per_worker`
    in the calling process without starting Ray: reports stay in memory, and the
    checkpoints the loop writes to a temporary folder are not persisted anywhere.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.loop import train_loop_per_worker

    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=config,
                           scaling_config=ray.train.ScalingConfig(num_workers=0))
    return dict(trainer.fit().metrics)


def train_each(configs: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """`train_in_process` for every config, one progress line each; the last metrics of each."""
    quiet()
    results = []
    for i, (config, label) in enumerate(zip(configs, labels), 1):
        started = time.perf_counter()
        results.append(train_in_process(config))
        print(f"  [{i}/{len(configs)}] {label}: val_accuracy {results[-1]['val_accuracy']:.3f} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    return results


def keep(rows: list[dict[str, Any]], json_path: str | None) -> list[dict[str, Any]]:
    """The rows, also written to `json_path` (the scripts' --json) when one is given."""
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return rows


def raysearch_command() -> list[str]:
    """The `raysearch` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "raysearch"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from raysearch.cli import app; app()"]


@dataclass
class SearchRun:
    storage_dir: Path
    """Where the search's results are: `<storage>/<name>` (Tune's state in `tune/`)."""
    spawned_at: float
    exited_at: float

    @property
    def wall_s(self) -> float:
        return self.exited_at - self.spawned_at


def run_search(experiment_dict: dict[str, Any], workdir: Path, command: list[str] | None = None) -> SearchRun:
    """`raysearch run` on the experiment in a child process; its output goes to `<workdir>/<name>.log`.

    `command` replaces the `raysearch` executable (overhead.py's instrumented copy of it).
    """
    name = experiment_dict["name"]
    space = workdir / f"{name}.yaml"
    space.write_text(yaml.safe_dump(experiment_dict, sort_keys=False))
    argv = [*(command or raysearch_command()), "run", "--space", str(space), "--storage", str(workdir / "results"),
            "--mlflow-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--restart"]
    log = workdir / f"{name}.log"
    with log.open("w") as out:
        spawned_at = time.time()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
        exited_at = time.time()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"`raysearch run` for {name} exited with {code}; the end of {log}:\n{tail}")
    return SearchRun(workdir / "results" / name, spawned_at, exited_at)


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_tokens: int = 256, batch: int = 8) -> float:
    """exp(mean next-token loss over every token of `texts`), each cut to `max_tokens` tokens and
    tokenized as pruning's calibration texts are (trainables/pruning_importance.py)."""
    import math

    import torch
    import torch.nn.functional as F

    from trainables.pruning_importance import calibration_batches

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            for encoded in calibration_batches(tokenizer, texts[start:start + batch], max_tokens):
                logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
                labels = encoded["labels"][:, 1:]
                total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=-100, reduction="sum"))
                tokens += int((labels != -100).sum())
    return math.exp(total / tokens)
