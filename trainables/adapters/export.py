"""Write any variant's trained state as a plain PEFT LoRA adapter.

Variants whose ranks differ per module, or whose gates/singular values are not
part of LoRA (SoRA, SaLoRA, ALoRA, AdaLoRA), reduce each adapted module to its
live low-rank factors `(A, B, s)` with `ΔW = s · B A`; this module writes them in
PEFT's on-disk format with per-module `rank_pattern` / `alpha_pattern`, so the
result loads with `PeftModel.from_pretrained` and nothing from raysearch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file
from torch import nn

# PEFT's on-disk format: its task types by raysearch task, and the prefix of a saved tensor's key
TASK_TYPES = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}
PEFT_PREFIX = "base_model.model."


@dataclass
class LowRank:
    """One adapted module's live update: ΔW = scale · B @ A."""

    name: str  # full module name inside the base model, e.g. bert.encoder.layer.0.attention.self.query
    A: torch.Tensor  # (r, d_in)
    B: torch.Tensor  # (d_out, r)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def numel(self) -> int:
        return self.A.numel() + self.B.numel()


def live_factors(name: str, A: torch.Tensor, B: torch.Tensor, scale: float, gate: torch.Tensor) -> LowRank:
    """Fold a per-rank gate into B (B' = B · diag(g)) and drop the ranks whose gate is 0."""
    keep = gate != 0
    return LowRank(name, A[keep].detach(), (B[:, keep] * gate[keep]).detach(), scale)  # indexing copies


def kept_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The non-LoRA tensors PEFT saves with an adapter (modules_to_save heads), in on-disk keys."""
    from peft import get_peft_model_state_dict  # imported here, not on top: see lora.py

    state = get_peft_model_state_dict(model)
    # No copies: callers count these or write them; the model's tensors are never modified.
    return {k: v.detach() for k, v in state.items() if ".lora_" not in k and "ranknum" not in k}


def modules_to_save(model: nn.Module) -> list[str] | None:
    config = model.peft_config["default"]
    names = getattr(config, "modules_to_save", None)
    return sorted(names) if names else None


def save_plain_lora(
    model: nn.Module, path: Path, factors: Iterable[LowRank], task_type: str | None, dropout: float = 0.0
) -> None:
    """Write `factors` (plus the PEFT model's saved heads) as a plain LoRA adapter at `path`.

    Modules with no live rank are left out. PEFT scales by `lora_alpha / r`, so each
    module's alpha is `scale · r`: the export computes exactly `W0 + scale · B A`.
    """
    from peft import LoraConfig

    factors = shipped(factors)
    path.mkdir(parents=True, exist_ok=True)
    default_rank = max(f.rank for f in factors)
    config = LoraConfig(
        task_type=task_type,
        r=default_rank,
        lora_alpha=default_rank,
        target_modules=[f.name for f in factors],
        rank_pattern={f.name: f.rank for f in factors},
        alpha_pattern={f.name: f.scale * f.rank for f in factors},
        lora_dropout=dropout,
        modules_to_save=modules_to_save(model),
        base_model_name_or_path=getattr(getattr(model, "config", None), "_name_or_path", None),
    )
    state = kept_state(model)
    for f in factors:
        state[f"{PEFT_PREFIX}{f.name}.lora_A.weight"] = f.A.contiguous()
        state[f"{PEFT_PREFIX}{f.name}.lora_B.weight"] = f.B.contiguous()
    config.save_pretrained(str(path))
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
    (path / "rank_allocation.json").write_text(json.dumps({f.name: f.rank for f in factors}, indent=1))


def shipped(factors: Iterable[LowRank]) -> list[LowRank]:
    """The modules an export holds: those with a live rank. If every rank was pruned,
    one zero rank is kept on the first module so the adapter still loads (as the base)."""
    factors = list(factors)
    live = [f for f in factors if f.rank > 0]
    if live or not factors:
        return live
    first = factors[0]
    d_in, d_out = first.A.shape[1], first.B.shape[0]
    return [LowRank(first.name, first.A.new_zeros(1, d_in), first.B.new_zeros(d_out, 1), first.scale)]


def exported_params(model: nn.Module, factors: Iterable[LowRank]) -> int:
    """What `save_plain_lora` would write, in parameters: live factors + saved heads."""
    return sum(f.numel for f in shipped(factors)) + sum(t.numel() for t in kept_state(model).values())
