"""SoRA: the proximal operator, the threshold band, pruning, the live count and the export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from tiny_bert import ADAPTER_CONFIG, HIDDEN, N_LABELS, batch, export_and_reload, logits, train_steps
from test_loop import FakeSession, worker_config
from tiny_bert import attached as attach_tiny
from transformers import get_linear_schedule_with_warmup

from trainables import loop
from trainables.adapters import ADAPTERS
from trainables.adapters.sora import SoRA, SoRAOptions, soft_threshold

CONFIG = ADAPTER_CONFIG
HEAD_PARAMS = HIDDEN * N_LABELS + N_LABELS  # the classifier, saved with the adapter


def attached(base_dir: Path, total_steps: int = 10, **options) -> tuple[SoRA, torch.nn.Module]:
    return attach_tiny(SoRA, {**CONFIG, **options}, base_dir, total_steps)


def gate_values(adapter: SoRA, model) -> dict[str, torch.Tensor]:
    return {name: gate.weight.detach().clone() for name, _, gate in adapter.gates(model)}


def train(adapter: SoRA, model, steps: int, on_step=None) -> None:
    """The loop's steps; on_step(step, gates, gate grads) gets the gates as optimizer.step left them."""
    if on_step is None:
        return train_steps(adapter, model, steps)
    before = {}

    def capture(step):  # after_step moves the gates and clears their grads
        before[step] = (gate_values(adapter, model), {n: g.weight.grad.clone() for n, _, g in adapter.gates(model)})

    train_steps(adapter, model, steps, before_after_step=capture, on_step=lambda step: on_step(step, *before.pop(step)))


def test_registered():
    assert ADAPTERS["sora"] is SoRA
    assert {"sora_lambda", "sora_warmup", "sora_gate_lr", "sora_gate_init", "rank"} <= SoRA.hyperparams


