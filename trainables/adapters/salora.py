"""SaLoRA (Hu et al., 2023, "Structure-Aware Low-Rank Adaptation for Parameter-Efficient
Fine-Tuning"): LoRA whose rank slots are switched off by L0 gates under a density budget.

    z = s · B (g ⊙ A x),   g_j = clamp(sigmoid((log u − log(1−u) + log α_j)/β)·(ζ−γ) + γ, 0, 1)
    C = Σ_m E[L0]_m (d_in+d_out) / Σ_m r (d_in+d_out),   E[L0]_m = Σ_j sigmoid(log α_j − β log(−γ/ζ))
    loss = task + β_orth Σ_m (‖BᵀB−I‖² + ‖AAᵀ−I‖²) + λ1 (C − b) + λ2 (C − b)²  (max over λ)

The gate is Louizos et al.'s (2018) hard concrete (β = 2/3, γ = −0.1, ζ = 1.1), u ~ U(0,1):
one sample per module forward (so one per batch); eval and export use the deterministic
`clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1)`. `rank` is the number of slots per module. The
budget is a Lagrangian (Wang et al., 2020; CoFi): λ1, λ2 are trained by gradient ascent,
so λ1 grows while the density C is above the target b and the quadratic term pulls C
onto b. Export (GatedLoRA) drops the ranks whose deterministic gate is 0 and folds the
others into B, giving plain LoRA with per-module ranks.

Where the paper leaves room (log α's start, λ's learning rate and window, the penalty summed
over modules, expected vs exported density) and the tests: docs/variants.md, SaLoRA.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from trainables.adapters.base import Options
from trainables.adapters.gated import Gate, GatedLoRA

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)
LOG_ALPHA_INIT = 3.0  # see the module docstring: gates start open
L0_SHIFT = BETA * math.log(-GAMMA / ZETA)  # P(g_j != 0) = sigmoid(log α_j − L0_SHIFT)


class SaLoRAOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"target_density": "salora_target_density", "orth_weight": "salora_orth_weight",
                                         "lagrangian_lr": "salora_lagrangian_lr"}

    salora_target_density: float = Field(0.5, gt=0.0, le=1.0)
    """Budget b: the target density C, the expected fraction of rank slots left open
    (each module's slots weighted by its d_in + d_out). 1 keeps every slot."""
    salora_orth_weight: float = Field(0.1, ge=0.0)
    """β_orth: weight of the orthogonality penalty ‖BᵀB − I‖² + ‖AAᵀ − I‖², summed over
    modules (0.1 is AdaLoRA's paper value for its own orthogonality penalty)."""
    salora_t_start: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of training after which the gates (log α) and λ start to be updated."""
    salora_t_end: float = Field(0.7, gt=0.0, le=1.0)
    """Fraction of training after which the gates and λ are frozen (must exceed salora_t_start)."""
    salora_lagrangian_lr: float = Field(5e-2, gt=0.0)
    """Learning rate of the gates' log α and of λ1, λ2 (before the loop's schedule),
    independent of the trial's lr (CoFi's reg_learning_rate). The budget needs a few
    hundred steps inside the window to settle; lower rates settle later."""

    @model_validator(mode="after")
    def _window(self) -> "SaLoRAOptions":
        # Checked here only when both ends are given: the experiment file validates one
        # key at a time (the other at its default); SaLoRA.__init__ always checks.
        if {"salora_t_start", "salora_t_end"} <= self.model_fields_set:
            check_window(self.salora_t_start, self.salora_t_end)
        return self


def check_window(t_start: float, t_end: float) -> None:
    if t_start >= t_end:
        raise ValueError(f"salora_t_start ({t_start}) must be below salora_t_end ({t_end}); "
                         f"the gates are trained between the two fractions of training")


class HardConcreteGate(Gate):
    """Per-rank hard-concrete gate: sampled in training, deterministic in eval."""

    def __init__(self, slots: int, log_alpha: float = LOG_ALPHA_INIT) -> None:
        super().__init__(slots)
        self.log_alpha = nn.Parameter(torch.full((slots,), float(log_alpha)))

    def forward(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1.0 - 1e-6)  # log(0) would be -inf
            stretched = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        else:
            stretched = torch.sigmoid(self.log_alpha)
        return (stretched * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_l0(self) -> torch.Tensor:
        """E[number of nonzero gates] under the training distribution (closed form)."""
        return torch.sigmoid(self.log_alpha - L0_SHIFT).sum()


def orthogonality(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖BᵀB − I‖²_F + ‖AAᵀ − I‖²_F for A (r × d_in), B (d_out × r)."""
    eye = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
    return ((B.T @ B - eye) ** 2).sum() + ((A @ A.T - eye) ** 2).sum()


