"""GoRA: rank allocation, the gradient-step initialization, and what prepare leaves behind."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tiny_bert import batch, load_base
from torch import nn

from trainables.adapters.gora import GoRA, GoRAOptions, allocate_ranks, mean_gradients
from trainables.adapters.lora import lora_layers

CONFIG = {"rank": 4, "alpha": 8, "dropout": 0.0, "loraplus_ratio": None, "target_modules": None, "gora_batches": 8}


def init_batches(n: int = 8) -> list[dict[str, torch.Tensor]]:
    return [batch(100 + i) for i in range(n)]


def prepared(base_dir: Path, **overrides) -> tuple[GoRA, nn.Module]:
    torch.manual_seed(1)
    adapter = GoRA({**CONFIG, **overrides}, "classification")
    base = load_base(base_dir)
    adapter.prepare(base, iter(init_batches(adapter.opts.gora_batches)), batch(99))
    return adapter, base


def sizes_of(adapter: GoRA, model: nn.Module) -> dict[str, int]:
    return {name: m.in_features + m.out_features for name, m in adapter.target_layers(model).items()}


# -- (1) allocation ---------------------------------------------------------------------
def test_allocation_spends_the_budget_exactly_when_no_bound_binds():
    sizes = {"a": 64, "b": 64, "c": 128}  # d_in + d_out
    budget = sum(sizes.values()) * 4  # r_ref = 4 -> T = 1024
    wanted = {"a": 2, "b": 6, "c": 4}  # inside [2, 16]
    importance = {name: wanted[name] * sizes[name] / budget for name in sizes}  # a_i = r_i·size_i / T
    ranks = allocate_ranks(importance, sizes, r_ref=4, r_min=2, r_max=16)
    assert ranks == wanted
    assert sum(sizes[n] * r for n, r in ranks.items()) == budget


def test_allocation_clamps_to_the_bounds():
    sizes = {"a": 64, "b": 64, "c": 64}
    ranks = allocate_ranks({"a": 1.0, "b": 1e-6, "c": 0.0}, sizes, r_ref=4, r_min=2, r_max=8)
    assert ranks == {"a": 8, "b": 2, "c": 2}  # unclamped: 12, 0, 0
    assert allocate_ranks({"a": 0.0, "b": 0.0}, sizes, r_ref=4, r_min=2, r_max=8) == {"a": 4, "b": 4}


def test_prepared_ranks_follow_the_formula_within_bounds_and_report_the_total(tiny_bert_dir):
    adapter, base = prepared(tiny_bert_dir, gora_r_min=1, gora_r_max=10)
    sizes = sizes_of(adapter, base)
    assert set(adapter.ranks) == set(sizes) and len(sizes) == 6  # query/key/value x 2 layers
    budget = sum(sizes.values()) * 4
    total_importance = sum(adapter.importance.values())
    for name, rank in adapter.ranks.items():
        assert 1 <= rank <= 10
        unclamped = budget * adapter.importance[name] / total_importance / sizes[name]
        assert rank == min(max(round(unclamped), 1), 10)
    assert adapter.budget_params == budget
    assert adapter.allocated_params == sum(sizes[n] * r for n, r in adapter.ranks.items())
    # Rounding moves each module by at most half a rank; clamping only raises r_min / lowers r_max.
    assert sum(sizes.values()) * 1 <= adapter.allocated_params <= sum(sizes.values()) * 10
    model = adapter.attach(base)
    assert adapter.rank_allocation(model) == adapter.ranks


def test_importance_is_the_mean_of_weight_times_mean_gradient(tiny_bert_dir):
    """I_i = mean|W_i ⊙ G_i| recomputed here from scratch (a fresh base, the mean loss of the same
    8 batches, one backward, NumPy), not read back from `adapter.importance`; and the ranks
    `prepare` allocates are the formula's ranks for these importances.

    Checked per module, not only up to a common factor: the allocation is invariant to scaling
    every I_i alike, and all six tiny-BERT projections have the same shape, so a sum instead of a
    mean (or any other constant factor) would leave the ranks unchanged."""
    adapter, _ = prepared(tiny_bert_dir, gora_r_min=1, gora_r_max=10)
    reference = load_base(tiny_bert_dir)
    (sum(reference(**b).loss for b in init_batches()) / len(init_batches())).backward()
    modules = dict(reference.named_modules())
    importance = {}
    for name in adapter.ranks:
        weight = modules[name].weight.detach().double().numpy()
        grad = modules[name].weight.grad.double().numpy()
        importance[name] = float(np.mean(np.abs(weight * grad)))
        assert importance[name] != pytest.approx(float(np.mean(np.abs(grad)))), "W must weigh the gradient"
    assert adapter.importance == pytest.approx(importance, rel=1e-4)

    sizes = sizes_of(adapter, reference)
    budget, total = 4 * sum(sizes.values()), sum(importance.values())
    expected = {name: min(max(round(budget * imp / total / sizes[name]), 1), 10) for name, imp in importance.items()}
    assert adapter.ranks == expected
    assert len(set(expected.values())) > 1, "a uniform allocation would not tell importances apart"


# -- (2) initialization -----------------------------------------------------------------
def test_init_is_minus_gamma_times_gradient_projected_on_a(tiny_bert_dir):
    adapter, base = prepared(tiny_bert_dir, gora_gamma=0.3)
    gradients = {name: g.clone() for name, g in adapter.gradients.items()}
    model = adapter.attach(base)
    checked = 0
    for name, layer in model.named_modules():
        if not (hasattr(layer, "lora_A") and "default" in getattr(layer, "lora_A", {})):
            continue
        name = name.removeprefix("base_model.model.")
        A = layer.lora_A["default"].weight.detach().double()
        B = layer.lora_B["default"].weight.detach().double()
        rank, d_in = A.shape
        s = layer.scaling["default"]
        assert s == pytest.approx(8 / math.sqrt(rank))  # GoRA always scales by α/√r_i
        gamma = 0.3 * math.sqrt(d_in / rank)
        assert adapter.step_sizes[name] == pytest.approx(gamma)
        projection = A.T @ torch.linalg.solve(A @ A.T, A)  # P_A = Aᵀ(AAᵀ)⁻¹A
        expected = -gamma * gradients[name].double() @ projection
        torch.testing.assert_close(s * B @ A, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
        # and that is what the PEFT layer adds to the frozen weight
        torch.testing.assert_close(layer.get_delta_weight("default").double(), expected,
                                   rtol=1e-5, atol=1e-6 * expected.abs().max().item())
        assert expected.abs().max() > 0
        checked += 1
    assert checked == len(gradients) == 6


def mean_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


def test_step_zero_loss_is_below_the_base_on_the_init_batches(tiny_bert_dir):
    """For small γ the loss falls by the first-order amount ⟨G, ΔW⟩ = -Σ γ_i ‖G_i P_A‖² < 0.

    The tiny random BERT has tiny attention gradients (‖G‖ ~ 1e-3), so the change is ~1e-8:
    measured in float64 to be far above rounding noise.
    """
    adapter, base = prepared(tiny_bert_dir, gora_gamma=0.05)
    gradients = {name: g.clone().double() for name, g in adapter.gradients.items()}
    model = adapter.attach(base).eval().double()
    predicted = sum((gradients[name] * layer.get_delta_weight("default").double()).sum().item()
                    for name, layer in lora_layers(model))
    before = mean_loss(load_base(tiny_bert_dir).double(), init_batches())
    after = mean_loss(model, init_batches())
    assert predicted < 0
    assert after < before
    assert after - before == pytest.approx(predicted, rel=1e-3)


# -- (4) prepare leaves the model as it found it ---------------------------------------------
def test_prepare_leaves_weights_flags_mode_and_grads_unchanged(tiny_bert_dir):
    base = load_base(tiny_bert_dir).train()
    base.bert.embeddings.requires_grad_(False)  # a mixed pattern, to be restored as is
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    state = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = GoRA(CONFIG, "classification")
    adapter.prepare(base, iter(init_batches()), batch(99))
    assert base.training
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert all(p.grad is None for p in base.parameters())
    for key, value in base.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(g.device.type == "cpu" and g.dtype == torch.float32 for g in adapter.gradients.values())


def test_mean_gradients_is_the_gradient_of_the_mean_loss(tiny_bert_dir):
    base = load_base(tiny_bert_dir)
    targets = GoRA(CONFIG, "classification").target_layers(base)
    grads = mean_gradients(base, targets, iter(init_batches(3)), 3)
    reference = load_base(tiny_bert_dir)
    (sum(reference(**b).loss for b in init_batches(3)) / 3).backward()
    modules = dict(reference.named_modules())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, modules[name].weight.grad, rtol=1e-4, atol=1e-7)


# -- (5) options ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"gora_gamma": 0.0}, {"gora_gamma": -1e-2}, {"gora_gamma": float("nan")}, {"gora_gamma": float("inf")},
    {"gora_gamma": "big"}, {"gora_batches": 0}, {"gora_r_min": 0}, {"gora_r_min": 8, "gora_r_max": 4},
    {"gora_temperature": 1.0},
])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValidationError):
        GoRAOptions.model_validate(bad)


def test_empty_default_bounds_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="gora_r_min"):
        GoRA({**CONFIG, "rank": 16, "gora_r_max": 4}, "classification")  # r_min = 8 > 4


def test_options_and_dimensions():
    options = GoRAOptions()
    assert (options.gora_gamma, options.gora_batches, options.gora_r_min, options.gora_r_max) == (5e-2, 64, None, None)
    adapter = GoRA(CONFIG, "classification")
    assert (adapter.r_min, adapter.r_max) == (2, 16)
    assert "scaling" not in GoRA.hyperparams and {"gora_gamma", "gora_batches"} <= GoRA.hyperparams
    assert adapter.loraplus_ratio() == 16.0
    assert all(GoRAOptions.model_fields[f].description for f in GoRAOptions.model_fields)


def test_attach_before_prepare_says_what_to_do(tiny_bert_dir):
    with pytest.raises(RuntimeError, match="prepare"):
        GoRA(CONFIG, "classification").attach(load_base(tiny_bert_dir))

