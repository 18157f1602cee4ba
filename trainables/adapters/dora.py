"""DoRA (Liu et al., 2024): weight-decomposed LoRA, through PEFT's `use_dora=True`.

    W = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_row,   m (d_out) trainable, init ‖W0‖_row
The direction is LoRA-updated, the magnitude learned separately; the scaling
rule and LoRA+ ratio apply to the LoRA part as for LoRA.
"""
from __future__ import annotations

from typing import ClassVar

from trainables.adapters.lora import LoRA


class DoRA(LoRA):
    name: ClassVar[str] = "dora"
    shared: ClassVar[frozenset[str]] = LoRA.shared - {"init"}  # a PiSSA/OLoRA base would not export as DoRA
    use_dora: ClassVar[bool] = True
