"""Every benchmark's --quick mode runs, so the scripts cannot rot (numbers are not checked).

The quick modes that start Ray or train for tens of seconds are `slow`: CI runs them in
`make test-slow`, right after `make test`, which checks what they compute with faster tests
(each marker says which)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_harness(tiny_model_dir, monkeypatch):
    """The benchmarks' searches on the tests' tiny BERT instead of MiniLM: --quick checks that
    a script runs and what it prints, never its numbers, and MiniLM's forward passes (ALoRA's
    ablation scores above all) made these tests minutes long."""
    load("harness")
    monkeypatch.setattr(sys.modules["harness"], "MODEL", str(tiny_model_dir))


def test_adapter_step_cost_quick(capsys):
    from trainables.adapters import ADAPTERS

    rows = load("adapter_step_cost").main(["--quick"])
    assert {r["variant"] for r in rows} == set(ADAPTERS)
    lora = next(r for r in rows if r["variant"] == "lora")
    assert lora["vs_lora"] == 1.0
    assert all(r["step_ms"] > 0 for r in rows)
    by_variant = {r["variant"]: r for r in rows}
    memory = by_variant["lora"]["memory_mb"]
    assert memory["total"] == pytest.approx(sum(v for k, v in memory.items() if k != "total"))
    assert 0 < memory["gradients"] < memory["weights"] and memory["saved"] > 0  # only the adapter trains
    # LoRA+ changes learning rates, not tensors; DoRA keeps its magnitude path's inputs for backward.
    assert by_variant["loraplus"]["memory_vs_lora"] == 1.0
    assert by_variant["dora"]["saved_vs_lora"] > 1.0
    assert "x LoRA" in capsys.readouterr().out


# The in-process benchmarks' quick modes: the tiny BERT for a couple of steps on a few SST-2 sentences.


def test_search_efficiency_table_quick(capsys, tiny_harness):
    rows = load("search_efficiency").main(["--quick", "--part", "table"])
    curves = [r for r in rows if r["part"] == "hypervolume"]
    samplers = ("tpe", "nsga2", "random", "tpe/startup=3", "tpe/startup=5")
    assert {(r["sampler"], r["k"]) for r in curves} == {(s, k) for s in samplers for k in (2, 4, 8)}
    assert all(0.0 <= r["mean"] <= 1.0 for r in curves)  # a fraction of the whole table's hypervolume
    reach = [r for r in rows if r["part"] == "reach"]
    assert sorted(r["sampler"] for r in reach) == sorted(samplers)
    assert all(len(r["per_seed"]) == 3 for r in reach)
    assert not [r for r in rows if r["part"] == "asha"]
    assert "lookup table: 4 configurations" in capsys.readouterr().out


@pytest.mark.slow  # make test: RoRA's and LoRA's output variance by rank (test_adapters_contract.py)
def test_rora_rank_sweep_quick(tmp_path, capsys, tiny_harness):
    plot = tmp_path / "sweep.png"
    rows = load("rora_rank_sweep").main(["--quick", "--plot", str(plot)])
    assert {(r["rank"], r["scaling"]) for r in rows} == {(4, "lora"), (4, "rora"), (8, "lora"), (8, "rora")}
    assert all(len(r["accuracies"]) == 2 for r in rows)  # one per seed
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "finding:" in capsys.readouterr().out


def test_overhead_shows_the_median_run_and_every_ratio():
    median_run = load("overhead").median_run
    runs = [{"ratio": ratio, "run": i} for i, ratio in enumerate([1.25, 1.16, 1.20])]
    row = median_run(runs)
    assert row["run"] == 2 and row["ratio"] == 1.20
    assert row["ratios"] == [1.25, 1.16, 1.20]  # in run order
    assert median_run(runs[:2])["run"] == 1  # an even count: the lower middle one
    assert median_run(runs[:1])["ratios"] == [1.25]


def synthetic_curves() -> list[list[dict]]:
    """Three trials of two evaluations; the second would end best, but its first val_loss is worst so far."""
    def curve(first_loss: float, final_accuracy: float) -> list[dict]:
        return [{"evaluation": 1, "step": 10, "val_loss": first_loss, "val_accuracy": 0.5, "final": False,
                 "time_this_iter_s": 1.0},
                {"evaluation": 2, "step": 20, "val_loss": 0.3, "val_accuracy": final_accuracy, "final": True,
                 "time_this_iter_s": 1.0}]
    return [curve(0.5, 0.80), curve(0.7, 0.90), curve(0.4, 0.85)]


def test_asha_replay_runs_raysearchs_scheduler_on_recorded_curves():
    load("search_efficiency")  # puts the benchmarks' folder on the path
    replay, harness = load("asha_replay"), sys.modules["harness"]
    search = {"sampler": "random", "num_trials": 3, "max_concurrent": 1,
              "space": {"rank": {"choice": [2, 4]}}}
    experiment = harness.experiment("replay", harness.SST2, harness.Sizes(train_examples=64, eval_examples=32), search)
    rows = replay.replay_rows(experiment, synthetic_curves(), runs=5)
    by_setting = {(r["metric"], r["reduction_factor"], r["grace"]): r for r in rows}
    assert set(by_setting) == {(m, f, g) for m in ("val_loss", "val_accuracy") for f in (2, 3) for g in (1, 2, 3)}
    # val_loss, grace 1: the first trial passes the rung alone, the second is below the
    # first's 0.5 and stopped after 10 steps, the third beats the cutoff: 50 of 60 steps,
    # best 0.85 instead of 0.90. One trial at a time, so jitter cannot change the order.
    loss_1 = by_setting[("val_loss", 3, 1)]
    assert loss_1["recorded_steps"] == pytest.approx(50 / 60) == loss_1["steps_mean"]
    assert loss_1["recorded_points"] == pytest.approx(-5.0) == loss_1["points_mean"]
    assert loss_1["within_accuracy"] == 0.0 == loss_1["targets_met"]
    # Equal first accuracies never fall below the cutoff; a grace past the first
    # evaluation leaves no rung a trial reaches before its end: nothing is stopped.
    for setting in [("val_accuracy", 3, 1), ("val_loss", 3, 2), ("val_loss", 2, 3)]:
        assert by_setting[setting]["recorded_steps"] == 1.0 and by_setting[setting]["recorded_points"] == 0.0
    assert "the trial that ends best (0.9000) ranks 3 of 3 by its first val_loss" in replay.first_evaluation(
        synthetic_curves())


def test_early_stopping_replay_compares_asha_and_moasha_on_the_front():
    """Four trials of two evaluations, one at a time: the 100-parameter adapter has the worst
    first loss and accuracy but ends on the front. ASHA on val_loss stops it at rung 1;
    MOASHA keeps it (fewest parameters), so its front keeps all of no stopping's hypervolume."""
    module = load("early_stopping")
    harness = sys.modules["harness"]

    def curve(first_loss, first_accuracy, final_accuracy, params):
        return [{"evaluation": e, "step": 10 * e, "val_loss": loss, "val_accuracy": accuracy, "adapter_params": params,
                 "final": e == 2, "time_this_iter_s": 1.0}
                for e, loss, accuracy in ((1, first_loss, first_accuracy), (2, 0.3, final_accuracy))]

    # final front without stopping: trial 3 (0.78, 100), trial 1 (0.80, 4000), trial 2 (0.85, 8000);
    # trial 4 (0.79, 6000) is dominated by trial 1
    curves = [curve(0.5, 0.70, 0.80, 4000), curve(0.4, 0.75, 0.85, 8000), curve(0.7, 0.60, 0.78, 100),
              curve(0.45, 0.72, 0.79, 6000)]
    search = {"sampler": "random", "num_trials": 4, "max_concurrent": 1, "space": {"rank": {"choice": [2, 4]}}}
    experiment = harness.experiment("replay", harness.SST2, harness.Sizes(train_examples=64, eval_examples=32), search)
    rows = {r["scheduler"]: r for r in module.replay_on(experiment, curves, seed=0, replays=3)}
    asha, moasha = rows["asha val_loss eta=2 g=1"], rows["moasha acc+params eta=2 g=1"]
    # ASHA (Tune's: above the median of those before it): 2 passes, 3 stopped (below 1 and 2), 4 passes
    assert asha["trial_steps"] == 20 + 20 + 10 + 20 and asha["steps_ratio"] == pytest.approx(70 / 80)
    assert asha["hv_ratio"] < 0.99 and asha["points"] == 0.0
    # MOASHA: 3 is an end of the rung's front (fewest parameters) and goes on; 4, inside the
    # front of four, is stopped
    assert moasha["trial_steps"] == 20 + 20 + 20 + 10 and moasha["hv_ratio"] == pytest.approx(1.0)
    assert moasha["points"] == 0.0 and moasha["targets_met"] is False  # 0.875 of the steps
    assert moasha["jittered_targets_met"] == 0.0


