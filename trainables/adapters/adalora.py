"""AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", ICLR) through PEFT's `AdaLoraConfig`.

    h = W0 x + s · P Λ Q x,   P = lora_B (d_out × r), Λ = diag(lora_E), Q = lora_A (r × d_in)
    loss = task + w · mean over P, Q of ‖PᵀP − I‖_F, ‖QQᵀ − I‖_F   (orthogonality penalty)
    triplet score S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij),  s = Ī·Ū with
    Ī = EMA_β1 |w ∂L/∂w| (smoothed sensitivity), Ū = EMA_β2 |I − Ī| (uncertainty);
    every ΔT steps keep the b(t) best triplets (the others get λ_i = 0), with the cubic
    budget b(t) = b_T + (b_0 − b_T)(1 − (t − t_i)/(T − t_i − t_f))³, b_0 = init_r · n, b_T = target_r · n.

PEFT computes all of it; this class sets `total_step` from the trial's real step count,
calls `update_and_allocate` after every optimizer step, and exports plain LoRA.

PEFT adds the orthogonality penalty for classification (given `labels`); causal-LM trials
get the same term from `extra_loss`. Where this departs from the paper (PEFT's penalty,
masked ranks, fractions floored to steps) and what the tests check: docs/variants.md, AdaLoRA.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Iterator

import torch
from pydantic import Field
from torch import nn

from trainables.adapters.base import Options
from trainables.contract import scaling_exponent
from trainables.adapters.export import TASK_TYPES, LowRank, live_factors
from trainables.adapters.factored import FactoredLoRA
from trainables.adapters.lora import LoRA, lora_layers
from trainables.models import classifier_head_names, resolve_target_modules

if TYPE_CHECKING:  # PEFT is imported where a model is built (see lora.py).
    from peft import AdaLoraConfig

ADAPTER_NAME = "default"


@contextmanager
def quiet_rank_zero_slices() -> Iterator[None]:
    """PEFT's AdaLoRA state dict (read for the saved heads) slices every module to its
    mask and then warns about the fully pruned ones (rank 0); the export leaves those out."""
    from peft import PeftWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*invalid shape", category=PeftWarning)
        yield


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """The term `AdaLoraModel.forward` adds when given labels, in PEFT's order of operations
    (so the same float): mean over every Q = lora_A, P = lora_B of ‖QQᵀ − I‖_F, ‖PᵀP − I‖_F."""
    norms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and ADAPTER_NAME in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            norms.append(torch.norm(cov - torch.eye(*cov.size(), out=torch.empty_like(cov)), p="fro"))
    return sum(norms) / len(norms)


class AdaLoRAOptions(Options):
    renamed: ClassVar[dict[str, str]] = {
        "init_r": "adalora_init_r", "target_r": "adalora_target_r", "tinit": "adalora_tinit",
        "tfinal": "adalora_tfinal", "delta_t": "adalora_delta_t", "orth_reg_weight": "adalora_orth_weight",
        "sensitivity_beta": "adalora_sensitivity_beta", "uncertainty_beta": "adalora_uncertainty_beta"}

    adalora_init_r: int | None = Field(None, ge=1)
    """Initial rank of every module (b_0 = init_r per module); None uses the common `rank`."""
    adalora_target_r: int | None = Field(None, ge=1)
    """Final average rank per module (b_T = target_r per module), at most init_r; None is
    round(init_r / 1.5), the paper's b_0 = 1.5 · b_T."""
    adalora_tinit: float = Field(0.1, ge=0, lt=1)
    """Fraction of the steps trained at full rank before pruning starts (t_i); adalora_tinit + adalora_tfinal < 1."""
    adalora_tfinal: float = Field(0.2, ge=0, lt=1)
    """Fraction of the steps trained at the final allocation after pruning ends (t_f)."""
    adalora_delta_t: int = Field(10, ge=1)
    """Optimizer steps between two budget allocations during the pruning phase (ΔT)."""
    adalora_orth_weight: float = Field(0.5, ge=0)
    """Weight of the orthogonality penalty on P and Q (PEFT's default 0.5)."""
    adalora_sensitivity_beta: float = Field(0.85, gt=0, lt=1)
    """EMA factor β1 of the smoothed sensitivity Ī (PEFT's beta1)."""
    adalora_uncertainty_beta: float = Field(0.85, gt=0, lt=1)
    """EMA factor β2 of the uncertainty Ū (PEFT's beta2)."""


