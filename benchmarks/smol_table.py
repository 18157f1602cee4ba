"""A real pretrained model tuned by a search, scored on data the search never saw.

One run of this script, on `search_spaces/commonsense_smol.yaml` (SmolLM2-135M-Instruct on
BoolQ, ARC-Easy, ARC-Challenge, OpenBookQA and SST-2 instruction records), scores these
models on the same held-out test split (20% of every training file, drawn with test_seed 0
before anything else; no trial trained on it or was selected by it):

1. zero-shot: the model without an adapter;
2. the plain PEFT default a user would type: LoRA r=8, alpha=16, dropout 0.05, lr 3e-4 on
   q/k/v/o, trained with transformers' Trainer + PEFT (no raysearch code in the training)
   on the same training records and step budget as one trial, twice: on the option text
   (`train_on: option_text`, what the scoring reads) and on the LLM-Adapters labels
   (`train_on: label`, "the correct answer is answer2" after the prompt template): the
   measurement behind the space's `train_on`;
3. raysearch's best trial by validation accuracy (the search's own choice).

Every score is the experiment's `task.scoring` (`options`: lm-evaluation-harness multiple
choice, acc_norm for ARC/OpenBookQA, acc for BoolQ/SST-2) with a 95% Wilson interval, beside
the majority-answer and chance baselines; "all" is the mean of the sources. Differences
between two models are paired bootstrap intervals on the same records ("all": weighted so
that each source counts the same). The zero-shot model is also scored the old way, by the
likelihood of the label ("answer2"), so the two readings sit side by side.

    python benchmarks/smol_table.py                      # runs the search too (79 min shared), then ~55 min
    python benchmarks/smol_table.py --search commonsense-smol --mlflow-uri sqlite:///mlflow.db   # an existing search
    python benchmarks/smol_table.py --quick              # the plumbing on builtin:tiny-llama, ~2 min

`--recovery` (a space with a `pruning:` section, e.g. search_spaces/commonsense_smol_pruned.yaml):
the pruned-model recovery table of docs/pruning.md. The rows are the full model zero-shot, the
pruned model zero-shot, the pruned model + the plain PEFT default (option text) and the pruned
model + the search's best, each with the share of the pruning's loss it wins back per source
((model - pruned) / (full - pruned)), and the perplexity of each on the test split's records
(their Alpaca prompt + response, `PERPLEXITY_RECORDS` a source): text no trial trained on.

    python benchmarks/smol_table.py --recovery --space search_spaces/commonsense_smol_pruned.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_environment()

SPACE = harness.REPO / "search_spaces" / "commonsense_smol.yaml"
PEFT_DEFAULT = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lr": 3e-4,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
QUICK = {  # builtin:tiny-llama (random weights): checks the plumbing, its numbers mean nothing
    "model": "builtin:tiny-llama", "task.max_train_examples": 16, "task.max_eval_examples": 4,
    "task.max_test_examples": 8, "train.eval_every_steps": 5, "search.num_trials": 2, "search.sampler": "random",
    "task.prompt_template": "Question {instruction} Answer",
}


def experiment_file(space: Path, quick: bool) -> dict[str, Any]:
    """The experiment file's contents; --quick shrinks it (every source to the task's limits)."""
    import yaml

    from raysearch.experiment.spec import apply_override

    raw = yaml.safe_load(space.read_text())
    if quick:
        for key, value in QUICK.items():
            problem = apply_override(raw, key, value)
            if problem is not None:
                raise ValueError(f"{space}: {problem}")
        for source in raw["task"]["dataset"]:
            if isinstance(source, dict):
                source.pop("max_train_examples", None)
                source.pop("max_eval_examples", None)
    return raw


def load_experiment(raw: dict[str, Any]) -> dict[str, Any]:
    """The validated experiment with every default filled in (what trials and evaluate see)."""
    from raysearch.records.score_trial import worker_experiment
    from raysearch.experiment.spec import spec_from_dict

    return worker_experiment(spec_from_dict(raw))


def train_peft_default(experiment: dict[str, Any], out_dir: Path, train_on: str) -> tuple[Path, float]:
    """The plain PEFT script: Trainer + get_peft_model on the trials' training records, written
    as `train_on` says (option text or label)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from trainables.instruction_data import load_instruction_splits
    from trainables.instructions import encode_records
    from trainables.models import load_causal_lm

    task, train_cfg = experiment["task"], experiment["train"]
    records = load_instruction_splits(task, seed=train_cfg["seed"])["train"]
    from trainables.pruning import model_source

    model, tokenizer = load_causal_lm(model_source(experiment))  # the pruned base when the file prunes
    encoded = encode_records(records, task["prompt_template"], tokenizer, task["max_length"], train_on=train_on).tensors
    steps = max(1, len(encoded["labels"]) // train_cfg["batch_size"])  # one epoch, as a trial
    targets = [t for t in PEFT_DEFAULT["target_modules"]]
    model = get_peft_model(model, LoraConfig(r=PEFT_DEFAULT["r"], lora_alpha=PEFT_DEFAULT["lora_alpha"],
                                             lora_dropout=PEFT_DEFAULT["lora_dropout"], target_modules=targets,
                                             task_type="CAUSAL_LM"))
    rows = [{k: v[i] for k, v in encoded.items()} for i in range(len(encoded["labels"]))]
    args = TrainingArguments(output_dir=str(out_dir / "trainer"), per_device_train_batch_size=train_cfg["batch_size"],
                             max_steps=steps, learning_rate=PEFT_DEFAULT["lr"],
                             warmup_steps=int(train_cfg["warmup_ratio"] * steps), remove_unused_columns=False,
                             lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0, logging_steps=steps,
                             save_strategy="no", report_to=[], seed=train_cfg["seed"], use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True)
    started = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=rows).train()
    seconds = time.perf_counter() - started
    model.save_pretrained(out_dir / f"peft-default-{train_on}")
    return out_dir / f"peft-default-{train_on}", seconds


