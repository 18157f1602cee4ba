"""The tables raysearch prints in the terminal (rich): a search's leaderboard and cells (the
DataFrames of raysearch/api.py), and the scores of `raysearch evaluate`."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    import pandas


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


def leaderboard_table(trials: pandas.DataFrame, name: str, *, pareto: bool) -> Table:
    """`raysearch leaderboard`: the rows of `api.leaderboard`, best first (or its Pareto front)."""
    # a column one trial lacks is NaN in the others' DataFrame row: shown as missing
    rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in trials.to_dict("records")]
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


def cells_table(cells: pandas.DataFrame, name: str) -> Table:
    """`raysearch leaderboard --by`: the rows of `api.cells`, each cell's best configuration
    (its objective averaged over seeds), the spread over seeds, and the values it was tuned to."""
    by, objective, sense = cells.attrs["by"], cells.attrs["objective"], cells.attrs["sense"]
    rows = cells.to_dict("records")
    table = Table(title=f"{name}: best of each cell by {objective} ({sense}), completed trials, mean over seeds")
    tuned = sorted({k for c in rows for k in c["config"]})
    for column in (*by, "trials", objective, "± spread", "seeds", *tuned, "its trials"):
        table.add_column(column, justify="left" if column in by else "right")
    for c in rows:
        table.add_row(*(str(c[d]) for d in by), str(c["trials"]), fmt(c["best"]), fmt(c["spread"]), str(c["seeds"]),
                      *(fmt(number(c["config"].get(k))) if k in c["config"] else "-" for k in tuned),
                      " ".join(t[:8] for t in c["trial_ids"]))
    return table

