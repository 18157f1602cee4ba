"""raysearch from Python: run a search, read its trials and front, export the best adapter.

    .venv/bin/python examples/python_api.py                 # the demo search, MiniLM, ~3 min on 2 cores
    .venv/bin/python examples/python_api.py --trials 2 --model PATH --out DIR   # what the tests run

Run from the repository root (the demo file's paths are relative to it)."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import raysearch


def main(argv: list[str] | None = None) -> raysearch.Search:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="search.num_trials (default: the file's)")
    parser.add_argument("--model", default=None, help="another model than the file's (a folder or builtin:)")
    parser.add_argument("--out", type=Path, default=None, help="where the results go (default: a new temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="raysearch-example-"))

    overrides = [f"storage={out / 'results'}", f"tracking.mlflow_uri=sqlite:///{out / 'mlflow.db'}"]
    overrides += [f"search.num_trials={args.trials}"] if args.trials else []
    overrides += [f"model={args.model}"] if args.model else []
    try:
        search = raysearch.run("search_spaces/demo.yaml", overrides=overrides, restart=True)
    except raysearch.RaysearchError as err:  # bad input: nothing was started
        raise SystemExit(f"{err}\n(exit code {err.exit_code})")

    print(search.trials()[["trial_id", "status", "variant", "rank", "val_accuracy", "adapter_params", "pareto"]])
    print("Pareto front:", list(search.front["trial_id"]))
    best = search.best
    print(f"best: trial {best.trial_id}, MLflow run {best.run_id}, config {best.config}")
    adapter = search.export(out / "best")  # plain PEFT: PeftModel.from_pretrained(base, adapter)
    print(f"adapter: {adapter}")
    return search


if __name__ == "__main__":
    main()