def best_trial(mlflow_uri: str, name: str, out_dir: Path) -> tuple[dict, Path]:
    from raysearch.records.mlflow_reader import download_trial, find_trial

    row = find_trial(mlflow_uri, name, None)
    adapter, _ = download_trial(mlflow_uri, row, out_dir)
    return row, adapter


def print_best(row: dict) -> None:
    print(f"\nraysearch best by validation: trial {row['trial_id']} "
          + ", ".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
          + f"; val_answer_accuracy {row['metrics'].get('val_answer_accuracy', float('nan')):.3f}")


def cell(score: Any) -> str:
    return f"{score.value:.3f} [{score.low:.3f}, {score.high:.3f}]"


def print_table(results: dict[str, Any], field: str = "value") -> None:
    """One row per source (and the mean of sources): each model's `field` (value: the task's
    scoring with its interval; acc / acc_norm: the option-text readings)."""
    zero = results["zero-shot"]
    sources = [s.source for s in zero.per_source] + [zero.overall.source]
    print(f"\n{zero.data}")
    print(f"{'source':<14}{'n':>5}  {'majority':>8}  {'chance':>6}  " + "  ".join(f"{k:>24}" for k in results))
    for source in sources:
        scores = {k: next(s for s in [*r.per_source, r.overall] if s.source == source) for k, r in results.items()}
        first = scores["zero-shot"]
        majority = f"{first.majority:.3f}" if first.majority is not None else "-"
        chance = f"{first.chance:.3f}" if first.chance is not None else "-"
        shown = [cell(s) if field == "value" else f"{getattr(s, field):.3f}" for s in scores.values()]
        print(f"{source:<14}{first.n:>5}  {majority:>8}  {chance:>6}  " + "  ".join(f"{c:>24}" for c in shown)
              + ("" if field != "value" else f"  ({first.reading})"))