def test_early_stopping_settled_bound_keeps_the_front_and_stops_the_rest_at_their_first_settled_rung():
    """The oracle bound: A ends on the front and runs out (40 steps); D ends at A's very point,
    so one of them is enough and D stops at rung 1 (10); B is unsettled until evaluation 3, so
    its first rung is 4 (40); C stops at rung 1 (10); E never settles and runs out (40)."""
    module = load("early_stopping")

    def curve(accuracy, params, settled_from):
        return [{"evaluation": e, "step": 10 * e, "val_accuracy": accuracy, "adapter_params": params,
                 "budget_settled": e >= settled_from} for e in range(1, 5)]

    curves = [curve(0.8, 100, 1), curve(0.7, 200, 3), curve(0.6, 300, 1), curve(0.8, 100, 1), curve(0.5, 400, 9)]
    bound = module.settled_bound(curves, [1.0, 2.0, 4.0])
    assert bound == {"settled_bound": (40 + 40 + 10 + 10 + 40) / 200, "front": 1}


def test_early_stopping_adaptive_space_settles_its_budgets_between_the_rungs():
    """--space adaptive: every configuration is valid, and every adaptive one reports an
    unsettled budget at the first evaluation (so MOASHA skips at least rung 1) and a settled
    one before the last (so MOASHA can still stop it): otherwise the search tests nothing."""
    from raysearch.experiment.spec import spec_from_dict

    module = load("early_stopping")
    harness = sys.modules["harness"]
    sizes = harness.Sizes(train_examples=1536, eval_examples=256, evaluations=8)  # the full run's
    assert sizes.steps == 96
    rows = module.settling(module.ADAPTIVE_SPACE, module.ADAPTIVE_ADAPTER, sizes)
    assert {r["variant"] for r in rows} == {"lora", "adalora", "sora", "salora", "alora_alloc"}
    for row in rows:
        if row["variant"] == "lora":
            assert row["settles_at"] == 0 and row["first_settled_evaluation"] == 1
        else:
            assert 12 < row["settles_at"] < 96 and 2 <= row["first_settled_evaluation"] <= 5, row
    firsts = {r["first_settled_evaluation"] for r in rows if r["variant"] != "lora"}
    assert firsts == {2, 4, 5}  # judged first at rung 2 (skipping 1) or at rung 4 (skipping 1 and 2)
    search = {"sampler": "random", "num_trials": 16, "max_concurrent": 2, "start_with_defaults": False,
              "space": module.ADAPTIVE_SPACE, "early_stopping": {"scheduler": "moasha"}}
    spec = spec_from_dict(harness.experiment("adaptive", harness.SST2, sizes, search,
                                             adapter=module.ADAPTIVE_ADAPTER))
    assert spec.search.early_stopping.scheduler == "moasha"
    assert module.name_of("none", 3, "adaptive") == "es-adaptive-none-s3" and module.name_of("none", 3) == "es-none-s3"


