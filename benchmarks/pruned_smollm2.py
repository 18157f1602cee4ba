"""A structurally pruned SmolLM2-135M-Instruct (docs/pruning.md): what `pruning:` removes and what
it costs in perplexity, on held-out text.

The recipe of the measurement: 1 of SmolLM2's 3 KV groups (with its 3 query heads) and half of
its 1536 MLP channels removed in every layer (`attention_ratio: 0.34`, `mlp_ratio: 0.5`), ranked
by first-order Taylor importance on 16 ARC-Easy training records (Alpaca prompt + response, cut
to 256 tokens), and the same cut ranked by weight magnitude (no data) beside it. Perplexity is
the mean next-token loss, exponentiated, over every token of 64 ARC-Challenge and 64 OpenBookQA
training records written the same way: text the calibration never saw. The pruned models are
built through trainables/pruning.py exactly as a trial builds them (and cached the same way).

    python benchmarks/pruned_smollm2.py                 # about 2-4 min on 2 CPU cores (SmolLM2 converted first if needed)
    python benchmarks/pruned_smollm2.py --cache /tmp/c  # another cache folder (RAYSEARCH_CACHE)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "commonsense"
RECIPE = {"attention_ratio": 0.34, "mlp_ratio": 0.5,
          "calibration": {"data": str(DATA / "ARC-Easy.train.json"), "examples": 16, "max_tokens": 256, "seed": 0}}
HELD_OUT = [("ARC-Challenge", DATA / "ARC-Challenge.train.json"), ("OpenBookQA", DATA / "openbookqa.train.json")]
HELD_OUT_RECORDS = 64
BATCH = 8


def held_out_texts() -> dict[str, list[str]]:
    """The first 64 readable records of each held-out file, as calibration texts are written."""
    from trainables.pruning_importance import calibration_text, read_records

    texts = {}
    for name, path in HELD_OUT:
        written = [calibration_text(r) for r in read_records(path)]
        texts[name] = [t for t in written if t][:HELD_OUT_RECORDS]
    return texts


def perplexity(folder: str, texts: list[str], max_tokens: int = 256) -> float:
    """The model in `folder` (fp32) on `texts`: harness.perplexity, batches of 8."""
    import torch

    from trainables.models import load_causal_lm

    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    return harness.perplexity(model, tokenizer, texts, max_tokens, BATCH)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help="cache folder (default: RAYSEARCH_CACHE or ~/.cache/raysearch)")
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["RAYSEARCH_CACHE"] = args.cache
    import torch

    from trainables.models import resolve_model_path
    from trainables.pruning import RECIPE_FILE, ensure_pruned, pruning_recipe

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.time()
    base = resolve_model_path("builtin:smollm2")  # converted from the GGUF file once per machine
    print(f"SmolLM2 folder ready in {time.time() - started:.1f} s: {base}")
    texts = held_out_texts()
    rows: dict[str, Any] = {"full": {"folder": base}}
    for importance in ("taylor", "magnitude"):
        section = {**RECIPE, "importance": importance}
        if importance == "magnitude":
            section.pop("calibration")
        recipe = pruning_recipe({"model": "builtin:smollm2", "task": {}, "pruning": section})
        began = time.time()
        folder = ensure_pruned(recipe)
        record = json.loads((folder / RECIPE_FILE).read_text())
        rows[importance] = {"folder": str(folder), "call_s": round(time.time() - began, 1),
                            "build_s": record["build_seconds"], "parameters": record["parameters"],
                            "shape": record["shape_after"]}
        rows["full"].setdefault("parameters", record["parameters"]["before"])
        rows["full"].setdefault("shape", record["shape_before"])
    for name, row in rows.items():
        row["perplexity"] = {source: round(perplexity(row["folder"], items), 2) for source, items in texts.items()}
    print(json.dumps(rows, indent=1))
    print(f"\n{'model':10} {'parameters':>12} {'build s':>8} " + " ".join(f"{s:>14}" for s in texts))
    for name, row in rows.items():
        params = row["parameters"] if name == "full" else row["parameters"]["after"]
        print(f"{name:10} {params:>12,} {row.get('build_s', 0):>8} "
              + " ".join(f"{row['perplexity'][s]:>14.2f}" for s in texts))
    return rows


if __name__ == "__main__":
    main()