class AdaLoRA(FactoredLoRA):
    name: ClassVar[str] = "adalora"
    shared: ClassVar[frozenset[str]] = LoRA.shared - {"init"}  # AdaLoRA's SVD triplets start its own way
    options: ClassVar[type[Options]] = AdaLoRAOptions

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        super().__init__(config, task_type, total_steps)
        opts = self.opts
        self.init_r = int(opts.adalora_init_r if opts.adalora_init_r is not None else config["rank"])
        self.target_r = int(opts.adalora_target_r if opts.adalora_target_r is not None else max(1, round(self.init_r / 1.5)))
        if self.target_r > self.init_r:
            raise ValueError(
                f"adalora: adalora_target_r ({self.target_r}) must be at most adalora_init_r ({self.init_r}); AdaLoRA "
                f"prunes from the initial rank down to the target. Lower `adalora_target_r` or raise `adalora_init_r` "
                f"(or `rank`, its default)."
            )
        if opts.adalora_tinit + opts.adalora_tfinal >= 1:
            raise ValueError(
                f"adalora: adalora_tinit + adalora_tfinal must be < 1 to leave a pruning phase, "
                f"got {opts.adalora_tinit} + {opts.adalora_tfinal}"
            )
        # Floors: tinit + tfinal <= (fraction sum) * T < T, so PEFT's check tinit < T - tfinal
        # holds for every T >= 1, and the final mask (at step T - tfinal >= 1) always happens.
        self.tinit_steps = math.floor(opts.adalora_tinit * self.total_steps)
        self.tfinal_steps = math.floor(opts.adalora_tfinal * self.total_steps)

    def lora_config(self, model: nn.Module) -> AdaLoraConfig:
        from peft import AdaLoraConfig

        heads = classifier_head_names(model) if self.task_type == "classification" else []
        # PEFT scales by lora_alpha / ranknum with ranknum = init_r: alpha · r^(1-p) gives α / r^p.
        lora_alpha = float(self.config["alpha"]) * self.init_r ** (1.0 - scaling_exponent(self.scaling()))
        return AdaLoraConfig(  # `r` left at its default: AdaLoRA ignores it (and warns otherwise)
            task_type=TASK_TYPES[self.task_type],
            init_r=self.init_r,
            target_r=self.target_r,
            lora_alpha=lora_alpha,
            lora_dropout=float(self.config.get("dropout", 0.0)),
            target_modules=resolve_target_modules(model, self.config.get("target_modules")),
            modules_to_save=heads or None,
            total_step=self.total_steps,
            tinit=self.tinit_steps,
            tfinal=self.tfinal_steps,
            deltaT=self.opts.adalora_delta_t,
            beta1=self.opts.adalora_sensitivity_beta,
            beta2=self.opts.adalora_uncertainty_beta,
            orth_reg_weight=self.opts.adalora_orth_weight,
        )

    def attach(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        peft_model = get_peft_model(model, self.lora_config(model))
        config = peft_model.base_model.peft_config[ADAPTER_NAME]
        weight = self.opts.adalora_orth_weight

        # PEFT adds the penalty whenever the output has a loss; keep it out of eval losses.
        def penalty_in_training_only(module: nn.Module, args: Any) -> None:
            config.orth_reg_weight = weight if module.training else 0.0

        peft_model.base_model.register_forward_pre_hook(penalty_in_training_only)
        return peft_model

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """The penalty for causal-LM trials in training: their loss calls the model without
        `labels`, so PEFT's forward adds nothing. Classification gets it from PEFT (None here)."""
        if self.task_type != "causal_lm" or not model.training or self.opts.adalora_orth_weight == 0:
            return None
        return self.opts.adalora_orth_weight * orthogonality_penalty(model)

    def after_step(self, model: nn.Module, step: int, batch: dict[str, Any]) -> None:
        # Equal ranks leave nothing to prune (and PEFT's kthvalue would fail on k = 0).
        if self.target_r < self.init_r:
            model.base_model.update_and_allocate(step)

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        """PEFT's importance averages and, once fixed, the final rank pattern."""
        allocator = model.base_model.rankallocator
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": model.base_model.peft_config[ADAPTER_NAME].rank_pattern,
        }

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        allocator = model.base_model.rankallocator
        device = next(model.parameters()).device
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})
        model.base_model.peft_config[ADAPTER_NAME].rank_pattern = state["rank_pattern"]

    def factors(self, model: nn.Module) -> list[LowRank]:
        """Every module's live ranks (λ_i ≠ 0), Λ folded into B, at PEFT's exact scale."""
        found = []
        for name, layer in lora_layers(model):
            A, B, E = (getattr(layer, f)[ADAPTER_NAME] for f in ("lora_A", "lora_B", "lora_E"))
            scale = float(layer.scaling[ADAPTER_NAME] / (layer.ranknum[ADAPTER_NAME] + 1e-5))
            found.append(live_factors(name, A, B, scale, E.detach().view(-1)))
        return found

    def factor_context(self) -> ContextManager[None]:
        return quiet_rank_zero_slices()

    def budget_settles_at(self) -> int:
        return self.total_steps - self.tfinal_steps  # PEFT's final mask; the ranks are fixed after it