def test_search_vs_default_runs_the_files_default_first():
    """The default run and the search's first trial are the same configuration."""
    module = load("search_vs_default")
    harness = sys.modules["harness"]
    from raysearch.experiment.space import default_point
    from raysearch.experiment.spec import spec_from_dict
    from raysearch.search.tuner import file_defaults

    search = spec_from_dict(module.experiment("s", 0, {"sampler": "tpe", "num_trials": 8, "space": module.SPACE},
                                              harness.SST2, quick=True))
    alone = spec_from_dict(module.experiment("d", 0, module.default_search(), harness.SST2, quick=True))
    first = default_point(search.search.space, file_defaults(search))
    assert first == {name: dim.choice[0] for name, dim in alone.search.space.items()}
    assert first == {"variant": "lora", "rank": 16, "lr": 5e-4, "target": "all_linear"}
    assert search.task.test_fraction == alone.task.test_fraction > 0


# The quick modes that run `raysearch run`: one Ray start per search costs tens of seconds
# on 2 cores whatever the trial. `slow` ones run in `make test-slow` (and CI), not `make test`.


@pytest.mark.slow  # make test: the overhead table from recorded runs (above); a real search's segments here
@pytest.mark.integration
def test_overhead_quick(capsys, tiny_harness):
    rows = load("overhead").main(["--quick"])
    assert [(r["runner"], r["steps"], r["trials"]) for r in rows] == [("inline", 4, 1)]
    segments = rows[0]["segments"]
    timeline = ("imports", "before_trials", "trial_start", "setup", "training", "trial_end", "between_trials",
                "after_trials")
    for side in ("raysearch_s", "plain_s"):  # the timeline's rows add up to the wall time
        assert sum(segments[k][side] for k in timeline) == pytest.approx(segments["total"][side])
    assert segments["ray_start"]["plain_s"] == 0 < segments["ray_start"]["raysearch_s"]
    assert 0 < segments["first_trial_start"]["raysearch_s"] <= segments["trial_start"]["raysearch_s"]
    assert segments["mlflow"]["plain_s"] == 0 < segments["mlflow"]["raysearch_s"]
    assert rows[0]["ratio"] == pytest.approx(segments["total"]["raysearch_s"] / segments["total"]["plain_s"])
    assert rows[0]["ratios"] == [rows[0]["ratio"]]
    assert "ratio raysearch / plain" in capsys.readouterr().out


