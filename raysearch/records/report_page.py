"""`raysearch report NAME`: one self-contained HTML page of a search (plotly, offline).

The page holds, from the search's MLflow runs and its Optuna journal: the Pareto front of
the trials that ran to the end (trials stopped early by the scheduler drawn apart, never on
it; a click opens the trial's MLflow run), every trial's validation curves coloured by how
it ended (the scheduler's cuts show as curves that stop), which
hyperparameters mattered for each objective and the marginal effect of the top two, where
the adaptive variants' best trials put their ranks, and the leaderboard.

Hyperparameter importance is Optuna's fANOVA evaluator (`FanovaImportanceEvaluator`, a
random forest fitted to the finished trials, its variance split over the parameters): it
is Optuna's default, it works from a handful of trials, and it is seeded here so the page is
the same each time. PED-ANOVA, Optuna's other dependency-light evaluator, compares the top
quantile of trials with the rest and needs more trials than a short search has.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainables.contract import FINISHED  # ended without failing (the rank heatmaps draw these)

STATUS_COLOURS = {"completed": "#1f77b4", "early_stopped": "#ff7f0e", "diverged": "#9467bd", "error": "#d62728",
                  "interrupted": "#7f7f7f", "running": "#7f7f7f"}
MIN_TRIALS_FOR_IMPORTANCE = 3
CONFIG_KEYS = ("variant", "rank", "alpha", "scaling", "scaling_rule", "lr", "loraplus_ratio", "target_modules")


# MLflow 3's UI opens an experiment on its GenAI overview (traces) unless the URL (or the
# user's last choice, kept in the browser) says the workflow is model training.
ML_WORKFLOW = "workflowType=machine_learning"


def experiment_url(mlflow_ui: str, experiment_id: str) -> str:
    return f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}?{ML_WORKFLOW}"


def run_url(mlflow_ui: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_WORKFLOW}"


def _config_text(row: dict) -> str:
    params = row["params"]
    shown = [f"{key}={params[key]}" for key in CONFIG_KEYS if key in params]
    shown += [f"{key}={value}" for key, value in sorted(params.items()) if key not in CONFIG_KEYS and "." not in key]
    return "<br>".join([f"trial {row['trial_id']} ({row['status']})", *shown])


def pareto_axes(objectives: dict[str, str]) -> tuple[str, str]:
    """(x, y): the first objective up the y axis; the second (adapter_params by default) across."""
    names = list(objectives)
    return (names[1] if len(names) > 1 else "adapter_params"), names[0]


def pareto_figure(record: dict, mlflow_ui: str) -> go.Figure:
    x_name, y_name = pareto_axes(record["objectives"])
    figure = go.Figure()
    rows = [r for r in record["rows"] if r["metrics"].get(x_name) is not None and r["metrics"].get(y_name) is not None]

    # The front holds only trials that ran to the end: a trial stopped early by the scheduler shows its values
    # at its last evaluation (partial training), with its own marker, and is never on the front.
    def on_front(r: dict) -> bool:
        return r["status"] == "completed" and bool(r["pareto"])

    groups = [("not finished (error, diverged, interrupted)", lambda r: r["status"] not in FINISHED, "#c7c7c7",
               "circle-open"),
              ("finished, dominated", lambda r: r["status"] == "completed" and not r["pareto"], "#9ecae1", "circle"),
              ("stopped early (partial training)", lambda r: r["status"] in FINISHED and r["status"] != "completed",
               "#ff7f0e", "x"),
              ("Pareto front (finished)", on_front, "#1f77b4", "diamond")]
    for label, keep, colour, symbol in groups:
        chosen = [r for r in rows if keep(r)]
        if not chosen:
            continue
        front = keep is on_front
        figure.add_trace(go.Scatter(
            x=[r["metrics"][x_name] for r in chosen], y=[r["metrics"][y_name] for r in chosen], mode="markers",
            name=label, marker={"color": colour, "symbol": symbol, "size": 12 if front else 9},
            text=[_config_text(r) for r in chosen], hovertemplate="%{text}<extra></extra>",
            customdata=[run_url(mlflow_ui, record["experiment_id"], r["run_id"]) for r in chosen]))
    front = sorted((r for r in rows if on_front(r)), key=lambda r: r["metrics"][x_name])
    if len(front) > 1:
        figure.add_trace(go.Scatter(x=[r["metrics"][x_name] for r in front], y=[r["metrics"][y_name] for r in front],
                                    mode="lines", line={"color": "#1f77b4", "dash": "dot"}, hoverinfo="skip",
                                    showlegend=False))
    figure.update_layout(title=f"Pareto front: {y_name} ({record['objectives'][y_name]}) vs {x_name}",
                         xaxis_title=x_name, yaxis_title=y_name, xaxis_type="log" if x_name == "adapter_params" else None,
                         height=480)
    return figure


def curves_figure(record: dict) -> go.Figure:
    """val_loss and the first validation objective against the step, one line per trial."""
    metric = next((k for k in record["objectives"] if k.startswith("val_")), None)
    names = ["val_loss", *([metric] if metric and metric != "val_loss" else [])]
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    shown: set[str] = set()
    for row in record["rows"]:
        status, colour = row["status"], STATUS_COLOURS.get(row["status"], "#7f7f7f")
        for column, name in enumerate(names, start=1):
            points = record["curves"].get(row["trial_id"], {}).get(name, [])
            if not points:
                continue
            figure.add_trace(go.Scatter(
                x=[step for step, _ in points], y=[value for _, value in points], mode="lines+markers",
                line={"color": colour, "width": 1.5}, marker={"size": 4}, name=status, legendgroup=status,
                showlegend=status not in shown, text=_config_text(row), hovertemplate="%{text}<br>step %{x}: %{y:.4g}"
                "<extra></extra>"), row=1, col=column)
            shown.add(status)
        figure.update_xaxes(title_text="step")
    figure.update_layout(title="Validation curves (colour: how the trial ended)", height=420)
    return figure


def importances(study: Any, objectives: dict[str, str]) -> dict[str, dict[str, float]]:
    """Objective -> parameter -> importance (fANOVA, seeded; normalised to sum to 1). An
    objective every finished trial scored the same on has no variance to split: {}."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    finished = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if len(finished) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    found = {}
    for index, name in enumerate(objectives):
        if len({trial.values[index] for trial in finished}) < 2:
            found[name] = {}
            continue
        found[name] = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                            target=lambda trial, i=index: trial.values[i], normalize=True)
    return found


