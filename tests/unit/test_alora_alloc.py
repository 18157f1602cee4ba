"""ALoRA (alora_alloc): the checks docs/variants.md lists for it, on a tiny BERT built from a config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from tiny_bert import ADAPTER_CONFIG, batch, export_and_reload, train_steps
from tiny_bert import attached as attach_tiny
from tiny_bert import logits as logits_on

from trainables.adapters import ADAPTERS
from trainables.adapters.alora_alloc import ALoRA, ALoRAOptions

CONFIG = ADAPTER_CONFIG
MODULES = 6  # 2 layers × query, key, value
BUDGET = CONFIG["rank"] * MODULES
STEPS = 12  # rounds after steps 3, 6 and 9 with the default K1 = 0.25 and N_A = 3


def attached(base_dir: Path, total_steps: int = STEPS, **options) -> tuple[ALoRA, torch.nn.Module]:
    return attach_tiny(ALoRA, {**CONFIG, "alora_ranks_per_round": 2, **options}, base_dir, total_steps,
                       prepare_on=iter(()))


def train(adapter: ALoRA, model, steps: int = STEPS, after_each=None) -> None:
    train_steps(adapter, model, steps, weight_decay=0.01, on_step=after_each)


def logits(model, seed: int = 9) -> torch.Tensor:
    return logits_on(model, batch(seed))


def test_registered_under_its_own_name():
    assert ADAPTERS["alora_alloc"] is ALoRA
    assert "alora" not in ADAPTERS  # PEFT's aLoRA is Activated LoRA, another method
    assert ALoRA.hyperparams >= {"rank", "alora_rounds", "alora_ranks_per_round", "alora_spare", "alora_first_round"}


def test_options_bounds_and_schedule():
    for bad in ({"alora_rounds": -1}, {"alora_ranks_per_round": 0}, {"alora_spare": -1}, {"alora_first_round": 1.0}):
        with pytest.raises(ValidationError):
            ALoRAOptions.model_validate(bad)
    assert ALoRA(CONFIG, total_steps=100).round_steps() == [25, 50, 75]
    assert ALoRA(CONFIG, total_steps=3).round_steps() == [1, 2]  # a round at the last step is pointless
    assert ALoRA({**CONFIG, "alora_rounds": 0}, total_steps=100).round_steps() == []
    assert ALoRA({**CONFIG, "alora_first_round": 0.5, "alora_rounds": 2}, total_steps=100).round_steps() == [50, 75]
    # spare: min(rank, N_A · n_A) unless set
    assert ALoRA({**CONFIG, "rank": 8}).spare() == 8
    assert ALoRA({**CONFIG, "rank": 8, "alora_rounds": 1, "alora_ranks_per_round": 2}).spare() == 2
    assert ALoRA({**CONFIG, "alora_spare": 7}).slots() == 11


def test_budget_preserved_through_every_round(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    totals = []
    train(adapter, model, after_each=lambda step: totals.append(sum(adapter.rank_allocation(model).values())))
    assert totals == [BUDGET] * STEPS
    assert [r.step for r in adapter.history] == [3, 6, 9]
    for done in adapter.history:
        assert len(done.closed) == len(done.opened) == 2
        losers = {name for name, _, _ in done.closed}
        assert not losers & {name for name, _ in done.opened}, "slots go to modules that lost none"


def test_budget_kept_when_spare_slots_run_out(tiny_bert_dir):
    """No spare slot anywhere: nothing can be opened, so nothing is switched off."""
    adapter, model = attached(tiny_bert_dir, alora_spare=0)
    train(adapter, model)
    assert all(not r.closed and not r.opened for r in adapter.history)
    assert adapter.rank_allocation(model) == {name: CONFIG["rank"] for name in adapter.rank_allocation(model)}


def test_opening_a_slot_leaves_the_output_unchanged(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    train(adapter, model, steps=4)
    name, layer, gate = next(adapter.gates(model))
    A = layer.lora_A["default"].weight
    before, A_before = logits(model), A.detach().clone()
    slot = adapter.open_slot(layer, gate)
    assert slot >= CONFIG["rank"] and gate.mask[slot] == 1  # a spare slot, now live
    assert not torch.equal(A[slot], A_before[slot]), "the A row is drawn again"
    assert torch.count_nonzero(layer.lora_B["default"].weight[:, slot]) == 0
    torch.testing.assert_close(logits(model), before, atol=1e-7, rtol=0)


def test_a_round_changes_the_output_only_by_the_ranks_it_switches_off(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    train(adapter, model, steps=4)
    masks = {name: gate.mask.clone() for name, _, gate in adapter.gates(model)}
    done = adapter.reallocate(model, step=4)
    after = logits(model)
    for name, _, gate in adapter.gates(model):  # the closed ranks only, without the opened slots
        gate.mask.copy_(masks[name])
        for closed_name, k, _ in done.closed:
            if closed_name == name:
                gate.mask[k] = 0.0
    torch.testing.assert_close(after, logits(model), atol=1e-7, rtol=0)


def test_open_prefers_never_live_slots_then_the_longest_closed(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir, alora_spare=1)
    _, layer, gate = next(adapter.gates(model))
    gate.mask[0], gate.closed_at[0] = 0.0, 5
    gate.mask[1], gate.closed_at[1] = 0.0, 2
    assert adapter.open_slot(layer, gate) == 4  # the spare slot, never live: zero Adam moments
    assert adapter.open_slot(layer, gate) == 1  # then the one closed longest ago
    assert adapter.open_slot(layer, gate) == 0


def random_B(adapter: ALoRA, model) -> None:
    """A B that matters (a few steps on a random tiny BERT barely move the loss), and a head that
    lets it show (the random head, std 0.02, keeps every logit near 0 whatever the ranks do)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer, _ in adapter.gates(model):
            B = layer.lora_B["default"].weight
            B.copy_(torch.randn(B.shape, generator=g))
        head = model.base_model.model.classifier.modules_to_save["default"].weight
        head.copy_(torch.randn(head.shape, generator=g))


