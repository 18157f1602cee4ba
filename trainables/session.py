"""Where the training loop runs, and how it reports: the one thing that differs between
a trial run by a Ray Train worker group and a 1-worker trial run in its Tune function's
own process (DESIGN-NOTES.md, "1-worker trials run inline").

The loop asks a session for its rank, world size and device, the checkpoint to continue
from, and to report metrics with a checkpoint; it never imports Ray Train or Tune itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import ray.train
import ray.train.torch
import torch
from ray import tune


class Session(Protocol):
    rank: int
    world: int
    device: torch.device

    def get_checkpoint(self) -> Any: ...  # a Ray checkpoint, or None on a first start

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def report(self, metrics: dict[str, Any], folder: Path | None = None) -> None: ...


class TrainSession:
    """A worker of a Ray Train worker group (any number of workers; DDP when more than one)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def get_checkpoint(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if self.world > 1 else model.to(self.device)

    def report(self, metrics: dict[str, Any], folder: Path | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


class TuneSession:
    """The trial's only worker, running inside its Tune function: reports go straight to
    Tune, and a retried or resumed trial gets its last checkpoint back from Tune."""

    rank, world = 0, 1

    def __init__(self, use_gpu: bool) -> None:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it gave the function: "cuda" is that one.
        self.device = torch.device("cuda" if use_gpu else "cpu")

    def get_checkpoint(self) -> tune.Checkpoint | None:
        return tune.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], folder: Path | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(folder) if folder is not None else None
        tune.report(metrics, checkpoint=checkpoint)
