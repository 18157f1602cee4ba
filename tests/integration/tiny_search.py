"""The tiny experiment file integration searches run (the tiny model, few examples, few steps),
and what their inline trials leave in Tune's trial folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_experiment(
    path: Path,
    model_dir: Path,
    *,
    name: str,
    search: dict[str, Any],
    train_examples: int = 96,
    eval_examples: int = 48,
    eval_every_steps: int = 4,
    **sections: Any,
) -> Path:
    """Write an experiment on `builtin:demo` (`sections` add or replace top-level sections)."""
    data = {
        "name": name,
        "model": str(model_dir),
        "task": {"dataset": "builtin:demo", "max_length": 24, "max_train_examples": train_examples,
                 "max_eval_examples": eval_examples},
        "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "eval_every_steps": eval_every_steps},
        "search": search,
        **sections,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint_step(checkpoint_dir: str, eval_every: int) -> int:
    """The step an inline trial's checkpoint folder holds. Tune numbers the folders
    checkpoint_000000, 1, ... in report order and the trial reports (and checkpoints) every
    `eval_every` steps, so checkpoint i holds step eval_every * (i + 1), until a retry or a
    resume renumbers them."""
    return eval_every * (int(checkpoint_dir.rsplit("_", 1)[1]) + 1)
