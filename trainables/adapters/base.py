"""The adapter hook protocol every variant implements, and the shared scaling rule.

The training loop (`trainables/loop.py`) knows nothing about any variant: it calls
these hooks at fixed points (docs/design.md, "The adapter hooks", says when and what each
must guarantee).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from trainables.contract import scaling_exponent

def scale(alpha: float, rank: int, scaling: str | float) -> float:
    return alpha / rank ** scaling_exponent(scaling)


# Knobs every variant built on LoRA shares; AdapterSpec (raysearch/experiment/spec.py) types them.
COMMON_HYPERPARAMS = frozenset({"rank", "alpha", "scaling", "dropout", "loraplus_ratio", "target_modules", "init"})


class Options(BaseModel):
    """A variant's own knobs (GoRA's gamma, SoRA's lambda...), with defaults and bounds.

    Each variant subclasses this; its fields become search dimensions and keys of the
    experiment file's `adapter:` section, validated by raysearch before anything starts.
    Every field name starts with the variant's name and an underscore (`sora_lambda`,
    `gora_gamma`), so no two variants and no `train:` field share one; `renamed` maps a
    former name to its new one, which validation then names.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Options":
        return cls.model_validate({k: v for k, v in config.items() if k in cls.model_fields})


class Adapter(Protocol):
    """One LoRA-family variant. Built from the trial's adapter config (a plain dict)."""

    name: ClassVar[str]
    hyperparams: ClassVar[frozenset[str]]  # search dimensions this variant accepts
    options: ClassVar[type[Options]]  # its own knobs beyond COMMON_HYPERPARAMS

    def __init__(self, config: dict[str, Any], task_type: str, total_steps: int = 1) -> None:
        """`total_steps`: the trial's real number of optimizer steps (schedules, AdaLoRA)."""

    def scaling(self) -> str | float:
        """The scaling rule the variant applies (`alpha / r**p`'s p, or its name), whatever was
        sampled: RoRA and GoRA apply alpha/sqrt(r). Reported as `scaling_exponent`."""

    def loraplus_ratio(self) -> float:
        """B's learning rate over A's that the variant applies (16 for LoRA+, else 1 unless set)."""

    def prepare(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], val_batch: dict[str, torch.Tensor]
    ) -> None:
        """Before attaching. `batches`: an endless iterator of this worker's training
        slices (GoRA takes its N gradient batches); `val_batch`: one fixed validation
        batch, the same on every worker (ALoRA's importance scores). Both on the CPU;
        under DDP the process group is already up (all-reduce what must agree)."""

    def attach(self, model: nn.Module) -> nn.Module:
        """Wrap the frozen base model; returns the model to train."""

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (LoRA+ ratios, gate optimizers...)."""

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """Added to the task loss at every step (SaLoRA penalties, AdaLoRA's on causal LM)."""

    def after_step(self, model: nn.Module, step: int, batch: dict[str, torch.Tensor]) -> None:
        """After `optimizer.step()`, before `zero_grad()` (SoRA prox, AdaLoRA allocation)."""

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        """What the variant keeps outside the model's state dict (importance averages,
        multipliers, RNG), saved in every checkpoint: tensors, numbers, strings, containers."""

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Put back what `training_state` saved, after `attach` (resuming a trial)."""

    def adapter_params(self, model: nn.Module) -> int:
        """Parameters the export would hold, live ranks only."""

    def budget_settles_at(self) -> int:
        """The step after which the variant's own schedule no longer changes its live
        parameters (0: fixed from the start). Before it, a multi-objective scheduler does
        not compare the trial at a rung: it would compare a half-pruned adapter."""

    def rank_allocation(self, model: nn.Module) -> dict[str, int]:
        """Live rank of every adapted module (full module name -> rank), for heatmaps."""

    def export(self, model: nn.Module, path: Path) -> None:
        """Write a plain PEFT LoRA adapter that loads with `peft` alone."""


def peft_scaling_kwargs(alpha: float, rank: int, scaling: str | float) -> dict[str, Any]:
    """Map `s = alpha / r**p` onto PEFT's LoraConfig fields.

    p = 1 is PEFT's default rule, p = 0.5 is `use_rslora`; any other p rescales
    alpha so that PEFT's `lora_alpha / r` equals `alpha / r**p`.
    """
    p = scaling_exponent(scaling)
    if p == 1.0:
        return {"lora_alpha": alpha, "use_rslora": False}
    if p == 0.5:
        return {"lora_alpha": alpha, "use_rslora": True}
    return {"lora_alpha": alpha * rank ** (1.0 - p), "use_rslora": False}