@pytest.mark.slow  # make test: the ASHA replay (above) and real ASHA searches (tests/integration)
@pytest.mark.integration
def test_search_efficiency_asha_quick(tmp_path, capsys, tiny_harness):
    module = load("search_efficiency")
    rows = module.main(["--quick", "--part", "asha", "--workdir", str(tmp_path)])
    searches = [r for r in rows if r["part"] == "asha"]
    assert [r["scheduler"] for r in searches] == ["none", "asha g=1"]
    assert [(r["trials"], r["errored"], r["trial_steps"]) for r in searches] == [(1, 0, 4)] * 2  # 1 trial of 4 steps
    replays = [r for r in rows if r["part"] == "asha_replay"]
    assert len(replays) == 12  # replayed on the recorded curve: ASHA never stops a rung's first trial
    assert all(r["steps_mean"] == 1.0 and r["points_mean"] == 0.0 for r in replays)
    out = capsys.readouterr().out
    assert "asha g=1: steps / none" in out and "ASHA replayed on the 1 learning curves" in out
    assert "ranks 1 of 1 by its first val_loss" in out
    # The kept search replays alone, to the same rows.
    assert module.main(["--replay", str(tmp_path), "--replays", "20"]) == replays


@pytest.mark.slow  # make test: the settling, MOASHA's unsettled trials and the real-search harness, faster
@pytest.mark.integration
def test_early_stopping_adaptive_quick(tmp_path, capsys, tiny_harness):
    """--space adaptive --quick: three real 2-trial searches of ALoRA with two rounds, whose
    budget settles after evaluation 1 of 2; the per-seed table says which target each met."""
    module = load("early_stopping")
    rows = module.main(["--quick", "--space", "adaptive", "--no-replay", "--workdir", str(tmp_path)])
    *rows, bound = rows
    assert [(r["part"], r["scheduler"]) for r in rows] == [("real", "none"), ("real", "asha"), ("real", "moasha")]
    # neither trial settles before its last evaluation: no rule that waits for it can stop one
    assert bound["part"] == "bound" and bound["settled_bound"] == 1.0
    assert all(r["trials"] == 2 and r["errored"] == 0 and r["unsettled"] == 2 for r in rows)
    none, asha, moasha = rows
    assert none["trial_steps"] == 8 and none["steps_ratio"] == 1.0
    # MOASHA judges neither trial before its budget settles, at the last evaluation: no stop.
    # (4 steps may leave every trial at chance: then no front has hypervolume, and hv/none is nan.)
    assert moasha["trial_steps"] == 8 and moasha["points"] == 0.0
    for row in rows:
        assert row["steps_met"] == (row["steps_ratio"] <= 0.5) and row["points_met"] == (row["points"] >= -0.5)
        assert row["hv_met"] == (row["hv_ratio"] >= 0.95)
        assert row["targets_met"] == (row["steps_met"] and row["hv_met"] and row["points_met"])
    assert moasha["steps_met"] is False and moasha["points_met"] is True and moasha["targets_met"] is False
    out = capsys.readouterr().out
    assert "alora_rounds=2: step 3, settled from evaluation 2" in out
    for column in ("unsettled", "steps<=0.5", "hv>=0.95", "best-0.5pt", "all three"):
        assert column in out
    assert "moasha: targets met per seed: steps on 0 of 1, hypervolume on " in out
    assert "best on 1 of 1, all three on 0 of 1; seeds missing one or more: 0" in out
    assert "replayed on" not in out  # --no-replay
    assert "the fewest steps a rule that judges a trial only once its budget settled can use" in out
    # the kept searches replay alone, on the adaptive curves
    replays = module.main(["--replay", str(tmp_path), "--space", "adaptive", "--replays", "2"])
    assert [r["part"] for r in replays] == ["replay"] * len(module.REPLAYED) + ["bound"]
    replays = replays[:-1]
    assert all(r["steps_ratio"] == 1.0 for r in replays if r["scheduler"].startswith("moasha"))