def _ascend(grad: torch.Tensor) -> torch.Tensor:
    return -grad  # the optimizer descends; a negated gradient makes it maximize


class SaLoRA(GatedLoRA):
    name: ClassVar[str] = "salora"
    options: ClassVar[type[Options]] = SaLoRAOptions

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        super().__init__(config, task_type, total_steps)
        check_window(self.opts.salora_t_start, self.opts.salora_t_end)
        # λ1, λ2: owned by the adapter, not the model (see the module docstring).
        self.multipliers = nn.Parameter(torch.zeros(2))
        self.multipliers.register_hook(_ascend)
        self._saved: list[torch.Tensor] | None = None  # (log α..., λ) at the last allowed step

    def make_gate(self, name: str, slots: int) -> Gate:
        return HardConcreteGate(slots)

    # -- the budget ------------------------------------------------------------------------
    def updating(self, step: int) -> bool:
        """Whether log α and λ may change at this (1-based) optimizer step."""
        return self.opts.salora_t_start * self.total_steps < step <= self.opts.salora_t_end * self.total_steps

    def budget_settles_at(self) -> int:
        return math.floor(self.opts.salora_t_end * self.total_steps)  # the last step `updating` allows

    def density(self, model: nn.Module) -> torch.Tensor:
        """C: expected open slots over all slots, each module weighted by d_in + d_out."""
        expected, total = 0.0, 0
        for _, layer, gate in self.gates(model):
            size = layer.in_features + layer.out_features
            expected = expected + gate.expected_l0() * size
            total += gate.slots * size
        return expected / total

    @torch.no_grad()
    def densities(self, model: nn.Module) -> dict[str, float]:
        """The budgeted (expected L0) density and the exported one (deterministic gates)."""
        live, total = 0, 0
        for _, layer, gate in self.gates(model):
            size = layer.in_features + layer.out_features
            live += int((gate.deterministic() != 0).sum()) * size
            total += gate.slots * size
        return {"expected": float(self.density(model)), "exported": live / total}

    def controlled(self, model: nn.Module) -> list[nn.Parameter]:
        """What only changes inside the window: every gate's log α, then λ."""
        return [gate.log_alpha for _, _, gate in self.gates(model)] + [self.multipliers]

    # -- hooks -------------------------------------------------------------------------------
    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """GatedLoRA's groups, the gates at `salora_lagrangian_lr`, plus λ (ascent) at the same rate."""
        gate_ids = {id(gate.log_alpha) for _, _, gate in self.gates(model)}
        groups = super().param_groups(model, lr, weight_decay)
        for group in groups:
            if {id(p) for p in group["params"]} <= gate_ids:
                group["lr"] = self.opts.salora_lagrangian_lr
        device = next(gate.log_alpha.device for _, _, gate in self.gates(model))
        self.multipliers.data = self.multipliers.data.to(device)  # the model may have moved since __init__
        groups.append({"params": [self.multipliers], "lr": self.opts.salora_lagrangian_lr, "weight_decay": 0.0})
        self._saved = [p.detach().clone() for p in self.controlled(model)]
        return groups

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        return {"multipliers": self.multipliers.detach().cpu()}  # λ lives on the adapter, not the model

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.multipliers.data.copy_(state["multipliers"].to(self.multipliers.device))

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        loss = None
        if self.opts.salora_orth_weight > 0:
            penalty = sum(orthogonality(layer.lora_A["default"].weight, layer.lora_B["default"].weight)
                          for _, layer, _ in self.gates(model))
            loss = self.opts.salora_orth_weight * penalty
        if self.updating(step):
            gap = self.density(model) - self.opts.salora_target_density
            lagrangian = self.multipliers[0] * gap + self.multipliers[1] * gap ** 2
            loss = lagrangian if loss is None else loss + lagrangian
        return loss

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int, batch: dict[str, torch.Tensor]) -> None:
        if self._saved is None:
            raise RuntimeError("SaLoRA.after_step before param_groups: build the optimizer from "
                               "adapter.param_groups(...) so λ is trained and the gate window can be kept")
        params = self.controlled(model)
        if self.updating(step):
            self._saved = [p.detach().clone() for p in params]
        else:
            for param, saved in zip(params, self._saved):
                param.copy_(saved)
