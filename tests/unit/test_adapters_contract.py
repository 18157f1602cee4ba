"""The contract every registered adapter variant must meet (one suite, all variants)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_bert import ADAPTER_CONFIG, batch, export_and_reload, load_base, logits, train_steps
from tiny_bert import attached as attach_tiny

from transformers import get_linear_schedule_with_warmup

from trainables.adapters import ADAPTERS
from trainables.adapters.base import peft_scaling_kwargs, scale
from trainables.checkpoint import (
    read_training_state,
    restore_model,
    restore_training,
    save_training_state,
    trainable_state,
)

TRAIN_STEPS = 3


def batches(start: int = 100):
    """The endless training stream `prepare` receives in the loop."""
    seed = start
    while True:
        yield batch(seed)
        seed += 1


def attached(name: str, base_dir: Path, total_steps: int = TRAIN_STEPS, **overrides):
    """A variant attached as the loop does it: built, prepared on batches, attached."""
    return attach_tiny(ADAPTERS[name], {**ADAPTER_CONFIG, **overrides}, base_dir, total_steps, prepare_on=batches())


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_builds_and_forwards(name, tiny_bert_dir):
    adapter, model = attached(name, tiny_bert_dir)
    out = model(**batch())
    assert out.logits.shape == (6, 3)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_base_weights_frozen(name, tiny_bert_dir):
    adapter, model = attached(name, tiny_bert_dir)
    base = load_base(tiny_bert_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "the adapter trains nothing"
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(adapter, model, TRAIN_STEPS)
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"{n} changed but is frozen"
    # attaching never edits the base weights themselves
    base_state = base.state_dict()
    for n, p in model.base_model.model.state_dict().items():
        key = n.replace(".base_layer", "")
        if key in base_state and "modules_to_save" not in n and "original_module" not in n:
            assert torch.equal(p, base_state[key]), key


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_params_match_export(name, tiny_bert_dir, tmp_path):
    adapter, model = attached(name, tiny_bert_dir)
    adapter.export(model, tmp_path / "adapter")
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter.adapter_params(model) == sum(t.numel() for t in exported.values())
    assert adapter.adapter_params(model) > 0


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_export_round_trip_with_plain_peft(name, tiny_bert_dir, tmp_path):
    adapter, model = attached(name, tiny_bert_dir, scaling=0.75) if "scaling" in ADAPTERS[name].hyperparams \
        else attached(name, tiny_bert_dir)
    train_steps(adapter, model, TRAIN_STEPS)
    expected = logits(model, batch(9))
    reloaded = export_and_reload(adapter, model, tiny_bert_dir, tmp_path / "adapter")
    actual = logits(reloaded, batch(9))
    base_logits = load_base(tiny_bert_dir)(**batch(9)).logits
    assert not torch.allclose(expected, base_logits, atol=1e-4), "training changed nothing"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scaling,p", [("lora", 1.0), ("rora", 0.5), ("rslora", 0.5), (0.75, 0.75), (0.0, 0.0)])
@pytest.mark.parametrize("rank", [4, 16, 64])
def test_peft_scaling_equals_alpha_over_r_to_the_p(scaling, p, rank, tiny_bert_dir):
    adapter, model = attached("lora", tiny_bert_dir, rank=rank, alpha=16, scaling=scaling)
    layer = next(m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == pytest.approx(16 / rank ** p)
    assert scale(16, rank, scaling) == pytest.approx(16 / rank ** p)


def test_rora_variant_uses_sqrt_rank(tiny_bert_dir):
    adapter, model = attached("rora", tiny_bert_dir, rank=16, alpha=16)
    layer = next(m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == pytest.approx(16 / math.sqrt(16))


@pytest.mark.parametrize("name,ratio,expected", [("lora", None, 1.0), ("lora", 4.0, 4.0), ("loraplus", None, 16.0)])
def test_loraplus_groups(name, ratio, expected, tiny_bert_dir):
    adapter, model = attached(name, tiny_bert_dir, loraplus_ratio=ratio)
    groups = adapter.param_groups(model, 1e-3, 0.01)
    b_ids = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & b_ids:
            assert ids <= b_ids, "only B matrices get the LoRA+ rate"
            assert group["lr"] == pytest.approx(1e-3 * expected)
        else:
            assert group["lr"] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def adapter_output_variance(rank: int, scaling: str, seed: int, d: int = 256) -> float:
    """Variance of s·B·A·x on fresh inputs after one Adam step from B = 0."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(d, d, bias=False))
    model = get_peft_model(net, LoraConfig(r=rank, target_modules=["0"], **peft_scaling_kwargs(8.0, rank, scaling)))
    params = [p for p in model.parameters() if p.requires_grad]
    x, target = torch.randn(32, d), torch.randn(32, d)
    optimizer = torch.optim.Adam(params, lr=1e-3)
    ((model(x) - target) ** 2).mean().backward()
    optimizer.step()
    fresh = torch.randn(256, d)
    with torch.no_grad():
        delta = model(fresh) - net[0].base_layer(fresh) if hasattr(net[0], "base_layer") else None
    return float(delta.var())


