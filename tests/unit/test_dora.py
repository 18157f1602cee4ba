"""DoRA: PEFT's `use_dora` really on, the layer's formula, and the magnitude vectors trained at the
trial's lr (kept out of LoRA+'s B group), on a tiny BERT built from a config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_bert import ADAPTER_CONFIG, HIDDEN, train_steps
from tiny_bert import attached as attach_tiny

from trainables.adapters import ADAPTERS
from trainables.adapters.dora import DoRA
from trainables.adapters.lora import lora_layers


def attached(base_dir: Path, **overrides) -> tuple[DoRA, torch.nn.Module]:
    return attach_tiny(DoRA, {**ADAPTER_CONFIG, **overrides}, base_dir, total_steps=3)


def magnitudes(model) -> dict[str, torch.Tensor]:
    return {name: layer.lora_magnitude_vector["default"].weight for name, layer in lora_layers(model)}


def test_use_dora_is_on_and_each_layer_computes_the_decomposed_weight(tiny_bert_dir):
    """PEFT's config and every adapted layer have DoRA on, m starts at ‖W0‖_row, and a layer's
    output is x W'ᵀ + b with W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_row, computed here by hand with a
    nonzero B and m ≠ ‖W0‖_row (at init DoRA's output equals the base's, which proves nothing);
    plain LoRA's x (W0 + s·B A)ᵀ + b is far from it."""
    assert ADAPTERS["dora"] is DoRA
    adapter, model = attached(tiny_bert_dir)
    assert model.peft_config["default"].use_dora is True
    layers = lora_layers(model)
    assert len(layers) == 6  # query, key, value x 2 layers
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, HIDDEN, generator=g)
    for name, layer in layers:
        assert layer.use_dora["default"], name
        W0, bias = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
        m = layer.lora_magnitude_vector["default"].weight
        torch.testing.assert_close(m.detach(), W0.norm(dim=1))
        with torch.no_grad():
            B = layer.lora_B["default"].weight
            B.copy_(0.1 * torch.randn(B.shape, generator=g))
            m.mul_(torch.linspace(0.5, 2.0, m.numel()))
            W = W0 + layer.scaling["default"] * B @ layer.lora_A["default"].weight
            expected = x @ (m[:, None] * W / W.norm(dim=1, keepdim=True)).T + bias
            actual = layer(x)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
        assert (actual - (x @ W.T + bias)).abs().max() > 1e-2, "DoRA must not reduce to plain LoRA here"


def test_magnitude_is_trained_at_the_trial_lr_outside_the_loraplus_b_group(tiny_bert_dir):
    """With a LoRA+ ratio of 16, the group at 16 × lr holds B matrices only, and every magnitude
    vector is in a group at the trial's lr. Then through the optimizer: AdamW's first step moves
    each element by lr · g/(|g| + ε), which is lr to within 5 % for the largest gradients here
    (the largest query and key gradients are ~5e-7, so ε = 1e-8 takes 2 %): after one step the largest change
    of m is lr (it was trained, at the trial's rate, not 16 × lr) and that of B is 16 · lr."""
    lr = 1e-3
    adapter, model = attached(tiny_bert_dir, loraplus_ratio=16.0)
    groups = adapter.param_groups(model, lr, 0.0)
    magnitude_ids = {id(m) for m in magnitudes(model).values()}
    b_ids = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    assert len(magnitude_ids) == 6
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & b_ids:
            assert ids <= b_ids and group["lr"] == pytest.approx(16 * lr)
        else:
            assert group["lr"] == pytest.approx(lr)
    assert magnitude_ids <= {id(p) for group in groups if group["lr"] == pytest.approx(lr) for p in group["params"]}

    before = {name: m.detach().clone() for name, m in magnitudes(model).items()}
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train_steps(adapter, model, 1, lr=lr)
    for name, m in magnitudes(model).items():
        assert (m.detach() - before[name]).abs().max().item() == pytest.approx(lr, rel=0.05), name
    b_steps = [(p.detach() - b_before[n]).abs().max().item() for n, p in model.named_parameters() if n in b_before]
    assert b_steps == pytest.approx([16 * lr] * len(b_steps), rel=0.05)