def print_differences(results: dict[str, Any]) -> list[dict[str, Any]]:
    from trainables.evaluation import paired_difference

    rows = []
    pairs = [("full zero-shot", "zero-shot"), ("raysearch best", "full zero-shot"), ("raysearch best", "zero-shot"),
             ("raysearch best", "PEFT default"), ("PEFT default", "zero-shot"), ("PEFT default", "PEFT default (label)")]
    print("\npaired differences on the same records (95% bootstrap interval):")
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        sources = sorted(set(results[a].sources))
        sizes = {name: results[a].sources.count(name) for name in sources}
        for source in [*sources, "all"]:
            keep = [i for i, s in enumerate(results[a].sources) if source in ("all", s)]
            weights = [1.0 / (len(sources) * sizes[results[a].sources[i]]) for i in keep]
            diff, low, high = paired_difference([results[b].correct[i] for i in keep],
                                                [results[a].correct[i] for i in keep], weights)
            rows.append({"a": a, "b": b, "source": source, "diff": diff, "low": low, "high": high})
            print(f"  {a} - {b:<14} {source:<14} {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
    return rows


PERPLEXITY_RECORDS = 32  # test-split records a source, for --recovery's perplexity
MIN_LOSS = 0.05  # --recovery: no share of a loss under 5 points


def full_model(experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment without its `pruning:` section: the full model, scored the same way."""
    return {**experiment, "pruning": None}


def test_perplexity(experiment: dict[str, Any], adapter: Path | None) -> float:
    """The perplexity (harness.perplexity) of the first PERPLEXITY_RECORDS test-split records of
    each source, written as Alpaca prompt + response (trainables/pruning_importance.py), cut to
    256 tokens; the model the experiment trains on (pruned or not), with `adapter` if given."""
    import torch

    from trainables.evaluation import attach_adapter
    from trainables.instruction_data import load_instruction_splits
    from trainables.models import load_causal_lm
    from trainables.pruning import model_source
    from trainables.pruning_importance import calibration_text

    test = load_instruction_splits(experiment["task"], seed=experiment["train"]["seed"])["test"]
    taken: dict[str, int] = {}
    texts = []
    for record in test:
        if taken.get(record["source"], 0) < PERPLEXITY_RECORDS and calibration_text(record):
            taken[record["source"]] = taken.get(record["source"], 0) + 1
            texts.append(calibration_text(record))
    model, tokenizer = load_causal_lm(model_source(experiment), dtype=torch.float32)
    if adapter is not None:
        model = attach_adapter(model, adapter)
    return harness.perplexity(model, tokenizer, texts)


def print_recovery(results: dict[str, Any], perplexities: dict[str, float]) -> list[dict[str, Any]]:
    """Per source and for the mean of sources: the share of the pruning's loss each model wins
    back, (model - pruned) / (full - pruned); '-' where pruning cost under MIN_LOSS (on 100 records
    a source, one record is a point: a share of a 1-2 point loss is noise, e.g. -5.0)."""
    full, pruned = results["full zero-shot"], results["zero-shot"]
    sources = [s.source for s in pruned.per_source] + [pruned.overall.source]
    rows = []
    print("\nshare of the pruning's loss won back, (model - pruned) / (full - pruned):")
    print(f"{'source':<14}{'full - pruned':>14}  " + "  ".join(f"{k:>16}" for k in results if k != "full zero-shot"))
    for source in sources:
        at = {k: next(s.value for s in [*r.per_source, r.overall] if s.source == source) for k, r in results.items()}
        lost = at["full zero-shot"] - at["zero-shot"]
        shares = {k: (v - at["zero-shot"]) / lost if lost >= MIN_LOSS else None
                  for k, v in at.items() if k != "full zero-shot"}
        rows.append({"source": source, "lost": lost, **shares})
        print(f"{source:<14}{lost:>+14.3f}  " + "  ".join(f"{'-' if v is None else f'{v:+.2f}':>16}"
                                                         for v in shares.values()))
    print("\nperplexity on the test split's records (Alpaca prompt + response, "
          f"{PERPLEXITY_RECORDS} a source): " + ", ".join(f"{k} {v:.2f}" for k, v in perplexities.items()))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=SPACE)
    parser.add_argument("--search", help="Score this finished search instead of running one")
    parser.add_argument("--mlflow-uri", help="The existing search's MLflow store (with --search)")
    parser.add_argument("--workdir", type=Path, help="Keep the search's files here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="builtin:tiny-llama, a 2-trial search: plumbing only")
    parser.add_argument("--recovery", action="store_true",
                        help="the space prunes its model: full vs pruned zero-shot, the PEFT default and the best on it")
    args = parser.parse_args(argv)
    args.space = args.space.resolve()
    os.chdir(harness.REPO)  # the experiment's data paths are relative to the repository root
    harness.quiet()
    from trainables.evaluation import evaluate

    raw = experiment_file(args.space, args.quick)
    experiment = load_experiment(raw)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        if args.search:
            name, uri = args.search, args.mlflow_uri or "sqlite:///mlflow.db"
        else:
            run = harness.run_search(raw, workdir)
            timings["search_s"] = run.wall_s
            name, uri = raw["name"], f"sqlite:///{workdir / 'mlflow.db'}"
            print(f"search {name}: {run.wall_s / 60:.1f} min", flush=True)

        if args.recovery:
            return recovery(experiment, workdir, uri, name, timings)
        results: dict[str, Any] = {}
        started = time.perf_counter()
        results["zero-shot"] = evaluate(experiment, None)
        timings["zero_shot_eval_s"] = time.perf_counter() - started
        for train_on, label in (("option_text", "PEFT default"), ("label", "PEFT default (label)")):
            adapter, timings[f"peft_{train_on}_train_s"] = train_peft_default(experiment, workdir, train_on)
            started = time.perf_counter()
            results[label] = evaluate(experiment, adapter)
            timings[f"peft_{train_on}_eval_s"] = time.perf_counter() - started
        row, best = best_trial(uri, name, workdir / "best")
        started = time.perf_counter()
        results["raysearch best"] = evaluate(experiment, best)
        timings["best_eval_s"] = time.perf_counter() - started
        started = time.perf_counter()
        old_reading = evaluate(experiment, None, scoring="loglik")
        timings["zero_shot_label_eval_s"] = time.perf_counter() - started

    print_best(row)
    print_table(results)
    for field in ("acc", "acc_norm"):
        print(f"\noption-text {field} of every model (records that offer options):")
        print_table(results, field)
    print("\nzero-shot, the old reading (likelihood of the label, e.g. 'answer2', after the prompt template):")
    for score in [*old_reading.per_source, old_reading.overall]:
        print(f"  {score.source:<16}{score.n:>5}  {cell(score)}")
    differences = print_differences(results)
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {"results": results, "old_reading": old_reading, "differences": differences, "best": row,
            "timings": timings}


def recovery(experiment: dict[str, Any], workdir: Path, uri: str, name: str, timings: dict[str, float]) -> dict[str, Any]:
    """--recovery: the four models of docs/pruning.md's recovery table on the same test records."""
    from trainables.evaluation import evaluate

    if not experiment.get("pruning"):
        raise SystemExit("--recovery needs a space with a pruning: section")
    results: dict[str, Any] = {}
    perplexities: dict[str, float] = {}
    started = time.perf_counter()
    results["full zero-shot"] = evaluate(full_model(experiment), None)
    perplexities["full zero-shot"] = test_perplexity(full_model(experiment), None)
    results["zero-shot"] = evaluate(experiment, None)  # the pruned model, no adapter
    perplexities["zero-shot"] = test_perplexity(experiment, None)
    timings["zero_shot_eval_s"] = time.perf_counter() - started
    adapter, timings["peft_option_text_train_s"] = train_peft_default(experiment, workdir, "option_text")
    started = time.perf_counter()
    results["PEFT default"] = evaluate(experiment, adapter)
    perplexities["PEFT default"] = test_perplexity(experiment, adapter)
    row, best = best_trial(uri, name, workdir / "best")
    results["raysearch best"] = evaluate(experiment, best)
    perplexities["raysearch best"] = test_perplexity(experiment, best)
    timings["adapters_eval_s"] = time.perf_counter() - started
    print_best(row)
    print("rows: the full model zero-shot; the pruned model (zero-shot); the pruned model + each adapter")
    print_table(results)
    shares = print_recovery(results, perplexities)
    differences = print_differences(results)
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {"results": results, "perplexity": perplexities, "recovered": shares, "differences": differences,
            "best": row, "timings": timings}


if __name__ == "__main__":
    main()