def test_rora_variance_flat_in_rank_lora_falls_like_one_over_r():
    """The RoRA check (docs/variants.md, "RoRA"): Var(s·BAx) after one step is flat in r for α/√r, ~1/r for α/r.

    One Adam step: its first update is lr·sign(grad), the regime of the RoRA/rsLoRA
    argument (update size independent of the gradient's scale), so Var ∝ s²·r.
    """
    ranks = np.array([4, 8, 16, 32, 64, 128, 256])
    slopes = {}
    for scaling in ("rora", "lora"):
        var = [np.mean([adapter_output_variance(int(r), scaling, seed) for seed in range(3)]) for r in ranks]
        slopes[scaling] = np.polyfit(np.log(ranks), np.log(var), 1)[0]
    assert abs(slopes["rora"]) < 0.15, slopes
    assert abs(slopes["lora"] + 1.0) < 0.2, slopes


RESUME_TOTAL = 16


def train_range(adapter, model, optimizer, scheduler, steps: range) -> None:
    """The loop's step order, with its schedule, over `steps` (batch s at step s)."""
    model.train()
    for step in steps:
        loss = model(**batch(step)).loss
        extra = adapter.extra_loss(model, step)
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
        adapter.after_step(model, step, batch(step))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def fresh_trial(name: str, base_dir: Path, **overrides):
    """Model, adapter, optimizer and schedule as the loop builds them (dropout on: RNG matters)."""
    adapter, model = attached(name, base_dir, total_steps=RESUME_TOTAL, **overrides)
    optimizer = torch.optim.AdamW(adapter.param_groups(model, 1e-2, 0.0))
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, RESUME_TOTAL)
    return adapter, model, optimizer, scheduler


@pytest.mark.parametrize("stop", [8, 14])  # mid-budget for the adaptive variants; after AdaLoRA fixes its pattern
@pytest.mark.parametrize("name, overrides", [(name, {}) for name in sorted(ADAPTERS)]
                         + [("lora", {"init": "pissa"}), ("lora", {"init": "eva"})])
