"""LoRA+ (Hayou et al., 2024): LoRA with B trained at a higher learning rate.

    lr_B = ratio · lr_A,   ratio = 16 by default (the paper's recommendation)
Only B's group gets the higher rate: biases, heads and other 1-D tensors keep lr.
"""
from __future__ import annotations

from typing import ClassVar

from trainables.adapters.lora import LoRA


class LoRAPlus(LoRA):
    name: ClassVar[str] = "loraplus"
    default_loraplus_ratio: ClassVar[float] = 16.0
