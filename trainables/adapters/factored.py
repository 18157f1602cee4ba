"""The base of the variants whose live adapter is a list of low-rank factors they compute
themselves (AdaLoRA, and through GatedLoRA SoRA, SaLoRA and ALoRA): parameter count, rank
allocation and export all come from those factors."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager

from torch import nn

from trainables.adapters.export import TASK_TYPES, LowRank, exported_params, save_plain_lora
from trainables.adapters.lora import LoRA


class FactoredLoRA(LoRA):
    """A variant whose live adapter is a list of low-rank factors it computes itself
    (`factors(model)`: AdaLoRA's unmasked triplets, the gated variants' open slots): its live
    parameter count, its rank allocation and its plain-LoRA export all come from those factors,
    so the three always agree."""

    def factors(self, model: nn.Module) -> list[LowRank]:
        raise NotImplementedError

    def factor_context(self) -> ContextManager[None]:
        """Entered around every use of `factors` (AdaLoRA silences PEFT's empty-slice warnings)."""
        return contextlib.nullcontext()

    def adapter_params(self, model: nn.Module) -> int:
        with self.factor_context():
            return exported_params(model, self.factors(model))

    def rank_allocation(self, model: nn.Module) -> dict[str, int]:
        with self.factor_context():
            return {f.name: f.rank for f in self.factors(model)}

    def export(self, model: nn.Module, path: Path) -> None:
        with self.factor_context():
            save_plain_lora(model, path, self.factors(model), TASK_TYPES[self.task_type],
                            dropout=float(self.config.get("dropout", 0.0)))
