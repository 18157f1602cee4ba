"""A trial's training state, saved at every evaluation so that a restarted worker group
(a killed worker, a retried exception, a resumed search) continues where it stopped.

Rank 0 writes one file into the checkpoint it reports; Ray Train keeps the newest
`train.keep_checkpoints` of them and hands the latest to restarted workers through
`ray.train.get_checkpoint()`. The frozen base weights are not saved: every worker
rebuilds them from the model files, as on a first start.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class Resumed:
    step: int  # the last optimizer step the checkpoint holds
    evaluations: int  # evaluations reported up to and including that step


def trainable_keys(model: nn.Module) -> set[str]:
    """The state-dict keys a checkpoint holds: all but the frozen parameters (adapter and
    head weights, gates, masks and other buffers)."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    return {key for key in model.state_dict() if key not in frozen}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `trainable_keys`, on the CPU."""
    keys = trainable_keys(model)
    return {key: value.detach().cpu() for key, value in model.state_dict().items() if key in keys}


def save_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    adapter: Any,
    step: int,
    evaluations: int,
) -> Path:
    path = Path(directory) / STATE_FILE
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save({
        "step": step,
        "evaluations": evaluations,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "adapter": adapter.training_state(model),
        "rng": rng,
    }, path)
    return path


def read_training_state(directory: Path) -> dict[str, Any]:
    # weights_only: tensors, numbers, strings and containers; nothing is unpickled as code.
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def restore_model(model: nn.Module, state: dict[str, Any]) -> None:
    """The saved adapter and head weights into a freshly attached model. Before the
    optimizer is built: some variants copy parameter values when building it (SaLoRA)."""
    mismatch = ("the checkpoint does not match this trial's model ({}): "
                "was the experiment file changed since the search started?")
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as error:  # shapes differ (another rank, another model)
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise RuntimeError(mismatch.format(detail)) from error
    wrong = sorted(set(unexpected) | (trainable_keys(model) & set(missing)))
    if wrong:
        raise RuntimeError(mismatch.format(f"e.g. {', '.join(wrong[:3])}"))


def restore_training(
    state: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, adapter: Any
) -> Resumed:
    """The optimizer, schedule, variant state and RNG, once the optimizer is built."""
    # load_state_dict puts new group dicts in the optimizer; keep the ones the variant built,
    # updated in place, since a variant may follow the schedule through one (SoRA's gate rate).
    groups = optimizer.param_groups
    optimizer.load_state_dict(state["optimizer"])
    for group, loaded in zip(groups, optimizer.param_groups):
        group.update(loaded)
    optimizer.param_groups[:] = groups
    scheduler.load_state_dict(state["scheduler"])
    adapter.load_training_state(model, state["adapter"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return Resumed(step=int(state["step"]), evaluations=int(state["evaluations"]))