def importance_figures(study: Any, objectives: dict[str, str], found: dict[str, dict[str, float]]) -> list[go.Figure]:
    """Per objective: the importances as bars, then the objective against each of the top two."""
    import optuna

    figures = []
    for index, (name, scores) in enumerate(found.items()):
        if not scores:  # a constant objective: nothing mattered, and fANOVA cannot say so itself
            note = go.Figure()
            note.add_annotation(text=f"Every finished trial has the same {name}: no hyperparameter changed it.",
                                showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
            note.update_layout(title=f"Which hyperparameters mattered for {name}", height=160,
                               xaxis={"visible": False}, yaxis={"visible": False})
            figures.append(note)
            continue
        ordered = sorted(scores.items(), key=lambda item: item[1])
        bars = go.Figure(go.Bar(x=[v for _, v in ordered], y=[k for k, _ in ordered], orientation="h",
                                marker_color="#1f77b4"))
        bars.update_layout(title=f"Which hyperparameters mattered for {name} (fANOVA importance, sums to 1)",
                           xaxis_title="importance", height=160 + 30 * len(ordered))
        figures.append(bars)
        top = [k for k, _ in sorted(scores.items(), key=lambda item: -item[1])[:2]]
        if top:
            marginal = optuna.visualization.plot_slice(study, params=top, target=lambda t, i=index: t.values[i],
                                                       target_name=name)
            marginal.update_layout(title=f"{name} against its two most important hyperparameters", height=380)
            figures.append(marginal)
    return figures


def rank_figures(record: dict) -> list[go.Figure]:
    """The rank allocation of each adaptive variant's best trial (rows come best first); a
    variant whose allocation is the same rank in every module has nothing to show."""
    from raysearch.records.ranks import grid

    figures, seen = [], set()
    for row in record["rows"]:
        variant = row["params"].get("variant", "?")
        allocation = record["ranks"].get(row["trial_id"])
        if not allocation or variant in seen or row["status"] not in FINISHED:
            continue
        if len(set(allocation.values())) < 2:
            continue  # the same rank everywhere (LoRA, DoRA, ...): nothing was reallocated
        seen.add(variant)
        layers, kinds, values = grid(allocation)
        heat = go.Figure(go.Heatmap(z=values, x=kinds, y=[f"layer {layer}" for layer in layers], colorscale="Viridis",
                                    text=values, texttemplate="%{text:.0f}", colorbar={"title": "rank"}))
        heat.update_layout(title=f"{variant}: live rank per module, best trial {row['trial_id']} "
                                 f"(total {int(sum(allocation.values()))})", height=200 + 28 * len(layers))
        figures.append(heat)
    return figures


def _number(value: Any) -> Any:
    """MLflow params are strings: a float-looking one becomes a float (shown to 4 digits)."""
    if isinstance(value, str) and any(c in value for c in ".e") and not value.isalpha():
        try:
            return float(value)
        except ValueError:
            return value
    return value


def leaderboard_html(record: dict, mlflow_ui: str) -> str:
    objectives = list(record["objectives"])
    columns = ["trial", *[k for k in CONFIG_KEYS if any(k in r["params"] for r in record["rows"])], *objectives,
               *(["val_loss"] if "val_loss" not in objectives else []), "status", "Pareto"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in record["rows"]:
        cells = []
        for column in columns:
            if column == "trial":
                url = run_url(mlflow_ui, record["experiment_id"], row["run_id"])
                cells.append(f'<a href="{html.escape(url)}">{html.escape(row["trial_id"])}</a>')
            elif column == "status":
                cells.append(html.escape(row["status"]))
            elif column == "Pareto":
                cells.append("yes" if row["pareto"] else "")
            else:
                value = _number(row["params"].get(column, row["metrics"].get(column)))
                cells.append(html.escape(f"{value:.4g}" if isinstance(value, float) else str(value if value is not None
                                                                                              else "-")))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CLICK_TO_RUN = """<script>
for (const plot of document.querySelectorAll('.plotly-graph-div')) {
  plot.on('plotly_click', (event) => {
    const url = event.points[0].customdata;
    if (typeof url === 'string' && url.startsWith('http')) window.open(url, '_blank');
  });
}
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f3f3f3; } .note { color: #555; font-size: 14px; }
</style>"""


def build_report(name: str, record: dict, study: Any | None, mlflow_ui: str) -> str:
    """The page, plotly.js inlined once (about 4.6 MB; opens offline, no server)."""
    found = importances(study, record["objectives"]) if study is not None else {}
    sections: list[tuple[str, list[go.Figure] | str]] = [
        ("Pareto front", [pareto_figure(record, mlflow_ui)]),
        ("Learning curves", [curves_figure(record)]),
        ("Hyperparameter importance", importance_figures(study, record["objectives"], found) if found else
         f"Needs at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials in the Optuna study."),
        ("Rank allocation of the adaptive variants", rank_figures(record) or
         "No trial of a variant that reallocates ranks (AdaLoRA, ALoRA, GoRA, SoRA, SaLoRA) finished."),
    ]
    parts, first = [], True
    for title, content in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(content, str):
            parts.append(f'<p class="note">{html.escape(content)}</p>')
            continue
        for figure in content:
            parts.append(figure.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            first = False
    parts.append("<h2>Leaderboard</h2>" + leaderboard_html(record, mlflow_ui))
    counts: dict[str, int] = {}
    for row in record["rows"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    objectives = ", ".join(f"{k} ({v})" for k, v in record["objectives"].items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>raysearch: {html.escape(name)}</title>{_STYLE}"
            f"</head><body><h1>raysearch search <code>{html.escape(name)}</code></h1>"
            f'<p class="note">{len(record["rows"])} trials: {html.escape(summary)}. Objectives: {html.escape(objectives)}. '
            f"A click on a point of the front opens the trial's run in the MLflow UI at {html.escape(mlflow_ui)}.</p>"
            + "".join(parts) + _CLICK_TO_RUN + "</body></html>")


def write_report(name: str, storage_dir: str, mlflow_uri: str, out: Path, mlflow_ui: str) -> tuple[Path, str]:
    """Write the page to `out` and log it on the search's parent MLflow run; returns the page
    and the search's MLflow experiment page (training runs)."""
    from raysearch.records.mlflow_reader import log_report, search_record

    record = search_record(mlflow_uri, name)
    study = load_study(storage_dir, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(name, record, study, mlflow_ui))
    log_report(mlflow_uri, record["parent_run_id"], out)
    return out, experiment_url(mlflow_ui, record["experiment_id"])


def load_study(storage_dir: str, name: str) -> Any | None:
    """The search's Optuna study from its journal (None when there is none)."""
    import tempfile

    import optuna

    from raysearch.search import storage
    journal = storage.journal_file(storage_dir, name)
    if not journal.is_file():
        text = storage.read_text(storage_dir, storage.JOURNAL)  # an object store's copy
        if text is None:
            return None
        journal = Path(tempfile.mkdtemp(prefix="raysearch-journal-")) / storage.JOURNAL
        journal.write_text(text)
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
