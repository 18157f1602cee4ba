"""AdaLoRA: the real step count reaches PEFT, the budget schedule prunes to adalora_target_r,
the orthogonality penalty is in the training loss (once, for both task types), and the
export is the trained model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_bert import ADAPTER_CONFIG, export_and_reload, logits, save_tiny_bert, train_steps
from tiny_bert import attached as attach_tiny

from trainables.adapters import ADAPTERS
from trainables.adapters.adalora import AdaLoRA, AdaLoRAOptions
from trainables.instructions import IGNORE_INDEX
from trainables.models import tiny_config
from trainables.tasks import CausalLMTask

CONFIG = {**ADAPTER_CONFIG, "rank": 6}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The tiny BERT classifier without dropout, so train and eval forwards agree."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-adalora"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 64, (8, 12), generator=g),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
            "labels": torch.randint(0, 3, (8,), generator=g)}


def attached(base_dir: Path, total_steps: int, **overrides):
    return attach_tiny(AdaLoRA, {**CONFIG, **overrides}, base_dir, total_steps)


def train(adapter, model, steps: int, on_step=None) -> None:
    train_steps(adapter, model, steps, make_batch=batch, on_step=on_step)


def live_total(adapter, model) -> int:
    return sum(adapter.rank_allocation(model).values())


def cubic_budget(step: int, total: int, adalora_tinit: int, adalora_tfinal: int, init_bgt: int, target_bgt: int) -> int:
    """The paper's schedule, written out independently of PEFT."""
    if step <= adalora_tinit:
        return init_bgt
    if step >= total - adalora_tfinal:
        return target_bgt
    return int((init_bgt - target_bgt) * (1 - (step - adalora_tinit) / (total - adalora_tfinal - adalora_tinit)) ** 3 + target_bgt)


def test_registered_with_its_options():
    assert ADAPTERS["adalora"] is AdaLoRA
    assert {"adalora_init_r", "adalora_target_r", "adalora_tinit", "adalora_tfinal", "adalora_delta_t", "adalora_orth_weight"} <= AdaLoRA.hyperparams
    assert {"rank", "alpha", "scaling", "loraplus_ratio"} <= AdaLoRA.hyperparams


@pytest.mark.parametrize("total,adalora_tinit,adalora_tfinal,expected", [
    (200, 0.1, 0.2, (20, 40)), (1000, 0.05, 0.3, (50, 300)), (3, 0.1, 0.2, (0, 0)),
    (1, 0.1, 0.2, (0, 0)), (2, 0.49, 0.49, (0, 0)), (7, 0.45, 0.45, (3, 3)),
])
def test_total_step_is_the_real_step_count_and_fractions_become_steps(total, adalora_tinit, adalora_tfinal, expected, base_dir):
    adapter, model = attached(base_dir, total, adalora_tinit=adalora_tinit, adalora_tfinal=adalora_tfinal, adalora_delta_t=3)
    config = model.peft_config["default"]
    assert config.total_step == total
    assert (config.tinit, config.tfinal) == expected
    assert config.deltaT == 3
    # PEFT accepted the schedule, and the final mask step is inside the trial
    assert config.tinit < total - config.tfinal and 1 <= total - config.tfinal <= total


def test_update_and_allocate_runs_after_every_optimizer_step(base_dir, monkeypatch):
    adapter, model = attached(base_dir, 5)
    calls = []
    original = model.base_model.update_and_allocate

    def spy(step):
        # after optimizer.step and before zero_grad: the gradients are still there
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
        calls.append(step)
        return original(step)

    monkeypatch.setattr(model.base_model, "update_and_allocate", spy)
    train(adapter, model, 5)
    assert calls == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def pruned(base_dir):
    """adalora_init_r 6 -> adalora_target_r 2 over 20 steps (adalora_tinit 2, adalora_tfinal 4), one allocation per step."""
    total = 20
    adapter, model = attached(base_dir, total, adalora_init_r=6, adalora_target_r=2, adalora_tinit=0.1, adalora_tfinal=0.2, adalora_delta_t=1)
    n_modules = len(adapter.rank_allocation(model))
    history = {}
    train(adapter, model, total, on_step=lambda step: history.update(
        {step: (live_total(adapter, model), adapter.adapter_params(model))}))
    return adapter, model, n_modules, history


def test_budget_follows_the_cubic_schedule_down_to_target_r(pruned):
    adapter, model, n_modules, history = pruned
    config = model.peft_config["default"]
    expected = {step: cubic_budget(step, 20, config.tinit, config.tfinal, 6 * n_modules, 2 * n_modules)
                for step in history}
    assert {step: live for step, (live, _) in history.items()} == expected
    assert history[1][0] == 6 * n_modules and history[20][0] == 2 * n_modules