def test_resuming_from_a_checkpoint_continues_exactly(name, overrides, stop, tiny_bert_dir, tmp_path):
    """(lora with PiSSA: the restarted worker's base is the residual again, from the same SVD;
    with EVA: the restarted worker's prepare reads the same batches again.)"""
    adapter, model, optimizer, scheduler = fresh_trial(name, tiny_bert_dir, **overrides)
    train_range(adapter, model, optimizer, scheduler, range(1, RESUME_TOTAL + 1))
    uninterrupted = trainable_state(model)

    adapter, model, optimizer, scheduler = fresh_trial(name, tiny_bert_dir, **overrides)
    train_range(adapter, model, optimizer, scheduler, range(1, stop + 1))
    save_training_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, adapter=adapter,
                        step=stop, evaluations=3)
    torch.manual_seed(1234)  # whatever the process did since: the checkpoint's RNG state is what counts

    # A new worker: everything rebuilt from the files, then the state put back as the loop does it.
    state = read_training_state(tmp_path)
    adapter, model = attached(name, tiny_bert_dir, total_steps=RESUME_TOTAL, **overrides)
    restore_model(model, state)
    optimizer = torch.optim.AdamW(adapter.param_groups(model, 1e-2, 0.0))
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, RESUME_TOTAL)
    resumed = restore_training(state, model=model, optimizer=optimizer, scheduler=scheduler, adapter=adapter)
    assert (resumed.step, resumed.evaluations) == (stop, 3)
    train_range(adapter, model, optimizer, scheduler, range(stop + 1, RESUME_TOTAL + 1))

    continued = trainable_state(model)
    assert continued.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(continued[key], value, atol=1e-6, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    changed = [k for k, v in trainable_state(attached(name, tiny_bert_dir, total_steps=RESUME_TOTAL, **overrides)[1]).items()
               if v.is_floating_point() and not torch.equal(v, uninterrupted[k])]
    assert changed, "training changed nothing, so the comparison proves nothing"


def test_checkpoint_of_another_model_is_refused(tiny_bert_dir, tmp_path):
    adapter, model, optimizer, scheduler = fresh_trial("lora", tiny_bert_dir)
    save_training_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, adapter=adapter,
                        step=1, evaluations=1)
    _, other = attached("lora", tiny_bert_dir, total_steps=RESUME_TOTAL, rank=8)
    with pytest.raises(RuntimeError, match="does not match this trial's model"):
        restore_model(other, read_training_state(tmp_path))


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_the_budget_is_final_from_the_step_the_variant_says(name, tiny_bert_dir):
    """`budget_settles_at`: the step after which the variant's schedule leaves its parameter
    count alone (what MOASHA waits for before it judges a trial). SoRA's gates move to the end."""
    adapter, model, optimizer, scheduler = fresh_trial(name, tiny_bert_dir)
    settles = adapter.budget_settles_at()
    assert 0 <= settles <= RESUME_TOTAL
    counts = {0: (adapter.adapter_params(model), adapter.rank_allocation(model))}
    for step in range(1, RESUME_TOTAL + 1):
        train_range(adapter, model, optimizer, scheduler, range(step, step + 1))
        counts[step] = (adapter.adapter_params(model), adapter.rank_allocation(model))
    if name != "sora":  # parameters and ranks
        assert all(counts[step] == counts[RESUME_TOTAL] for step in range(settles, RESUME_TOTAL + 1)), (settles, counts)
    if hasattr(adapter, "updating"):  # SaLoRA: its gates and λ move only inside its window
        assert adapter.updating(settles) and not any(adapter.updating(s) for s in range(settles + 1, RESUME_TOTAL + 1))
    if name in ("adalora", "alora_alloc"):  # their schedules move ranks on this tiny model within 16 steps
        assert counts[0][1] != counts[RESUME_TOTAL][1] and settles > 0, counts


def test_option_names_carry_their_variant_and_collide_with_nothing():
    """A variant's options share the `adapter:` namespace with every other variant's and sit
    beside `train:` and `task:` keys in a search space: each starts with its variant's name
    (`sora_`, `gora_`, `alora_` for alora_alloc), none is a field of a section, two variants
    never declare the same one, and a former name (`renamed`) is no longer anyone's option."""
    from raysearch.experiment.sections import AdapterSpec, TaskSpec, TrainSpec

    sections = set(TrainSpec.model_fields) | set(TaskSpec.model_fields) | set(AdapterSpec.model_fields)
    owners: dict[str, type] = {}
    for name, cls in sorted(ADAPTERS.items()):
        for option in cls.options.model_fields:
            assert option.startswith(name.split("_")[0] + "_"), (name, option)
            assert option not in sections, (name, option)
            assert owners.setdefault(option, cls.options) is cls.options, (name, option, owners[option])
    for cls in ADAPTERS.values():
        for old, new in cls.options.renamed.items():
            assert new in cls.options.model_fields and old not in owners, (old, new)


@pytest.mark.parametrize("where, old, new", [
    ("adapter", "gate_lr", "sora_gate_lr"), ("adapter", "init_r", "adalora_init_r"),
    ("space", "sparsity_lambda", "sora_lambda"), ("space", "target_density", "salora_target_density"),
])
def test_a_former_option_name_is_an_error_that_names_the_new_one(monkeypatch, where, old, new):
    import raysearch.experiment.checks as checks
    from raysearch.experiment.spec import SpecError, spec_from_dict

    monkeypatch.setattr(checks, "ADAPTERS", ADAPTERS)
    variant = new.split("_")[0]
    search = {"space": {"rank": {"choice": [4]}}}
    data = ({"adapter": {"variant": variant, old: 0.5}, "search": search} if where == "adapter" else
            {"adapter": {"variant": variant}, "search": {"space": {old: {"uniform": [0.1, 0.9]}}}})
    with pytest.raises(SpecError) as error:
        spec_from_dict(data)
    path = f"adapter.{old}" if where == "adapter" else f"search.space.{old}"
    (problem,) = [p for p in error.value.problems if p.path == path]
    assert problem.message.startswith(f"renamed to '{new}'")