def test_soft_threshold_is_exact():
    values = torch.tensor([3.0, -3.0, 1.5, -1.5, 0.75, -0.75, 0.0, 1.0, -1.0, 1e-3], dtype=torch.float64)
    threshold = 1.0
    expected = torch.tensor([2.0, -2.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(soft_threshold(values, threshold), expected)
    formula = [(1 if v > 0 else -1 if v < 0 else 0) * max(abs(v) - threshold, 0.0) for v in values.tolist()]
    assert soft_threshold(values, threshold).tolist() == formula
    # It is the proximal operator: argmin_u ½(u − v)² + t|u|, checked on a fine grid.
    grid = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    for v in values.tolist():
        objective = 0.5 * (grid - v) ** 2 + threshold * grid.abs()
        assert abs(grid[objective.argmin()].item() - soft_threshold(torch.tensor(v), threshold).item()) < 1e-4


def test_zero_gate_stays_zero_inside_the_band(tiny_bert_dir):
    """After the SGD step g − η·∇, a gate at 0 moves only if |η·∇| > η·λ, i.e. |∇| > λ."""
    adapter, model = attached(tiny_bert_dir, sora_lambda=1.0, sora_gate_lr=0.1)
    adapter.param_groups(model, 1e-2, 0.0)
    eta, lam = 0.1, 1.0
    for _, _, gate in adapter.gates(model):
        gate.weight.data = torch.tensor([0.0, 0.0, 0.0, 0.0])
        gate.weight.grad = torch.tensor([0.5 * lam, -0.99 * lam, 3 * lam, -2 * lam])
    adapter.after_step(model, 1, batch(1))
    for _, _, gate in adapter.gates(model):
        g = gate.weight.detach()
        assert g[0].item() == 0.0 and g[1].item() == 0.0, "inside the band: stays exactly 0"
        # outside: sign(−∇) · (η|∇| − ηλ)
        assert g[2].item() == pytest.approx(-eta * (3 * lam - lam), abs=1e-7)
        assert g[3].item() == pytest.approx(eta * (2 * lam - lam), abs=1e-7)
        assert gate.weight.grad is None, "the main optimizer never clears gate grads: after_step must"


def test_band_rule_holds_on_real_gradients(tiny_bert_dir):
    """Through training: a gate at 0 before a step is nonzero after it iff |∇g| > λ_t."""
    adapter, model = attached(tiny_bert_dir, sora_lambda=1e-5, sora_gate_lr=1.0)
    train(adapter, model, steps=3)  # B grows: a gate switched off now still has a gradient
    for _, _, gate in adapter.gates(model):
        gate.weight.data[:2] = 0.0
    seen = {"stayed": 0, "revived": 0}

    def check(step, gates_before, grads):
        after = gate_values(adapter, model)
        for name, before in gates_before.items():
            dead = before == 0
            outside = grads[name].abs() > adapter.sparsity_lambda(step)
            assert torch.equal((after[name] != 0)[dead], outside[dead]), name
            seen["stayed"] += int((dead & ~outside).sum())
            seen["revived"] += int((dead & outside).sum())

    train(adapter, model, steps=5, on_step=check)
    assert seen["stayed"] > 0 and seen["revived"] > 0, seen  # both sides of the band were exercised


def test_large_lambda_prunes_and_counts_live_ranks(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir, sora_lambda=1.0, sora_gate_lr=0.1, sora_gate_init="normal")
    full = adapter.adapter_params(model)
    train(adapter, model, steps=5)
    live = {name: int((g != 0).sum()) for name, g in gate_values(adapter, model).items()}
    assert 0 < sum(live.values()) < 4 * len(live), live  # some gates reached exactly 0, not all
    assert adapter.rank_allocation(model) == live
    per_rank = 2 * HIDDEN  # d_in + d_out of a BERT attention projection
    assert full == 4 * len(live) * per_rank + HEAD_PARAMS
    assert adapter.adapter_params(model) == sum(live.values()) * per_rank + HEAD_PARAMS


def test_export_equals_gated_model_with_pruned_ranks(tiny_bert_dir, tmp_path):
    adapter, model = attached(tiny_bert_dir, sora_lambda=1.0, sora_gate_lr=0.1, sora_gate_init="normal")
    train(adapter, model, steps=5)
    ranks = adapter.rank_allocation(model)
    assert min(ranks.values()) < 4, "nothing pruned: the export's drop path is not exercised"
    expected = logits(model, batch(9))
    reloaded = export_and_reload(adapter, model, tiny_bert_dir, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, batch(9)), expected, atol=1e-5, rtol=1e-4)
    shipped = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    assert shipped == {name: r for name, r in ranks.items() if r > 0}
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == adapter.adapter_params(model)


def test_all_ranks_pruned_exports_the_base_plus_head(tiny_bert_dir, tmp_path):
    adapter, model = attached(tiny_bert_dir, sora_lambda=100.0, sora_gate_lr=0.1)
    train(adapter, model, steps=1)  # threshold 10 > every gate
    assert sum(adapter.rank_allocation(model).values()) == 0
    expected = logits(model, batch(9))
    reloaded = export_and_reload(adapter, model, tiny_bert_dir, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, batch(9)), expected, atol=1e-5, rtol=1e-4)