def test_adapter_params_drop_with_the_live_ranks(pruned, base_dir):
    adapter, model, n_modules, history = pruned
    params = [history[step][1] for step in sorted(history)]
    assert params == sorted(params, reverse=True) and params[-1] < params[0]
    # each live rank costs d_in + d_out (one row of A, one column of B); the rest is the head
    per_rank = {name: layer.in_features + layer.out_features for name, layer in
                ((n.removeprefix("base_model.model."), m) for n, m in model.named_modules() if hasattr(m, "lora_E"))}
    head = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save" in n)
    allocation = adapter.rank_allocation(model)
    assert adapter.adapter_params(model) == head + sum(r * per_rank[name] for name, r in allocation.items())


def test_rank_allocation_is_the_final_mask(pruned):
    adapter, model, n_modules, history = pruned
    allocation = adapter.rank_allocation(model)
    mask = model.peft_config["default"].rank_pattern  # PEFT's kept triplets, per lora_E tensor
    # PEFT drops the adapter name from the keys once the state dict has been taken
    from_mask = {key.removeprefix("base_model.model.").removesuffix(".default").removesuffix(".lora_E"): sum(kept)
                 for key, kept in mask.items()}
    assert allocation == from_mask
    assert not any(name.startswith("base_model") for name in allocation)
    assert sum(allocation.values()) == 2 * n_modules
    assert len(set(allocation.values())) > 1, f"the budget was spread uniformly: {allocation}"


def test_export_after_pruning_is_the_trained_model(pruned, base_dir, tmp_path):
    adapter, model, n_modules, history = pruned
    expected = logits(model, batch(99))
    reloaded = export_and_reload(adapter, model, base_dir, tmp_path / "adapter")
    actual = logits(reloaded, batch(99))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in exported.values()) == adapter.adapter_params(model)
    shipped = {name: rank for name, rank in adapter.rank_allocation(model).items() if rank > 0}
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["rank_pattern"] == shipped


def orth_penalty(model) -> torch.Tensor:
    """PEFT's penalty written out: mean over P, Q of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F."""
    norms = []
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            norms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov))))
    return torch.stack(norms).mean()


def test_orthogonality_penalty_is_in_the_training_loss_only(base_dir):
    adapter, model = attached(base_dir, 10, adalora_orth_weight=0.3)
    train(adapter, model, 2)  # move off the init so the penalty is not just √r
    data = batch(7)
    model.train()
    out = model(**data)
    task = torch.nn.functional.cross_entropy(out.logits, data["labels"])
    penalty = orth_penalty(model)
    assert penalty > 1.0  # A, B ~ N(0, 0.02²) are far from orthonormal
    torch.testing.assert_close(out.loss, task + 0.3 * penalty)
    out.loss.backward()  # the penalty trains A and B even while Λ = 0 gives them no task gradient
    model.eval()
    out = model(**data)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, data["labels"]))
    model.train()  # and back on
    torch.testing.assert_close(model(**data).loss, task + 0.3 * penalty)


def test_classification_counts_the_penalty_once(base_dir):
    """PEFT adds it through `labels`; extra_loss adds nothing on top."""
    adapter, model = attached(base_dir, 10, adalora_orth_weight=0.3)
    train(adapter, model, 2)
    data = batch(7)
    model.train()
    out = model(**data)
    assert adapter.extra_loss(model, 3) is None
    task = torch.nn.functional.cross_entropy(out.logits, data["labels"])
    torch.testing.assert_close(out.loss, task + 0.3 * orth_penalty(model))


def causal_attached(total_steps: int, **overrides):
    """AdaLoRA on a tiny LLaMA causal LM (vocab 128, seed 0), attached as the loop does."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config("llama"))
    torch.manual_seed(1)
    adapter = AdaLoRA({**CONFIG, **overrides}, "causal_lm", total_steps=total_steps)
    return adapter, adapter.attach(base)


def causal_batch(seed: int) -> dict[str, torch.Tensor]:
    """Eight records of twelve tokens; the first five are the prompt, which has no loss."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (8, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def causal_training_loss(adapter, model, task: CausalLMTask, step: int) -> torch.Tensor:
    """What the loop trains on: the task's loss (no `labels` reach the model) plus extra_loss."""
    loss = task.loss(model, causal_batch(step))
    extra = adapter.extra_loss(model, step)
    return loss if extra is None else loss + extra


