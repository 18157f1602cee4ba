"""The tables raysearch prints in the terminal (rich): a search's leaderboard, read from
MLflow, and the scores of `raysearch evaluate`."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from raysearch.runs import cell_table, leaderboard as rows_for, search_objectives


def evaluation_table(label: str, result: Any) -> Table:
    """`raysearch evaluate`: the score per source and overall, its interval and the baselines."""
    table = Table(title=f"{label}\n{result.data}")
    readings = getattr(result, "option_correct", None)  # causal_lm records that offer options
    columns = ["source", "records", result.metric, "95% interval", "majority", "chance"]
    if readings:
        columns[3:3] = ["reading", "option acc", "option acc_norm"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("source", "reading") else "right")
    for score in [*result.per_source, result.overall]:
        row = [score.source, str(score.n), f"{score.value:.4f}", f"{score.low:.4f} - {score.high:.4f}",
               fmt(score.majority), fmt(score.chance)]
        if readings:
            row[3:3] = [score.reading, fmt(score.acc), fmt(score.acc_norm)]
        table.add_row(*row)
    return table


def leaderboard_table(mlflow_uri: str, name: str, *, pareto: bool, top: int | None) -> Table:
    """The latest search's trials, best first (or its Pareto front); ValueError when there is no such search."""
    nested = rows_for(mlflow_uri, name, pareto_only=pareto, top=top)
    # Sampled params win over metrics of the same name (the metric `lr` is the schedule's value).
    rows = [{**row["metrics"], **{k: number(v) for k, v in row["params"].items()},
             **{k: v for k, v in row.items() if k not in ("params", "metrics")}} for row in nested]
    # The `pareto` flag comes from runs.rows_of: only trials that ran to the end are on the front.
    title = "Pareto front (finished trials)" if pareto else "leaderboard"
    table = Table(title=f"{name}: {title} ({len(rows)} trials)")
    metrics = sorted({k for r in rows for k in r if k.startswith("val_") and k != "val_loss"})
    columns = [c for c in ("trial_id", "variant", "rank", "alpha", "scaling_rule", "lr", *metrics,
                           "val_loss", "adapter_params", "status", "pareto")
               if any(c in r for r in rows)]
    for c in columns:
        table.add_column(c, justify="left" if c in ("trial_id", "variant", "scaling_rule", "status") else "right")
    for r in rows:
        table.add_row(*(r["trial_id"][:8] if c == "trial_id" else fmt(r.get(c)) for c in columns))
    return table


def number(text: str) -> object:
    """MLflow params are strings: show numbers as numbers."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"  # parameter counts come back from MLflow as floats
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cells_table(mlflow_uri: str, name: str, by: list[str]) -> Table:
    """`leaderboard --by`: each cell's best configuration (its objective averaged over seeds),
    the spread over seeds, and the values it was tuned to (e.g. its lr)."""
    rows = rows_for(mlflow_uri, name)
    known = sorted({k for r in rows for k in r["params"]})
    unknown = [d for d in by if d not in known]
    if unknown:
        raise ValueError(f"--by {','.join(by)}: no trial of search {name!r} has {unknown}; its params: {known}")
    objective, sense = next(iter(search_objectives(mlflow_uri, name).items()))
    cells = cell_table(rows, by, objective, sense)
    table = Table(title=f"{name}: best of each cell by {objective} ({sense}), completed trials, mean over seeds")
    tuned = sorted({k for c in cells for k in c["config"]})
    for column in (*by, "trials", objective, "± spread", "seeds", *tuned, "its trials"):
        table.add_column(column, justify="left" if column in by else "right")
    for c in cells:
        table.add_row(*(str(c[d]) for d in by), str(c["trials"]), fmt(c["best"]), fmt(c["spread"]), str(c["seeds"]),
                      *(fmt(number(c["config"].get(k))) if k in c["config"] else "-" for k in tuned),
                      " ".join(t[:8] for t in c["trial_ids"]))
    return table

