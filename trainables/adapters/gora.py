"""GoRA (He et al., 2025, "GoRA: Gradient-driven Adaptive Low Rank Adaptation", arXiv:2502.12171).

Before training, with the base frozen, on N batches, for every target weight W_i (d_out × d_in):
    G_i = mean ∂L/∂W_i,   I_i = mean|W_i ⊙ G_i|,   T = Σ_i (d_in+d_out)·r_ref,
    r_i = clamp(round(T · (I_i/ΣI) / (d_in+d_out)), r_min, r_max),
    A_i kaiming (as LoRA),   B_i = −(γ_i/s_i) · G_i A_iᵀ(A_iA_iᵀ)⁻¹,   s_i = α/√r_i,
so the adapter starts at s_i B_i A_i = −γ_i G_i P_A: one gradient-descent step projected on
A_i's row space, with the base weight untouched. Then trained as LoRA (LoRA+ ratio 16).

The step size's √(d_in/r_i) factor, the pseudo-inverse, eval-mode gradients and the tests:
docs/variants.md, GoRA.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import nn

from trainables.adapters.base import COMMON_HYPERPARAMS, Options
from trainables.adapters.lora import LoRA, lora_layers
from trainables.models import classifier_head_names, linear_module_names, matches_target, resolve_target_modules

if TYPE_CHECKING:  # PEFT is imported where a model is built (see lora.py).
    from peft import LoraConfig


class GoRAOptions(Options):
    gora_gamma: float = Field(5e-2, gt=0, allow_inf_nan=False)
    """Initial step size: the adapter starts at -γ_i·G·P_A with γ_i = gora_gamma·√(d_in/r_i),
    as large as one full-weight SGD step of this learning rate (the paper's 5e-2 by default)."""
    gora_batches: int = Field(64, ge=1)
    """N: training batches whose mean gradient drives rank allocation and initialization."""
    gora_r_min: int | None = Field(None, ge=1)
    """Smallest rank a module can get; None: rank // 2 (at least 1)."""
    gora_r_max: int | None = Field(None, ge=1)
    """Largest rank a module can get; None: 4 · rank."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> GoRAOptions:
        if self.gora_r_min is not None and self.gora_r_max is not None and self.gora_r_min > self.gora_r_max:
            raise ValueError(f"gora_r_min ({self.gora_r_min}) must be <= gora_r_max ({self.gora_r_max})")
        return self


class GoRA(LoRA):
    name: ClassVar[str] = "gora"
    options: ClassVar[type[Options]] = GoRAOptions
    # GoRA always scales by α/√r_i: the scaling rule is not a dimension here.
    shared: ClassVar[frozenset[str]] = COMMON_HYPERPARAMS - {"scaling", "init"}  # its own init
    default_loraplus_ratio: ClassVar[float] = 16.0

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        super().__init__(config, task_type, total_steps)
        rank = int(config["rank"])
        self.r_min = self.opts.gora_r_min if self.opts.gora_r_min is not None else max(1, rank // 2)
        self.r_max = self.opts.gora_r_max if self.opts.gora_r_max is not None else 4 * rank
        if self.r_min > self.r_max:
            raise ValueError(f"GoRA rank bounds are empty for rank={rank}: r_min={self.r_min} > r_max={self.r_max}; "
                             "set adapter.gora_r_min / adapter.gora_r_max explicitly")
        self.gradients: dict[str, torch.Tensor] = {}  # G_i, (d_out, d_in) float32 on the CPU, until attach
        self.importance: dict[str, float] = {}
        self.ranks: dict[str, int] = {}
        self.step_sizes: dict[str, float] = {}  # γ_i, filled by attach
        self.budget_params = 0  # T = Σ (d_in+d_out)·r_ref
        self.allocated_params = 0  # Σ (d_in+d_out)·r_i, differs from T by rounding and clamping

    def scaling(self) -> str:
        return "rslora"

    # -- hooks ----------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], val_batch: dict[str, torch.Tensor]
    ) -> None:
        targets = self.target_layers(model)
        grads = mean_gradients(model, targets, batches, self.opts.gora_batches)
        self.gradients = {name: all_reduce_mean(g) for name, g in grads.items()}  # same G on every worker
        weights = {name: linear_layout(m, m.weight.detach()).float().cpu() for name, m in targets.items()}
        self.importance = {name: float((weights[name] * g).abs().mean()) for name, g in self.gradients.items()}
        sizes = {name: sum(g.shape) for name, g in self.gradients.items()}
        ranks = allocate_ranks(self.importance, sizes, int(self.config["rank"]), self.r_min, self.r_max)
        self.ranks = broadcast_ranks(ranks)  # DDP needs identical shapes on every worker
        self.budget_params = sum(sizes.values()) * int(self.config["rank"])
        self.allocated_params = sum(sizes[name] * r for name, r in self.ranks.items())

    def lora_config(self, model: nn.Module) -> LoraConfig:
        from peft import LoraConfig

        # Full module names: PEFT then adapts exactly the layers whose gradients were taken.
        return dataclasses.replace(super().lora_config(model), target_modules=sorted(self.ranks),
                                   rank_pattern=dict(self.ranks))

    def attach(self, model: nn.Module) -> nn.Module:
        if not self.ranks:
            raise RuntimeError("GoRA.attach needs the gradients from GoRA.prepare(model, batches, val_batch) first")
        from peft import get_peft_model

        peft_model = get_peft_model(model, self.lora_config(model))
        with torch.no_grad():
            for name, layer in lora_layers(peft_model):
                grad, A = self.gradients[name], layer.lora_A["default"].weight
                self.step_sizes[name] = self.opts.gora_gamma * math.sqrt(grad.shape[1] / A.shape[0])
                B = projected_step(grad, A.detach().cpu(), layer.scaling["default"], self.step_sizes[name])
                layer.lora_B["default"].weight.copy_(B)
        self.gradients = {}  # as large as the target weights: free them before training
        return peft_model

    def target_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """Full name -> module for every layer the adapter attaches to (suffix match, as PEFT)."""
        suffixes = resolve_target_modules(model, self.config.get("target_modules"))
        heads = set(classifier_head_names(model, required=False)) if self.task_type == "classification" else set()
        modules = dict(model.named_modules())
        return {name: modules[name] for name in linear_module_names(model)
                if name.split(".")[0] not in heads and any(matches_target(name, s) for s in suffixes)}


def linear_layout(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as (d_out, d_in): transformers' Conv1D stores (d_in, d_out)."""
    from transformers.pytorch_utils import Conv1D

    return tensor.T if isinstance(module, Conv1D) else tensor


def mean_gradients(
    model: nn.Module, targets: dict[str, nn.Module], batches: Iterable[dict[str, torch.Tensor]], n: int
) -> dict[str, torch.Tensor]:
    """Mean ∂L/∂W over `n` batches for each target weight, in float32 on the CPU, (d_out, d_in).

    Only the target weights require grad meanwhile; each gradient leaves the device as soon as
    it is complete (a post-accumulate hook), so the device never holds more than a few.
    The model's requires_grad flags and train/eval mode are restored; no .grad is left behind.
    """
    sums = {name: torch.zeros(m.weight.shape, dtype=torch.float32) for name, m in targets.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training, device = model.training, next(model.parameters()).device
    hooks = [m.weight.register_post_accumulate_grad_hook(_offload_into(sums[name])) for name, m in targets.items()]
    count = 0
    try:
        model.requires_grad_(False).eval()
        for m in targets.values():
            m.weight.requires_grad_(True)
        for batch in itertools.islice(batches, n):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            if loss is None:
                raise ValueError("GoRA needs labels in the training batches to compute the loss gradient")
            loss.backward()
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for m in targets.values():
            m.weight.grad = None
        model.train(was_training)
    if count == 0:
        raise ValueError("GoRA.prepare received no training batch")
    return {name: linear_layout(targets[name], total / count).contiguous() for name, total in sums.items()}


def _offload_into(total: torch.Tensor) -> Callable[[torch.Tensor], None]:
    def hook(param: torch.Tensor) -> None:
        total.add_(param.grad.detach().float().cpu())
        param.grad = None

    return hook


def allocate_ranks(
    importance: dict[str, float], sizes: dict[str, int], r_ref: int, r_min: int, r_max: int
) -> dict[str, int]:
    """r_i = clamp(round(T · a_i / size_i), r_min, r_max), a_i = I_i/ΣI, T = Σ size_i · r_ref,
    where size_i = d_in + d_out (a rank of module i costs size_i parameters)."""
    total = sum(importance.values())
    if not math.isfinite(total):
        raise ValueError(f"GoRA importances are not finite (sum {total}); the gradients diverged")
    if total <= 0:  # constant loss: no signal, plain uniform ranks
        return {name: min(max(r_ref, r_min), r_max) for name in importance}
    budget = sum(sizes.values()) * r_ref
    return {name: min(max(round(budget * imp / total / sizes[name]), r_min), r_max)
            for name, imp in importance.items()}


def projected_step(grad: torch.Tensor, A: torch.Tensor, scale: float, gamma: float) -> torch.Tensor:
    """B = −(γ/s) · G · A⁺ (A⁺ = Aᵀ(AAᵀ)⁻¹ for full-row-rank A), so that s·B·A = −γ · G · P_A."""
    return -(gamma / scale) * (grad.double() @ torch.linalg.pinv(A.double()))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo (or "cpu:gloo,cuda:nccl") takes CPU ones.
    if "gloo" in str(dist.get_backend()) or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the workers (itself when not distributed), on the CPU."""
    if not _distributed():
        return tensor
    reduced = tensor.to(_collective_device())
    dist.all_reduce(reduced)
    return (reduced / dist.get_world_size()).cpu()


def broadcast_ranks(ranks: dict[str, int]) -> dict[str, int]:
    """Worker 0's allocation on every worker, so a rounding tie can never split shapes."""
    if not _distributed():
        return ranks
    values = torch.tensor(list(ranks.values()), dtype=torch.long, device=_collective_device())
    dist.broadcast(values, src=0)
    return dict(zip(ranks, (int(v) for v in values.cpu())))