def test_causal_lm_training_loss_has_the_penalty_peft_adds_with_labels():
    adapter, model = causal_attached(10, adalora_orth_weight=0.3)
    task = CausalLMTask({"precision": "fp32"}, torch.device("cpu"), seed=0)
    optimizer = torch.optim.AdamW(adapter.param_groups(model, 1e-2, 0.0))
    model.train()
    for step in (1, 2):  # the loop's order, to move off the init so the penalty is not just √r
        causal_training_loss(adapter, model, task, step).backward()
        optimizer.step()
        adapter.after_step(model, step, causal_batch(step))
        optimizer.zero_grad()
    data = causal_batch(7)
    total = causal_training_loss(adapter, model, task, 7)
    task_loss = task.loss(model, data)
    penalty = orth_penalty(model)
    assert penalty > 1.0
    torch.testing.assert_close(total, task_loss + 0.3 * penalty)
    # PEFT's own number: its loss with labels, minus the plain next-token cross-entropy
    out = model(**data)
    shifted = data["labels"][:, 1:].reshape(-1)
    plain = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.size(-1)), shifted)
    torch.testing.assert_close(adapter.extra_loss(model, 7), out.loss - plain)
    torch.testing.assert_close(total, out.loss)
    total.backward()  # the penalty trains A and B even while Λ = 0 gives them no task gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n)


def test_causal_lm_penalty_is_absent_in_eval_mode():
    adapter, model = causal_attached(10, adalora_orth_weight=0.3)
    task = CausalLMTask({"precision": "fp32"}, torch.device("cpu"), seed=0)
    model.eval()
    assert adapter.extra_loss(model, 1) is None
    torch.testing.assert_close(causal_training_loss(adapter, model, task, 1), task.loss(model, causal_batch(1)))
    torch.testing.assert_close(model(**causal_batch(1)).loss, task.loss(model, causal_batch(1)))  # nor from PEFT
    model.train()  # and back on
    assert adapter.extra_loss(model, 1) is not None
    assert AdaLoRA({**CONFIG, "adalora_orth_weight": 0.0}, "causal_lm", total_steps=10).extra_loss(model, 1) is None


def test_penalty_gives_a_and_b_gradients_at_the_first_step(base_dir):
    adapter, model = attached(base_dir, 10)
    model.train()
    model(**batch(1)).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_scaling_rule_uses_init_r(base_dir):
    for scaling, expected in (("lora", 16 / 16), ("rora", 16 / 4), (0.75, 16 / 16 ** 0.75)):
        adapter, model = attached(base_dir, 10, rank=16, alpha=16, scaling=scaling)
        layer = next(m for m in model.modules() if hasattr(m, "lora_E"))
        assert float(layer.scaling["default"] / layer.ranknum["default"]) == pytest.approx(expected)


def test_default_init_and_target_ranks():
    adapter = AdaLoRA({**CONFIG, "rank": 12}, "classification", total_steps=10)
    assert (adapter.init_r, adapter.target_r) == (12, 8)  # the paper's b_0 = 1.5 b_T
    adapter = AdaLoRA({**CONFIG, "rank": 12, "adalora_init_r": 3}, "classification", total_steps=10)
    assert (adapter.init_r, adapter.target_r) == (3, 2)
    assert AdaLoRA({**CONFIG, "rank": 1}, "classification").target_r == 1


def test_target_r_above_init_r_is_a_clear_error():
    with pytest.raises(ValueError, match=r"adalora_target_r \(8\) must be at most adalora_init_r \(4\)"):
        AdaLoRA({**CONFIG, "rank": 4, "adalora_target_r": 8}, "classification", total_steps=10)
    with pytest.raises(ValueError, match=r"adalora_target_r \(5\) must be at most adalora_init_r \(3\)"):
        AdaLoRA({**CONFIG, "rank": 16, "adalora_init_r": 3, "adalora_target_r": 5}, "classification", total_steps=10)


def test_schedule_without_a_pruning_phase_is_a_clear_error():
    with pytest.raises(ValueError, match="adalora_tinit \\+ adalora_tfinal must be < 1"):
        AdaLoRA({**CONFIG, "adalora_tinit": 0.5, "adalora_tfinal": 0.5}, "classification", total_steps=10)


@pytest.mark.parametrize("field,value", [("adalora_target_r", 0), ("adalora_tinit", 1.0), ("adalora_tfinal", -0.1), ("adalora_delta_t", 0),
                                         ("adalora_orth_weight", -1.0), ("adalora_sensitivity_beta", 1.0)])
def test_option_bounds(field, value):
    with pytest.raises(ValueError):
        AdaLoRAOptions.model_validate({field: value})


def test_equal_ranks_train_without_pruning(base_dir):
    adapter, model = attached(base_dir, 4, rank=4, adalora_target_r=4)
    train(adapter, model, 4)
    assert set(adapter.rank_allocation(model).values()) == {4}
