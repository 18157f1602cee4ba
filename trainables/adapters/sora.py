"""SoRA (Ding et al., 2023, "Sparse Low-rank Adaptation of Pre-trained Language Models").

    z = s · B (g ⊙ A x),   g ∈ R^r_max,  A, B trained by the main optimizer
    g ← prox(g − η_t ∇_g L) = sign(·) · max(|·| − η_t λ_t, 0)    (proximal gradient on L + λ‖g‖₁)
    export: drop ranks with g_i = 0, fold the rest into B (B' = B · diag(g)) -> plain LoRA

`rank` is r_max, the slots every module starts with; the L1 proximal step drives
gates to exactly 0 and the live ranks are the nonzero gates. The gated layer
itself, the export and the live-parameter count are shared (gated.py, export.py).

Where this departs from the paper and the authors' code (a plain proximal SGD step at the
schedule's rate, the optional λ warm-up, gates left out of gradient clipping), how to
calibrate λ, and what the tests check: docs/variants.md, SoRA.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from trainables.adapters.base import Options
from trainables.adapters.gated import Gate, GatedLoRA


def soft_threshold(g: torch.Tensor, threshold: float) -> torch.Tensor:
    """The proximal operator of `threshold · ‖g‖₁`: sign(g) · max(|g| − threshold, 0)."""
    return torch.sign(g) * torch.clamp(g.abs() - threshold, min=0.0)


class SoRAOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"sparsity_lambda": "sora_lambda", "sparsity_warmup": "sora_warmup",
                                         "gate_lr": "sora_gate_lr", "gate_init": "sora_gate_init"}

    sora_lambda: float = Field(1e-3, gt=0)
    """SoRA's λ: L1 strength on the gates; each step shrinks them by (gate lr) · λ. Search on a log scale."""
    sora_warmup: float = Field(0.0, ge=0, lt=1)
    """Fraction of the training steps over which λ ramps linearly from 0 (0: full λ from the start)."""
    sora_gate_lr: float | None = Field(None, gt=0)
    """Base learning rate of the gates' proximal SGD step, following the main schedule; None: the trial's lr."""
    sora_gate_init: Literal["ones", "normal"] = "ones"
    """Initial gates: 'ones' (the paper), or 'normal' draws N(0, 1) (the authors' code)."""


class SoRAGate(Gate):
    """A trainable vector `g`, the same in training and eval."""

    def __init__(self, slots: int, init: str = "ones") -> None:
        super().__init__(slots)
        values = torch.randn(slots) if init == "normal" else torch.ones(slots)
        self.weight = nn.Parameter(values)

    def forward(self) -> torch.Tensor:
        return self.weight


class SoRA(GatedLoRA):
    name: ClassVar[str] = "sora"
    options: ClassVar[type[Options]] = SoRAOptions

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        super().__init__(config, task_type, total_steps)
        self.schedule_group: dict[str, Any] | None = None  # a main optimizer group; its "lr" follows the schedule
        self.schedule_peak = 1.0  # that group's lr when built
        self.trial_lr = 0.0

    def make_gate(self, name: str, slots: int) -> Gate:
        return SoRAGate(slots, self.opts.sora_gate_init)

    # -- the gates' own optimizer ------------------------------------------------------
    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """LoRA's groups without the gates: `after_step` steps them with the proximal update."""
        gate_ids = {id(p) for _, _, gate in self.gates(model) for p in gate.parameters()}
        groups = [group for group in super().param_groups(model, lr, weight_decay)
                  if not any(id(p) in gate_ids for p in group["params"])]
        self.schedule_group, self.schedule_peak, self.trial_lr = groups[0], float(groups[0]["lr"]), lr
        return groups

    def gate_lr(self) -> float:
        """η_t: the base gate rate times the main schedule's current factor."""
        if self.schedule_group is None:
            raise RuntimeError("SoRA: call `param_groups()` (building the optimizer) before training; "
                               "it sets the gates' learning rate")
        base = self.opts.sora_gate_lr if self.opts.sora_gate_lr is not None else self.trial_lr
        if self.schedule_peak <= 0:
            return base
        return base * float(self.schedule_group["lr"]) / self.schedule_peak

    def budget_settles_at(self) -> int:
        """The end of λ's warm-up ramp: λ is constant after it, but the proximal step goes on
        closing (or reopening) gates to the end, so at a rung SoRA is judged by its live count
        then, not by its final one (there is no target budget to judge it by)."""
        return math.ceil(self.opts.sora_warmup * self.total_steps)

    def sparsity_lambda(self, step: int) -> float:
        """λ_t: λ, ramped linearly from 0 over the warm-up fraction of the steps."""
        ramp_steps = self.opts.sora_warmup * self.total_steps
        if ramp_steps <= 0:
            return self.opts.sora_lambda
        return self.opts.sora_lambda * min(1.0, step / ramp_steps)

    def after_step(self, model: nn.Module, step: int, batch: dict[str, torch.Tensor]) -> None:
        """Proximal SGD on every gate: g ← soft_threshold(g − η_t ∇g, η_t λ_t); then clear ∇g,
        since the main optimizer's zero_grad does not see the gates."""
        lr = self.gate_lr()
        threshold = lr * self.sparsity_lambda(step)
        with torch.no_grad():
            for _, _, gate in self.gates(model):
                g = gate.weight
                if g.grad is not None:
                    g.sub_(lr * g.grad)
                g.copy_(soft_threshold(g, threshold))
                g.grad = None