@pytest.mark.parametrize("init", ["gaussian", "pissa", "olora", "eva"])
@pytest.mark.parametrize("name", sorted(n for n in ADAPTERS if "init" in ADAPTERS[n].hyperparams))
def test_every_init_exports_a_plain_lora_for_the_original_base(name, init, tiny_bert_dir, tmp_path):
    """adapter.init (issue 20): PiSSA and OLoRA start from the base weight's principal
    directions and change the base to the residual. The export still loads on the original,
    unmodified base and reproduces the trained outputs (PEFT's conversion to rank 2r), and
    adapter_params counts what ships."""
    adapter, model = attached(name, tiny_bert_dir, init=init)
    base = load_base(tiny_bert_dir)
    changed = any(not torch.equal(p, base.state_dict()[k.removeprefix("base_model.model.").replace(".base_layer", "")])
                  for k, p in model.state_dict().items() if "base_layer.weight" in k)
    assert changed == (init in ("pissa", "olora"))
    train_steps(adapter, model, TRAIN_STEPS)
    expected = logits(model, batch(9))
    reloaded = export_and_reload(adapter, model, tiny_bert_dir, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, batch(9)), expected, atol=1e-5, rtol=1e-4)
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter.adapter_params(model) == sum(t.numel() for t in exported.values())
    ranks = {t.shape[0] for k, t in exported.items() if "lora_A" in k}
    assert ranks == ({2 * ADAPTER_CONFIG["rank"]} if init in ("pissa", "olora") else {ADAPTER_CONFIG["rank"]})


def test_eva_starts_a_from_the_principal_directions_of_each_layers_inputs(tiny_bert_dir):
    """init 'eva' is data-driven: A's first rows are the leading principal directions of that
    layer's (centred) inputs on the training batches `prepare` read, in order; B starts at 0,
    so the outputs are the base's. (Only the first two are checked: on this random tiny model
    the later singular values lie close together, and EVA's incremental SVD stops at
    convergence, so the later directions are not pinned down.) A default A is not aligned."""
    from trainables.adapters.lora import EVA_BATCHES, lora_layers

    base = load_base(tiny_bert_dir)
    inputs: dict[str, list[torch.Tensor]] = {}
    names = [n for n, _ in lora_layers(attached("lora", tiny_bert_dir)[1])]
    hooks = [base.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: inputs.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1]).detach()))
        for n in names]
    stream = batches()
    with torch.no_grad():
        for _ in range(EVA_BATCHES):
            base(**next(stream))
    for h in hooks:
        h.remove()

    def alignment(model) -> dict[str, torch.Tensor]:
        """Per layer: |cos| between A's row i and the inputs' i-th principal direction."""
        out = {}
        for name, layer in lora_layers(model):
            x = torch.cat(inputs[name])
            directions = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False).Vh
            A = torch.nn.functional.normalize(layer.lora_A["default"].weight.detach(), dim=1)
            out[name] = (A * directions[: len(A)]).sum(dim=1).abs()
        return out

    adapter, eva = attached("lora", tiny_bert_dir, init="eva")
    aligned = alignment(eva)
    assert sorted(aligned) == sorted(names) and names
    assert all(cos[:2].min() > 0.9 for cos in aligned.values()), aligned
    assert all(cos[:2].max() < 0.5 for cos in alignment(attached("lora", tiny_bert_dir)[1]).values())
    assert all(not layer.lora_B["default"].weight.any() for _, layer in lora_layers(eva))
    torch.testing.assert_close(logits(eva, batch(9)), logits(base, batch(9)))


def test_init_is_refused_for_a_variant_that_starts_its_own_way(monkeypatch):
    import raysearch.experiment.checks as checks
    from raysearch.experiment.spec import SpecError, spec_from_dict

    monkeypatch.setattr(checks, "ADAPTERS", ADAPTERS)
    assert spec_from_dict({"adapter": {"variant": "rora", "init": "pissa"},
                           "search": {"space": {"init": {"choice": ["default", "olora"]}}}}).adapter.init == "pissa"
    with pytest.raises(SpecError) as error:
        spec_from_dict({"adapter": {"init": "pissa"}, "search": {"space": {"variant": {"choice": ["lora", "sora"]}}}})
    (problem,) = [p for p in error.value.problems if p.path == "adapter.init"]
    assert problem.message.startswith("sora start their adapters their own way; init is for lora, loraplus, rora")
    with pytest.raises(SpecError, match="variant 'dora' cannot use 'init'"):
        spec_from_dict({"search": {"space": {"variant": {"choice": ["lora", "dora"]}, "init": {"choice": ["pissa"]}}}})