@pytest.mark.slow  # make test: option-text scoring (test_evaluate.py), causal-LM searches (tests/integration)
@pytest.mark.integration
def test_smol_table_quick(tmp_path, capsys):
    """The held-out table's plumbing on builtin:tiny-llama: a 2-trial search, the plain PEFT
    default trained by transformers' Trainer on option text and on labels, all scored on the
    same test records by option text, and the zero-shot model's label reading beside."""
    out = load("smol_table").main(["--quick", "--workdir", str(tmp_path)])
    results = out["results"]
    assert list(results) == ["zero-shot", "PEFT default", "PEFT default (label)", "raysearch best"]
    sizes = {name: [s.n for s in result.per_source] for name, result in results.items()}
    assert len(set(map(tuple, sizes.values()))) == 1 and sizes["zero-shot"] == [8] * 5  # max_test_examples per source
    assert all(s.reading in ("acc", "acc_norm") for s in results["zero-shot"].per_source)
    assert out["old_reading"].overall.n == 40 and {s.reading for s in out["old_reading"].per_source} == {"label"}
    means = [s.value for s in results["raysearch best"].per_source]
    assert results["raysearch best"].overall.value == pytest.approx(sum(means) / len(means))  # the mean of sources
    pairs = {(d["a"], d["b"], d["source"]) for d in out["differences"]}
    assert ("raysearch best", "zero-shot", "all") in pairs and ("raysearch best", "PEFT default", "sst2") in pairs
    assert all(d["low"] <= d["diff"] <= d["high"] for d in out["differences"])
    printed = capsys.readouterr().out
    assert "paired differences on the same records" in printed and "raysearch best by validation" in printed


