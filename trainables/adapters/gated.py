"""The one gated LoRA layer SoRA, SaLoRA and ALoRA share.

    z = s · B (g ⊙ A x),   g ∈ R^slots

A PEFT LoRA layer with `slots` ranks gets a `lora_gate` submodule (a `Gate`) and a
forward pre-hook on its `lora_B` that multiplies B's input `A x` by the gate
values. PEFT's own forward, dropout, scaling and saving are untouched, so the
variants differ only in how `g` is computed and trained:

- SoRA: a trainable vector, stepped by its own proximal optimizer;
- SaLoRA: hard-concrete samples from trainable `log α` (deterministic in eval);
- ALoRA: a binary, non-trainable mask over live and spare slots.

Why a hook rather than PEFT's `LoraVariant`: docs/variants.md, SoRA. Export folds the gate
into B (`B · diag(g)`) and drops zero ranks, so the shipped adapter is plain LoRA (export.py).
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from trainables.adapters.export import LowRank, live_factors
from trainables.adapters.factored import FactoredLoRA
from trainables.adapters.lora import LoRA, lora_layers


class Gate(nn.Module):
    """Per-rank multipliers of one module. Subclasses define `forward()` (the values used
    in this forward pass) and may override `deterministic()` (eval/export values)."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def deterministic(self) -> torch.Tensor:
        """The values the exported adapter folds into B."""
        was_training = self.training
        self.eval()
        try:
            return self()
        finally:
            self.train(was_training)

    def gate_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Forward pre-hook of lora_B: its input `A x` (..., slots) times the gate."""
        (ax, *rest) = args
        return (ax * self().to(ax.dtype), *rest)


class GatedLoRA(FactoredLoRA):
    """Base class of the gated variants: PEFT LoRA with `slots()` ranks and a gate per module."""
    shared: ClassVar[frozenset[str]] = LoRA.shared - {"init"}  # gated slots start as LoRA's

    # -- what subclasses define -----------------------------------------------------------
    def make_gate(self, name: str, slots: int) -> Gate:
        raise NotImplementedError

    def slots(self) -> int:
        """Rank slots per module (r_max for SoRA/SaLoRA; live + spare for ALoRA)."""
        return int(self.config["rank"])

    # -- attaching -------------------------------------------------------------------------
    def lora_config(self, model: nn.Module):
        config = super().lora_config(model)
        config.use_dora = False
        # The scale stays that of the configured rank even when there are spare slots.
        rank, slots = int(self.config["rank"]), self.slots()
        if slots != rank:
            config.r = slots
            config.lora_alpha = self.scale_at(rank) * (slots ** 0.5 if config.use_rslora else slots)
        return config

    def scale_at(self, rank: int) -> float:
        from trainables.adapters.base import scale

        return scale(float(self.config["alpha"]), rank, self.scaling())

    def attach(self, model: nn.Module) -> nn.Module:
        model = super().attach(model)
        for name, layer in lora_layers(model):
            gate = self.make_gate(name, self.slots())
            gate.to(layer.lora_A["default"].weight.device)
            layer.lora_gate = gate  # registered submodule: trained, saved with the model, moved by .to()
            layer.lora_B["default"].register_forward_pre_hook(gate.gate_input)
        return model

    # -- introspection shared by every gated variant ------------------------------------
    @staticmethod
    def gates(model: nn.Module) -> Iterator[tuple[str, Any, Gate]]:
        for name, layer in lora_layers(model):
            yield name, layer, layer.lora_gate

    def factors(self, model: nn.Module) -> list[LowRank]:
        """Each module's live update with the deterministic gate folded into B."""
        out = []
        for name, layer, gate in self.gates(model):
            with torch.no_grad():
                g = gate.deterministic().detach().float()
            out.append(live_factors(name, layer.lora_A["default"].weight.float(),
                                    layer.lora_B["default"].weight.float(), float(layer.scaling["default"]), g))
        return out

    # -- hooks -------------------------------------------------------------------------------
    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """LoRA's groups (LoRA+ on B) with gate parameters in a group of their own, no decay."""
        gate_ids = {id(p) for _, _, gate in self.gates(model) for p in gate.parameters()}
        groups = []
        for group in super().param_groups(model, lr, weight_decay):
            params = [p for p in group["params"] if id(p) not in gate_ids]
            if params:
                groups.append({**group, "params": params})
        gate_params = [p for _, _, gate in self.gates(model) for p in gate.parameters() if p.requires_grad]
        if gate_params:
            groups.append({"params": gate_params, "lr": lr, "weight_decay": 0.0})
        return groups

