"""raysearch's multiple-choice scoring against lm-evaluation-harness, on the same records.

`raysearch evaluate --base` with `task.scoring: options` scores SmolLM2-135M-Instruct
(builtin:smollm2, the de-quantised 4-bit GGUF weights) without an adapter on the test split of
`search_spaces/commonsense_smol.yaml` (20% of every training file, test_seed 0). The same
records, as {question, choices, gold}, then go to lm-evaluation-harness 0.4 (`lm_eval`,
`simple_evaluate` with its `hf` model on the same local folder) as a custom multiple-choice
task with the harness's ARC prompt ("Question: {{question}}\\nAnswer:", target delimiter " ").
The script prints each scorer's acc and acc_norm per source with 95% Wilson intervals, the
share of records on which the two pick the same option, and published zero-shot numbers for
the model. The harness is an independent implementation: nothing of raysearch's scoring is
used on its side.

    pip install 'lm-eval>=0.4.13,<0.5'      # or: pip install -e '.[harness]'
    python benchmarks/harness_agreement.py  # ARC-Easy and ARC-Challenge, up to 300 records each
    python benchmarks/harness_agreement.py --sources ARC-Easy,ARC-Challenge,openbookqa,boolq --max-examples 200
"""
from __future__ import annotations

import argparse
import json
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
# Zero-shot lm-evaluation-harness numbers published for HuggingFaceTB/SmolLM2-135M-Instruct (full
# precision, the ARC *test* sets): the baseline column of a third-party model card that ran
# lm-eval 0-shot (https://huggingface.co/lldois/SmolLM2-135M-Reasoning-SLERP-Champion).
PUBLISHED = {"ARC-Easy": ("acc", 0.5412), "ARC-Challenge": ("acc_norm", 0.2773)}
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: gold
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""


def experiment(sources: list[str], max_examples: int) -> dict[str, Any]:
    import yaml

    from raysearch.records.score_trial import worker_experiment
    from raysearch.experiment.spec import spec_from_dict

    raw = yaml.safe_load(SPACE.read_text())
    raw["task"]["dataset"] = [s for s in raw["task"]["dataset"] if isinstance(s, str) and any(
        Path(s).name.startswith(f"{name}.") for name in sources)]
    raw["task"].update(scoring="options", max_test_examples=max_examples)
    return worker_experiment(spec_from_dict(raw))


def test_items(exp: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The test split's multiple-choice items per source, in raysearch's order."""
    from trainables.choices import read_choice
    from trainables.instruction_data import load_instruction_splits

    items: dict[str, list[dict[str, Any]]] = {}
    for record in load_instruction_splits(exp["task"], seed=exp["train"]["seed"])["test"]:
        choice = read_choice(record)
        items.setdefault(record["source"], []).append(
            {"question": choice.question, "choices": list(choice.options), "gold": choice.gold})
    return items


def run_harness(items: dict[str, list[dict[str, Any]]], model_dir: str, folder: Path) -> dict[str, Any]:
    """lm-evaluation-harness on the items: {source: {"acc", "acc_norm", "picks": [(acc, acc_norm)]}}."""
    import numpy as np
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = {}
    for source, docs in items.items():
        task = "raysearch_" + source.lower().replace("-", "_")
        data = folder / f"{task}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        (folder / f"{task}.yaml").write_text(TASK_YAML.format(task=task, data=data))
        tasks[task] = source
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=list(tasks),
                          task_manager=TaskManager(include_path=str(folder)), batch_size=16, device="cpu",
                          log_samples=True, num_fewshot=0)
    found = {}
    for task, source in tasks.items():
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        picks = []
        for sample in samples:
            lls = np.array([float(r[0]) for r in sample["filtered_resps"]])
            lengths = np.array([float(len(c)) for c in sample["doc"]["choices"]])
            picks.append((int(np.argmax(lls)), int(np.argmax(lls / lengths))))
        found[source] = {"acc": out["results"][task]["acc,none"], "acc_norm": out["results"][task]["acc_norm,none"],
                         "picks": picks}
    return found


def raysearch_picks(exp: dict[str, Any]) -> tuple[Any, dict[str, list[tuple[int, int]]]]:
    """`raysearch evaluate --base`'s result and its (acc, acc_norm) pick per record, per source."""
    from trainables.evaluation import evaluate

    result = evaluate(exp, None)
    by_source: dict[str, list[tuple[int, int]]] = {}
    for source, pick in zip(result.sources, result.option_picks):
        by_source.setdefault(source, []).append(pick)
    return result, by_source


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default="ARC-Easy,ARC-Challenge")
    parser.add_argument("--max-examples", type=int, default=300, help="test records per source")
    args = parser.parse_args(argv)
    os.chdir(harness.REPO)
    harness.quiet()
    from trainables.evaluation import proportion_interval
    from trainables.models import resolve_model_path

    exp = experiment(args.sources.split(","), args.max_examples)
    items = test_items(exp)
    started = time.perf_counter()
    ours, our_picks = raysearch_picks(exp)
    ours_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        theirs = run_harness(items, resolve_model_path(exp["model"]), Path(tmp))
        theirs_s = time.perf_counter() - started
    print(f"\nSmolLM2-135M-Instruct (Q4_1 GGUF de-quantised), zero-shot, {ours.data}")
    print(f"{'source':<15}{'n':>5}  {'metric':<9}{'raysearch':>24}{'lm-eval harness':>24}  same pick  published")
    rows = []
    for score in ours.per_source or [ours.overall]:
        source, n = score.source, score.n
        for k, metric in enumerate(("acc", "acc_norm")):
            mine = getattr(score, metric)
            same = sum(a[k] == b[k] for a, b in zip(our_picks[source], theirs[source]["picks"])) / n
            low, high = proportion_interval(round(mine * n), n)
            hl, hh = proportion_interval(round(theirs[source][metric] * n), n)
            published = PUBLISHED.get(source)
            quoted = f"{published[1]:.3f}" if published and published[0] == metric else ""
            print(f"{source:<15}{n:>5}  {metric:<9}{mine:>7.3f} [{low:.3f}, {high:.3f}]"
                  f"{theirs[source][metric]:>7.3f} [{hl:.3f}, {hh:.3f}]  {same:>8.1%}  {quoted:>9}")
            rows.append({"source": source, "metric": metric, "n": n, "raysearch": mine,
                         "harness": theirs[source][metric], "same_pick": same, "published": quoted})
    print(f"timings: raysearch {ours_s:.0f} s, lm-eval harness {theirs_s:.0f} s")
    return {"rows": rows}


if __name__ == "__main__":
    main()