def test_gates_are_not_in_the_main_optimizer(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    groups = adapter.param_groups(model, 1e-3, 0.01)
    gate_ids = {id(p) for _, _, gate in adapter.gates(model) for p in gate.parameters()}
    grouped = {id(p) for group in groups for p in group["params"]}
    assert gate_ids and not gate_ids & grouped
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped | gate_ids == trainable, "A, B and the head are all in the main optimizer"


def test_the_loop_clips_the_rest_but_steps_the_gates_on_their_raw_gradient(tiny_model_dir, tmp_path, monkeypatch):
    """The paper's update is g ← prox(g − η ∇g) on the gradient itself, so the loop clips only what
    its AdamW steps (docs/variants.md, "SoRA"). Run through the real loop with max_grad_norm = 1e-4,
    which binds at every step: at `after_step` the other gradients have norm 1e-4 while every gate's
    gradient is, bit for bit, the one backward produced (read by a hook on the gate). Clipped with
    the rest, the gate step would shrink by the clip factor c and the band would become |∇g| > λ/c."""
    raw: dict[str, torch.Tensor] = {}
    seen: list[tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = []
    attach, after_step = SoRA.attach, SoRA.after_step

    def attach_and_watch(self, model):
        model = attach(self, model)
        for name, _, gate in self.gates(model):
            gate.weight.register_hook(lambda grad, name=name: raw.__setitem__(name, grad.detach().clone()))
        return model

    def look_then_step(self, model, step, batch):
        gates = {name: gate.weight for name, _, gate in self.gates(model)}
        others = [p.grad for p in model.parameters()
                  if p.grad is not None and all(p is not g for g in gates.values())]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in others])))
        seen.append((norm, {name: (g.grad.clone(), raw[name]) for name, g in gates.items()}))
        after_step(self, model, step, batch)

    monkeypatch.setattr(SoRA, "attach", attach_and_watch)
    monkeypatch.setattr(SoRA, "after_step", look_then_step)
    config = worker_config(tiny_model_dir, tmp_path, variant="sora")
    config["train"]["max_grad_norm"] = 1e-4
    loop.run_loop(config, FakeSession(tmp_path / "session"))
    assert len(seen) == 12  # 96 examples / batch 8
    for norm, gates in seen:
        assert norm == pytest.approx(1e-4, rel=1e-3), "the clip binds on A, B and the head"
        for name, (grad, unclipped) in gates.items():
            assert torch.equal(grad, unclipped), name
    assert any(unclipped.abs().max() > 1e-6 for _, gates in seen for _, unclipped in gates.values()), \
        "B (so ∇g) is 0 until the first step with a nonzero lr: later gate gradients must not be"


def test_gate_lr_follows_the_main_schedule(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir, sora_gate_lr=0.5)
    lr = 1e-2
    optimizer = torch.optim.AdamW(adapter.param_groups(model, lr, 0.0))
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 10)
    rates = []
    for _ in range(10):
        optimizer.step()  # the point where the loop calls after_step
        rates.append(adapter.gate_lr())
        assert adapter.gate_lr() == pytest.approx(0.5 * scheduler.get_last_lr()[0] / lr)
        scheduler.step()
    assert rates[0] == 0.0 and rates[2] == pytest.approx(0.5) and rates[-1] < rates[3]


def test_gate_lr_defaults_to_the_trial_lr(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    adapter.param_groups(model, 3e-3, 0.0)
    assert adapter.gate_lr() == pytest.approx(3e-3)


def test_after_step_needs_param_groups(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    with pytest.raises(RuntimeError, match="param_groups"):
        adapter.after_step(model, 1, batch(1))


def test_lambda_warmup_ramps_linearly(tiny_bert_dir):
    adapter = SoRA({**CONFIG, "sora_lambda": 0.2, "sora_warmup": 0.5}, total_steps=10)
    assert [adapter.sparsity_lambda(s) for s in (0, 1, 5, 10)] == pytest.approx([0.0, 0.04, 0.2, 0.2])
    assert SoRA({**CONFIG, "sora_lambda": 0.2}, total_steps=10).sparsity_lambda(1) == 0.2


def test_gate_init(tiny_bert_dir):
    ones, model = attached(tiny_bert_dir)
    assert all(torch.equal(g, torch.ones(4)) for g in gate_values(ones, model).values())
    normal, model = attached(tiny_bert_dir, sora_gate_init="normal")
    assert not any(torch.equal(g, torch.ones(4)) for g in gate_values(normal, model).values())


@pytest.mark.parametrize("bad", [{"sora_lambda": 0.0}, {"sora_warmup": 1.0}, {"sora_gate_lr": -1.0},
                                 {"sora_gate_init": "zeros"}])
def test_options_reject_bad_values(bad):
    with pytest.raises(ValidationError):
        SoRAOptions.from_config(bad)
