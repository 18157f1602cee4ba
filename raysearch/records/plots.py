"""The files of a search's Pareto front, logged on its parent run when the search ends:
pareto.csv (every finished trial, best first), pareto.png (matplotlib) and pareto.html
(plotly, self-contained). Stopped trials are drawn apart: their values are partial."""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from raysearch.records.mlflow_reader import FINISHED_STATUSES, FRONT_STATUSES, finite, sort_rows

def _param_columns(rows: list[dict], taken: set[str]) -> list[tuple[str, str]]:
    names = sorted({name for row in rows for name in row["params"]})
    return [(name, f"param.{name}" if name in taken else name) for name in names]

def write_csv(path: Path, rows: list[dict], objectives: Mapping[str, str]) -> None:
    head = ["trial_id", "run_name", "status", "pareto", *objectives]
    params = _param_columns(rows, set(head))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head + [column for _, column in params])
        for row in sort_rows(rows, objectives):
            writer.writerow([row[k] for k in head] + [row["params"].get(name, "") for name, _ in params])

def plot_axes(objectives: Mapping[str, str]) -> tuple[str, str]:
    """x: adapter_params (or the second objective); y: the accuracy-like objective."""
    names = list(objectives)
    y = next((n for n in names if n != "adapter_params"), names[0])
    x = "adapter_params" if y != "adapter_params" else (names[1] if len(names) > 1 else y)
    return x, y

def plottable(rows: list[dict], x: str, y: str) -> list[dict]:
    """Rows with both plotted metrics finite, the values copied to "_x" and "_y"."""
    points = []
    for row in rows:
        px, py = row["metrics"].get(x), row["metrics"].get(y)
        if px is not None and py is not None and finite(px) and finite(py):
            points.append({**row, "_x": px, "_y": py})
    return points


PLOT_FINISHED, PLOT_STOPPED, PLOT_FRONT = "finished trials", "stopped early (partial training)", "Pareto front"

def plot_groups(points: list[dict]) -> dict[str, list[dict]]:
    """The plotted points by legend entry, each sorted by x. Stopped trials get their own marker: their
    values are from the last evaluation before the scheduler stopped them, and they are never on the front."""
    finished = [p for p in points if p["status"] in FRONT_STATUSES]
    groups = {
        PLOT_FINISHED: [p for p in finished if not p["pareto"]],
        PLOT_STOPPED: [p for p in points if p["status"] in FINISHED_STATUSES and p["status"] not in FRONT_STATUSES],
        PLOT_FRONT: [p for p in finished if p["pareto"]],
    }
    return {label: sorted(group, key=lambda p: p["_x"]) for label, group in groups.items()}

def write_png(path: Path, rows: list[dict], objectives: Mapping[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = plot_axes(objectives)
    points = plottable(rows, x, y)
    groups = plot_groups(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {PLOT_FINISHED: {"c": "tab:gray", "marker": "o", "alpha": 0.6},
              PLOT_STOPPED: {"c": "tab:orange", "marker": "x", "alpha": 0.8}}
    for label, style in styles.items():
        if groups[label]:
            ax.scatter([p["_x"] for p in groups[label]], [p["_y"] for p in groups[label]], label=label, **style)
    front = groups[PLOT_FRONT]
    if front:
        ax.plot([p["_x"] for p in front], [p["_y"] for p in front], "o-", c="tab:red", label=PLOT_FRONT)
    if points and all(p["_x"] > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    n_finished = len(groups[PLOT_FINISHED]) + len(front)
    ax.set_title(f"{y} vs {x} ({n_finished} finished trials, {len(front)} on the front; "
                 f"{len(groups[PLOT_STOPPED])} stopped early)", fontsize=10)
    if points:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

def write_html(path: Path, rows: list[dict], objectives: Mapping[str, str]) -> None:
    import plotly.graph_objects as go

    x, y = plot_axes(objectives)
    points = plottable(rows, x, y)
    fig = go.Figure()
    styles = {PLOT_FINISHED: ("gray", "circle"), PLOT_STOPPED: ("darkorange", "x"), PLOT_FRONT: ("crimson", "circle")}
    for name, group in plot_groups(points).items():
        if not group:
            continue
        color, symbol = styles[name]
        on_front = name == PLOT_FRONT
        hover = [
            "<br>".join([f"trial {p['trial_id']} ({p['status']})"] + [f"{k}={v}" for k, v in sorted(p["params"].items())])
            for p in group
        ]
        fig.add_trace(
            go.Scatter(
                x=[p["_x"] for p in group],
                y=[p["_y"] for p in group],
                mode="lines+markers" if on_front else "markers",
                name=name,
                marker={"color": color, "size": 9, "symbol": symbol},
                text=hover,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    log_x = bool(points) and all(p["_x"] > 0 for p in points)
    fig.update_layout(xaxis_title=x, yaxis_title=y, xaxis_type="log" if log_x else "linear")
    # The full plotly.js is embedded so the plot also opens on clusters without internet.
    fig.write_html(str(path), include_plotlyjs=True)


def comparison_lines(table: list[dict], compare: list[str]) -> tuple[str, bool, dict[str, list[dict]]]:
    """The comparison plot's x axis (the first compared dimension whose values are all numbers,
    else the first), whether it is numeric, and its lines: one per combination of the other
    compared values, each sorted by x."""
    def numeric(name: str) -> bool:
        try:
            [float(row[name]) for row in table]
        except (TypeError, ValueError):
            return False
        return True

    x = next((name for name in compare if numeric(name)), compare[0])
    lines: dict[str, list[dict]] = {}
    for row in table:
        label = ", ".join(f"{name}={row[name]}" for name in compare if name != x) or "all"
        lines.setdefault(label, []).append(row)
    order = (lambda r: float(r[x])) if numeric(x) else (lambda r: str(r[x]))
    return x, numeric(x), {label: sorted(rows, key=order) for label, rows in lines.items()}


def write_comparison(folder: Path, table: list[dict], compare: list[str], objective: str) -> None:
    """comparison.png and comparison.html: each cell's best (mean over seeds) against the
    numeric compared dimension, one line per other compared value, the spread as error bars."""
    if not table:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    x, numeric, lines = comparison_lines(table, compare)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    figure = go.Figure()
    for label, rows in lines.items():
        xs = [float(r[x]) if numeric else str(r[x]) for r in rows]
        ys, errors = [r["best"] for r in rows], [r["spread"] or 0.0 for r in rows]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        hover = ["<br>".join([f"{k}={v}" for k, v in sorted(r["config"].items())] + [f"seeds={r['seeds']}"]) for r in rows]
        figure.add_trace(go.Scatter(x=xs, y=ys, error_y={"type": "data", "array": errors}, mode="lines+markers",
                                    name=label, text=hover, hovertemplate="%{text}<extra></extra>"))
    if numeric and all(float(r[x]) > 0 for r in table):
        ax.set_xscale("log", base=2)
        figure.update_xaxes(type="log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"best {objective} of the cell (mean over seeds)")
    ax.set_title(f"{objective} by {' x '.join(compare)}: each cell at its own tuned values", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=120)
    plt.close(fig)
    figure.update_layout(xaxis_title=x, yaxis_title=f"best {objective} (mean over seeds)")
    figure.write_html(str(folder / "comparison.html"), include_plotlyjs=True)