def test_cell_study_compares_each_cell_with_its_baseline_on_seed_averaged_records(capsys):
    """benchmarks/cell_study.py: α/√r at rank 4 is compared with α/r at rank 4 (not another
    rank); each test record's correctness is averaged over the seeds before the paired
    difference; the baseline cell has no difference of its own."""
    study = load("cell_study")
    cells = [{"scaling": s, "rank": r} for s in ("lora", "rora") for r in (4, 16)]
    assert study.baseline_of(cells[2], {"scaling": "lora"}, cells, ["scaling", "rank"]) is cells[0]
    assert study.baseline_of(cells[3], {"scaling": "lora"}, cells, ["scaling", "rank"]) is cells[1]
    assert study.baseline_of(cells[0], {"scaling": "lora"}, cells, ["scaling", "rank"]) is None
    assert study.baseline_of(cells[2], {"scaling": "lora"}, cells[2:], ["scaling", "rank"]) is None

    assert study.per_record([[True, False, True, False], [True, True, True, False]]) == [1.0, 0.5, 1.0, 0.0]
    diff, low, high = study.difference([[True, False, True, False], [True, True, True, False]],
                                       [[False, False, True, False], [False, False, True, False]])
    assert diff == pytest.approx((1 + 0.5 + 0 + 0) / 4) and low <= diff <= high

    scored = [{**c, "trials": 4, "seeds": 2, "best": 0.8, "spread": 0.01, "config": {"lr": "0.001"},
               "test": [0.7, 0.8], "correct": [[c["scaling"] == "rora", True], [True, True]]} for c in cells]
    rows = study.print_table(scored, ["scaling", "rank"], {"scaling": "lora"})
    assert [r["diff"] is None for r in rows] == [True, True, False, False]
    assert rows[2]["diff"][0] == pytest.approx(0.25) and rows[2]["test"] == pytest.approx(0.75)
    assert rows[2]["test_sd"] == pytest.approx(0.0707, abs=1e-4) and rows[2]["lr"] == 0.001
    out = capsys.readouterr().out
    assert "| rora | 4 | 4 | 1.0e-03 | 0.800 ± 0.010 | 0.750 ± 0.071 | +25.0 [" in out
    assert "| lora | 4 | 4 | 1.0e-03 | 0.800 ± 0.010 | 0.750 ± 0.071 | baseline | 0.700 0.800 |" in out


def test_cell_study_files_are_the_shipped_comparison_spaces():
    """Each study runs a shipped search space, on SST-2 with a carved test split, every trial to the end."""
    from raysearch.experiment.spec import spec_from_dict

    study = load("cell_study")
    for key, entry in study.STUDIES.items():
        spec = spec_from_dict(study.experiment_file(entry, quick=False))
        assert spec.name == entry.name and spec.task.test_fraction > 0 and spec.search.compare
        assert set(entry.baseline) <= set(spec.search.compare), key
        assert spec.search.seeds >= 2 or key in study.ONE_SEED, key
        assert spec.search.early_stopping.scheduler == "none", key


