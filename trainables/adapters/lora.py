"""LoRA (Hu et al., 2021) through PEFT, with the scaling rule and LoRA+ ratio as knobs.

    h = W0 x + s · B A x,   A ~ kaiming-uniform (r × d_in),   B = 0 (d_out × r)
    s = α / r^p: p = 1 is LoRA's α/r, p = 0.5 is RoRA's / rsLoRA's α/√r.
    LoRA+ (Hayou et al., 2024): B is trained with lr · ratio (ratio 1 = plain LoRA).

Every other variant that PEFT's LoraConfig can express (DoRA, RoRA, LoRA+) is a
small subclass of this one.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch
from torch import nn

from trainables.adapters.base import COMMON_HYPERPARAMS, Options, peft_scaling_kwargs
from trainables.adapters.export import PEFT_PREFIX, TASK_TYPES, LowRank, exported_params, save_plain_lora
from trainables.models import classifier_head_names, resolve_target_modules

# PEFT (and transformers under it) is imported where a model is built, not here: the driver
# imports this registry to validate an experiment, and PEFT's import would cost it seconds of start-up.
if TYPE_CHECKING:
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

# adapter.init -> PEFT's init_lora_weights; pissa and olora change the base weights (the
# export converts the adapter back to one for the original base: `LoRA.converted`)
INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": "eva"}
CHANGES_BASE = ("pissa", "olora")
# EVA (Paischer et al., 2024) starts A from the leading principal directions of each layer's
# (centred) inputs, an incremental PCA over training batches that stops once they converge; it
# cycles through this many batches (they repeat if it needs more).
EVA_BATCHES = 8


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    """Every PEFT LoRA layer with its module name in the base model (no PEFT prefix)."""
    from peft.tuners.lora import LoraLayer

    return [(name.removeprefix(PEFT_PREFIX), module) for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and "default" in getattr(module, "lora_A", {})]


class LoRA:
    name: ClassVar[str] = "lora"
    shared: ClassVar[frozenset[str]] = COMMON_HYPERPARAMS  # which of the common knobs it takes
    options: ClassVar[type[Options]] = Options  # no knobs of its own
    hyperparams: ClassVar[frozenset[str]] = COMMON_HYPERPARAMS  # derived for subclasses, below
    use_dora: ClassVar[bool] = False
    default_loraplus_ratio: ClassVar[float] = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A variant's search dimensions: the common knobs it takes plus its own options.
        super().__init_subclass__(**kwargs)
        cls.hyperparams = cls.shared | frozenset(cls.options.model_fields)

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        self.config = config
        self.task_type = task_type
        self.total_steps = max(1, int(total_steps))
        self.opts = self.options.from_config(config)

    # -- what makes this variant --------------------------------------------------
    def scaling(self) -> str | float:
        return self.config.get("scaling", "lora")

    def loraplus_ratio(self) -> float:
        ratio = self.config.get("loraplus_ratio")  # None: the variant's default
        return float(ratio) if ratio is not None else self.default_loraplus_ratio

    def init(self) -> str:
        return self.config.get("init") or "default"

    def lora_config(self, model: nn.Module) -> LoraConfig:
        from peft import LoraConfig

        rank = int(self.config["rank"])
        heads = classifier_head_names(model) if self.task_type == "classification" else []
        return LoraConfig(
            task_type=TASK_TYPES[self.task_type],
            r=rank,
            lora_dropout=float(self.config.get("dropout", 0.0)),
            target_modules=resolve_target_modules(model, self.config.get("target_modules")),
            modules_to_save=heads or None,
            use_dora=self.use_dora,
            init_lora_weights=INITS[self.init()],
            eva_config=self._eva_config() if self.init() == "eva" else None,
            **peft_scaling_kwargs(float(self.config["alpha"]), rank, self.scaling()),
        )

    def _eva_config(self) -> Any:
        from peft import EvaConfig

        # rho 1: every layer keeps rank r (EVA's default 2 moves rank between layers, which would
        # make `init` change the budget it is compared at). Causal LM: only answer tokens count
        # (labels != -100); a classifier's labels are one per sequence, so every token counts.
        return EvaConfig(rho=1.0, use_label_mask=self.task_type == "causal_lm")

    # -- hooks ----------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], val_batch: dict[str, torch.Tensor]
    ) -> None:
        if self.init() == "eva":  # the training batches EVA's SVD reads (the same on a restart: same seed)
            self._eva_batches = list(itertools.islice(batches, EVA_BATCHES))

    def attach(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        model = get_peft_model(model, self.lora_config(model))
        if self.init() in CHANGES_BASE:
            self._save_initial(model)
        if self.init() == "eva":
            self._eva_init(model)
        return model

    def _eva_init(self, model: nn.Module) -> None:
        from peft import initialize_lora_eva_weights

        batches = getattr(self, "_eva_batches", None)
        if not batches:
            raise RuntimeError("init 'eva' reads training batches: call adapter.prepare(model, batches, val_batch) "
                               "before attach()")
        # Under Ray Train each worker passes its own slices and PEFT gathers the layer inputs of all
        # workers, so every worker computes the same SVD (and the same A).
        modes = {m: m.training for m in model.modules()}  # PEFT leaves every module in the wrapper's mode
        initialize_lora_eva_weights(model, dataloader=batches, show_progress_bar=False)
        for module, training in modes.items():
            module.training = training

    def _save_initial(self, model: nn.Module) -> None:
        """A and B as initialised, which the export subtracts again. A restarted trial attaches
        again from the original base and gets the same ones (PiSSA's SVD, OLoRA's QR)."""
        self._initial = {name: (layer.lora_A["default"].weight.detach().clone(),
                                layer.lora_B["default"].weight.detach().clone())
                         for name, layer in lora_layers(model)}

    def converted(self, model: nn.Module) -> list:
        """The adapter for the original base when the init changed it: W0 = W_res + s·B0·A0, so
        W_res + s·B·A = W0 + s·[B, −B0]·[A; A0], a LoRA of rank 2r (what PEFT's conversion
        computes; PEFT's own path drops a classifier's saved head, so the rows are built here)."""
        out = []
        for name, layer in lora_layers(model):
            A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
            A0, B0 = self._initial[name]
            out.append(LowRank(name, torch.cat([A, A0]).float(), torch.cat([B, -B0], dim=1).float(),
                               float(layer.scaling["default"])))
        return out

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        # Built by hand rather than with peft's create_loraplus_optimizer, which
        # would also give every 1-D tensor (DoRA magnitudes, biases) the B rate.
        b_params, other = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (b_params if "lora_B" in name else other).append(param)
        groups = [{"params": other, "lr": lr, "weight_decay": weight_decay}]
        if b_params:
            groups.append({"params": b_params, "lr": lr * self.loraplus_ratio(), "weight_decay": weight_decay})
        return groups

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, step: int, batch: dict[str, torch.Tensor]) -> None:
        return None

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        return {}  # everything LoRA trains is in the model's state dict

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        return None

    def adapter_params(self, model: nn.Module) -> int:
        from peft import get_peft_model_state_dict

        if self.init() in CHANGES_BASE:  # what the export ships: [A; A0] and [B, -B0], rank 2r
            return exported_params(model, self.converted(model))
        return sum(t.numel() for t in get_peft_model_state_dict(model).values())

    def budget_settles_at(self) -> int:
        return 0  # a fixed rank: the parameters are final from the first step

    def rank_allocation(self, model: nn.Module) -> dict[str, int]:
        return {name: int(layer.r["default"]) for name, layer in lora_layers(model)}

    def export(self, model: nn.Module, path: Path) -> None:
        if self.init() in CHANGES_BASE:
            save_plain_lora(model, path, self.converted(model), TASK_TYPES[self.task_type],
                            dropout=float(self.config.get("dropout", 0.0)))
        else:
            model.save_pretrained(str(path))