def test_importance_of_a_rank_with_zero_B_column_is_zero(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    random_B(adapter, model)
    with torch.no_grad():
        name, layer, _ = next(adapter.gates(model))
        layer.lora_B["default"].weight[:, 1] = 0.0
    importance = adapter.importance(model)
    assert abs(importance[name][1]) < 1e-6
    others = [abs(v) for n, scores in importance.items() for k, v in scores.items() if (n, k) != (name, 1)]
    assert max(others) > 1e-3, "the other ranks matter, so the zero is meaningful"


def test_batched_scores_equal_one_forward_per_variant(tiny_bert_dir):
    adapter, model = attached(tiny_bert_dir)
    train(adapter, model, steps=4)
    model.train()  # scoring switches to eval and back
    batched = adapter.importance(model)
    adapter.score_rows = 1  # one variant per forward
    single = adapter.importance(model)
    assert model.training
    for name in batched:
        for k in batched[name]:
            assert batched[name][k] == pytest.approx(single[name][k], abs=1e-5)
    # S(M) is minus the model's own loss on the validation batch
    s_full = adapter.scores(model, [(None, None)])[0]
    model.eval()
    with torch.no_grad():
        assert float(s_full) == pytest.approx(-float(model(**batch(99)).loss), abs=1e-5)


def val_loss(model, gate=None, mask: torch.Tensor | None = None) -> float:
    """The model's own loss (transformers' head, `labels=`) on the validation batch, in eval mode,
    with one module's mask replaced if given (and put back)."""
    saved = None if gate is None else gate.mask.clone()
    if gate is not None:
        gate.mask.copy_(mask)
    try:
        with torch.no_grad():
            return float(model.eval()(**batch(99)).loss)
    finally:
        if gate is not None:
            gate.mask.copy_(saved)


def test_importance_is_what_removing_a_rank_costs_in_validation_loss(tiny_bert_dir):
    """IS(k) recomputed here with one plain forward per mask and the model's own loss:
    IS(k) = [L(M∖k) − L(M)] + [L(m ← ∅) − L(m ← {k})], i.e. S = −loss. A rank the model needs
    (the loss rises without it) scores high, a rank that hurts (the loss falls without it) scores
    below zero; a round (n_A = 2) switches off the two lowest of these scores."""
    adapter, model = attached(tiny_bert_dir)
    random_B(adapter, model)
    full = val_loss(model)
    expected = {}
    for name, _, gate in adapter.gates(model):
        empty, expected[name] = val_loss(model, gate, torch.zeros_like(gate.mask)), {}
        for k in gate.live_slots():
            without, only = gate.mask.clone(), torch.zeros_like(gate.mask)
            without[k], only[k] = 0.0, 1.0
            expected[name][k] = ((val_loss(model, gate, without) - full)
                                 + (empty - val_loss(model, gate, only)))
    importance = adapter.importance(model)
    assert importance.keys() == expected.keys()
    for name in expected:
        assert importance[name] == pytest.approx(expected[name], abs=1e-5), name
    scores = sorted((v, (n, k)) for n, ranks in expected.items() for k, v in ranks.items())
    assert scores[0][0] < -1e-2 and scores[-1][0] > 1e-2, "ranks that hurt and ranks that help: both signs"

    done = adapter.reallocate(model, step=4)
    assert [(n, k) for n, k, _ in done.closed] == [key for _, key in scores[:2]]


def test_a_round_closes_the_lowest_scores_and_opens_slots_in_the_best_modules(tiny_bert_dir):
    """With the scores fixed by hand: the n_A = 5 lowest IS (signed: −0.5 before 0.001, not by
    size) are switched off, and five slots are opened, one at a time, in the modules that lost
    none, highest mean IS first, round-robin (the best module gets the fifth)."""
    adapter, model = attached(tiny_bert_dir, alora_ranks_per_round=5)
    names = [name for name, _, _ in adapter.gates(model)]
    means = [0.3, 0.6, 0.0, 0.5, 0.0, 0.9]  # module means, lowest scores aside: order 5, 1, 3, 0
    scores = {name: {k: means[i] + 0.01 * k for k in range(4)} for i, name in enumerate(names)}
    lowest = [(names[2], 1, -0.5), (names[4], 3, -0.2), (names[2], 3, -0.01), (names[4], 0, 0.0),
              (names[2], 0, 0.001)]
    for name, k, score in lowest:
        scores[name][k] = score
    adapter.importance = lambda model: scores
    done = adapter.reallocate(model, step=4)
    assert done.closed == lowest
    assert done.opened == [(names[5], 4), (names[1], 4), (names[3], 4), (names[0], 4), (names[5], 5)]
    live = {name: gate.live_slots() for name, _, gate in adapter.gates(model)}
    assert live == {names[0]: [0, 1, 2, 3, 4], names[1]: [0, 1, 2, 3, 4], names[2]: [2],
                    names[3]: [0, 1, 2, 3, 4], names[4]: [1, 2], names[5]: [0, 1, 2, 3, 4, 5]}
    assert sum(map(len, live.values())) == BUDGET


def test_ranks_move_and_counts_follow_the_live_ranks(tiny_bert_dir, tmp_path):
    adapter, model = attached(tiny_bert_dir)
    train(adapter, model)
    allocation = adapter.rank_allocation(model)
    assert sum(allocation.values()) == BUDGET
    assert len(set(allocation.values())) > 1, f"allocation still uniform: {allocation}"
    live = {name: int(gate.mask.sum()) for name, _, gate in adapter.gates(model)}
    assert allocation == live
    head = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save.default" in n)
    lora = sum(live[name] * (layer.in_features + layer.out_features) for name, layer, _ in adapter.gates(model))
    assert adapter.adapter_params(model) == lora + head
    adapter.export(model, tmp_path / "adapter")
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in exported.values()) == adapter.adapter_params(model)


def test_export_equals_the_gated_model(tiny_bert_dir, tmp_path):
    adapter, model = attached(tiny_bert_dir)
    train(adapter, model)  # steps 10-12 train the slots opened at step 9
    opened = adapter.history[-1].opened
    layers = {name: layer for name, layer, _ in adapter.gates(model)}
    assert any(torch.count_nonzero(layers[n].lora_B["default"].weight[:, k]) for n, k in opened)
    expected = logits(model)
    reloaded = export_and_reload(adapter, model, tiny_bert_dir, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=1e-4)
    ranks = {name.removeprefix("base_model.model."): int(module.r["default"])
             for name, module in reloaded.named_modules() if hasattr(module, "r") and "default" in module.r}
    assert ranks == {n: r for n, r in adapter.rank_allocation(model).items() if r > 0}


def test_same_seed_same_decisions(tiny_bert_dir):
    """What keeps DDP workers in step: same weights and val batch -> same rounds, same new A rows."""
    runs = []
    for _ in range(2):
        adapter, model = attached(tiny_bert_dir)
        train(adapter, model)
        runs.append(([(r.closed, r.opened) for r in adapter.history],
                     [layer.lora_A["default"].weight.detach().clone() for _, layer, _ in adapter.gates(model)]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