def test_cell_study_small_rora_question_gives_both_models_the_same_data_and_cells():
    """`cell_study.py rora-pruned --small` and `rora-smol --small` (issue 28, part 3): the same
    sources, sizes, test split and cells (α/r vs α/√r at ranks 8 and 64, two lrs, two seeds),
    and the pruned one differs only by its pruning; a study without a small size refuses."""
    from raysearch.experiment.spec import spec_from_dict

    study = load("cell_study")
    pruned = study.experiment_file(study.STUDIES["rora-pruned"], quick=False, small=True)
    full = study.experiment_file(study.STUDIES["rora-smol"], quick=False, small=True)
    specs = [spec_from_dict(raw) for raw in (pruned, full)]
    assert [s.name for s in specs] == ["rora-small-pruned", "rora-small-smol"]
    assert specs[0].pruning is not None and specs[1].pruning is None
    assert specs[0].task == specs[1].task and specs[0].search == specs[1].search
    search, task = specs[0].search, specs[0].task
    assert search.compare == ["scaling", "rank"] and search.seeds == 2 and search.trials_per_cell == 2
    assert search.space["rank"].choice == [8, 64] and search.space["scaling"].choice == ["lora", "rora"]
    assert search.early_stopping.scheduler == "none" and task.test_fraction == 0.2
    sst2 = next(item for item in task.dataset if getattr(item, "name", None) == "sst2")
    assert (sst2.max_train_examples, sst2.max_eval_examples) == (96, 32)
    assert task.max_train_examples == 24 and task.max_test_examples == 60
    # the pruned base is the recovery table's: its file's recipe, calibration from its first source
    assert pruned["pruning"] == study.experiment_file(study.STUDIES["rora-pruned"], quick=False)["pruning"]
    assert str(task.dataset[0]).find("boolq") >= 0
    gpu = study.experiment_file(study.STUDIES["rora-pruned"], quick=False, sets=["resources.gpus_per_worker=1"])
    assert spec_from_dict(gpu).resources.gpus_per_worker == 1 and gpu["search"]["trials_per_cell"] == 4
    with pytest.raises(ValueError, match="must be key=value"):
        study.experiment_file(study.STUDIES["rora-pruned"], quick=False, sets=["resources.gpus_per_worker"])
    with pytest.raises(ValueError, match="no --small size; studies with one: rora-pruned, rora-smol"):
        study.experiment_file(study.STUDIES["rora"], quick=False, small=True)


def test_harness_agreement_hands_the_harness_the_test_splits_items_and_the_arc_prompt(tmp_path):
    """benchmarks/harness_agreement.py (lm-evaluation-harness itself is an optional extra, not
    run here): the records it gives the harness are the test split's multiple-choice items,
    and its task file asks for the harness's ARC prompt with both accuracies."""
    import yaml

    module = load("harness_agreement")
    if not (BENCHMARKS.parents[1] / "shared" / "data" / "commonsense").is_dir():
        pytest.skip("../shared/data/commonsense is not here")
    exp = module.experiment(["ARC-Easy"], 5)
    items = module.test_items(exp)
    assert list(items) == ["ARC-Easy"] and len(items["ARC-Easy"]) == 5
    assert all(len(i["choices"]) >= 3 and 0 <= i["gold"] < len(i["choices"]) and "Answer1" not in i["question"]
               for i in items["ARC-Easy"])
    task = yaml.safe_load(module.TASK_YAML.format(task="t", data=tmp_path / "t.jsonl"))
    assert task["doc_to_text"] == "Question: {{question}}\nAnswer:" and task["output_type"] == "multiple_choice"
    assert [m["metric"] for m in task["metric_list"]] == ["acc", "acc_norm"]


def test_smol_table_recovery_share_is_what_each_model_wins_back_of_the_pruning_loss(capsys):
    """benchmarks/smol_table.py --recovery: (model - pruned) / (full - pruned) per source, and
    none where pruning cost under 5 points (a share of a point or two is noise)."""
    from types import SimpleNamespace as Score

    def result(boolq: float, arc: float) -> Score:
        sources = [Score(source="boolq", value=boolq), Score(source="arc", value=arc)]
        return Score(per_source=sources, overall=Score(source="all", value=(boolq + arc) / 2))

    results = {"full zero-shot": result(0.60, 0.50), "zero-shot": result(0.40, 0.47),
               "PEFT default": result(0.45, 0.52), "raysearch best": result(0.55, 0.40)}
    rows = {r["source"]: r for r in load("smol_table").print_recovery(results, {"zero-shot": 10.0})}
    assert rows["boolq"]["lost"] == pytest.approx(0.20)
    assert rows["boolq"]["PEFT default"] == pytest.approx(0.25) and rows["boolq"]["raysearch best"] == pytest.approx(0.75)
    assert rows["boolq"]["zero-shot"] == 0.0
    assert rows["arc"]["PEFT default"] is None  # 3 points lost: no share
    assert rows["all"]["raysearch best"] == pytest.approx((0.475 - 0.435) / (0.55 - 0.435))
    assert "perplexity on the test split" in capsys.readouterr().out
