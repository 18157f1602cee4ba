"""The adapter registry: variant name -> class implementing the hook protocol."""
from __future__ import annotations

from trainables.adapters.base import Adapter
from trainables.adapters.dora import DoRA
from trainables.adapters.lora import LoRA
from trainables.adapters.loraplus import LoRAPlus
from trainables.adapters.rora import RoRA

ADAPTERS: dict[str, type[Adapter]] = {
    "lora": LoRA,
    "rora": RoRA,
    "dora": DoRA,
    "loraplus": LoRAPlus,
}

__all__ = ["ADAPTERS", "Adapter"]
