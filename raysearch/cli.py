"""The `raysearch` command line: parses, calls, prints."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from raysearch.experiment.redaction import redact
from raysearch.experiment.spec import DEFAULT_STORAGE, SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Search LoRA-family adapter configurations.")
# Logs and CI are not terminals: give tables room instead of Rich's 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=160)
BAD_INPUT = 2


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(BAD_INPUT)


def load_or_exit(space: Path, overrides: list[str], **cli: object):
    try:
        return load_spec(space, overrides, **cli)
    except SpecError as err:
        console.print(f"[bold red]{space}: invalid experiment file[/]", highlight=False, soft_wrap=True)
        console.print(str(err), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(BAD_INPUT) from None


@app.command()
def validate(space: Path = typer.Argument(..., help="Experiment YAML file"),
             set_: List[str] = typer.Option([], "--set", help="dotted.key=value override (repeatable)")) -> None:
    """Check an experiment file without running anything."""
    spec = load_or_exit(space, set_)
    console.print(f"[green]ok[/] {space}: search '{spec.name}', {len(spec.search.space)} dimensions, "
                  f"sampler {spec.search.sampler}", highlight=False, soft_wrap=True)


@app.command()
def run(
    space: Path = typer.Option(..., "--space", help="Experiment YAML file"),
    name: Optional[str] = typer.Option(None, "--name", help="Search name (default: the file's `name`)"),
    num_trials: Optional[int] = typer.Option(None, "--num-trials", help="Override search.num_trials"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Override tracking.mlflow_uri"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Results folder (default ./raysearch_results)"),
    set_: List[str] = typer.Option([], "--set", help="dotted.key=value override (repeatable)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Same as --restart"),
    restart: bool = typer.Option(False, "--restart", help="Delete this search's earlier results and start over"),
    resume_: bool = typer.Option(False, "--resume", help="Continue this search's earlier results (as `raysearch resume`)"),
) -> None:
    """Run a search: Ray Tune + Optuna over the space, each trial a training run (Ray Train for multi-worker)."""
    from raysearch import api

    spec = load_or_exit(space, set_, name=name, num_trials=num_trials, mlflow_uri=mlflow_uri, storage=storage)
    overwrite = overwrite or restart
    if resume_ and overwrite:
        fail("give one of --resume and --restart (--overwrite), not both.")
    if resume_ and has_results(spec.storage_dir):
        resume_from(spec.name, spec.storage or DEFAULT_STORAGE, mlflow_uri, retry_errored=False)
        return
    try:
        api.check(spec, spec.storage_dir, restart=overwrite)  # before Ray, MLflow or any folder is touched
        search = api.execute(spec, restart=overwrite, progress=console)
    except api.RaysearchError as err:
        report_error(err)
    except KeyboardInterrupt:
        finish(spec.name, spec.storage_dir, interrupted=True)
    print_leaderboard(search)
    finish(search.name, search.storage_dir)


def report_error(err) -> None:
    """A RaysearchError as the CLI prints it, then its exit code."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, soft_wrap=True)
    for line in err.problems:
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(err.exit_code)


def finish(name: str, storage_dir: str, interrupted: bool = False) -> None:
    """The closing summary (trials by status, errors grouped by cause) and the exit code that
    tells a script the truth (raysearch/search/outcome.py: 0, 3 nothing finished, 130 interrupted)."""
    from raysearch.search.outcome import EXIT_INTERRUPTED, exit_code, read_outcome, summary

    outcome = read_outcome(storage_dir)
    code = EXIT_INTERRUPTED if interrupted else exit_code(outcome)
    for line in summary(outcome):
        console.print(line.replace("NAME", name), highlight=False, markup=False, soft_wrap=True)
    if interrupted and exit_code(outcome) != EXIT_INTERRUPTED:  # the summary has not said so itself
        console.print(f"interrupted: `raysearch resume {name}` continues it", highlight=False, markup=False)
    raise typer.Exit(code)


def has_results(storage_dir: str) -> bool:
    """Whether a search started in `storage_dir` (raysearch.api.has_results)."""
    from raysearch import api

    try:
        return api.has_results(storage_dir)
    except api.RaysearchError as err:
        report_error(err)
        raise


@app.command()
def resume(
    name: str = typer.Argument(..., help="Search name (its folder under --storage)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Results folder the search ran with "
                                          "(default ./raysearch_results)"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow store (default: the one it ran with)"),
    retry_errored: bool = typer.Option(False, "--retry-errored", help="Run errored trials again (from their last checkpoint, when they have one)"),
) -> None:
    """Continue an interrupted search (crash, Ctrl-C, lost node) from its results folder.

    Finished trials are kept, unfinished ones continue, the Optuna study and the MLflow
    runs are the same ones; the experiment is read from <storage>/<name>/experiment.yaml.
    """
    resume_from(name, storage or DEFAULT_STORAGE, mlflow_uri, retry_errored=retry_errored)


def resume_from(name: str, storage_root: str, mlflow_uri: str | None, *, retry_errored: bool) -> None:
    from raysearch import api

    try:
        search = api.resume_search(name, storage=storage_root, mlflow_uri=mlflow_uri, retry_errored=retry_errored,
                                   progress=console)
    except api.RaysearchError as err:
        report_error(err)
    except KeyboardInterrupt:
        finish(name, search_folder(name, storage_root), interrupted=True)
    print_leaderboard(search)
    finish(search.name, search.storage_dir)


@app.command()
def launch(
    cluster: Path = typer.Option(..., "--cluster", help="Ray cluster launcher YAML (see cluster.yaml)"),
    space: Path = typer.Option(..., "--space", help="Experiment YAML file, inside the working dir"),
    name: Optional[str] = typer.Option(None, "--name", help="Search name (default: the file's `name`)"),
    num_trials: Optional[int] = typer.Option(None, "--num-trials", help="Override search.num_trials"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow server the driver writes to"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Shared results location: s3://, gs:// or file:///shared/path"),
    set_: List[str] = typer.Option([], "--set", help="dotted.key=value override (repeatable)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete this search's earlier results first"),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="Project folder uploaded with the job"),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Local port of the tunnel to the head's dashboard"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the ray commands, run nothing"),
) -> None:
    """Run a search on an autoscaling Ray cluster: `ray up`, then the search as a Ray job, logs streamed."""
    from raysearch.search import storage as storages
    from raysearch.search.cluster import ClusterSetupError, execute, launch_plan, validate_cluster_config

    spec = load_or_exit(space, set_, name=name, num_trials=num_trials, mlflow_uri=mlflow_uri, storage=storage)
    problems = storages.multi_node_problems(spec.storage or DEFAULT_STORAGE, spec.tracking.mlflow_uri)
    if problems:
        fail("a cluster's nodes must all reach the results and the driver's MLflow store:\n  - "
             + "\n  - ".join(problems))
    run_args = [*(f"--set={item}" for item in set_)]
    for option, value in (("--name", name), ("--num-trials", num_trials), ("--mlflow-uri", mlflow_uri),
                          ("--storage", storage)):
        if value is not None:
            run_args.append(f"{option}={value}")
    if overwrite:
        run_args.append("--overwrite")
    try:
        validate_cluster_config(cluster)
        plan = launch_plan(cluster, space, run_args, working_dir, dashboard_port)
    except ClusterSetupError as err:
        fail(str(err))

    def echo(line: str) -> None:  # the commands run with the real URIs; what is printed has no password
        console.print(redact(line), highlight=False, markup=False, soft_wrap=True)

    if dry_run:
        for line in plan.lines():
            echo(line)
        return
    try:
        code = execute(plan, echo)
    except ClusterSetupError as err:
        fail(str(err))
    print_where(spec)
    if code:
        raise typer.Exit(code)


def print_where(spec) -> None:
    """Where a launched search's results and MLflow runs are."""
    uri = redact(spec.tracking.mlflow_uri)
    ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    for line in (f"results:  {spec.storage_dir}", f"MLflow UI: {ui}  (experiment '{spec.name}')",
                 f"leaderboard: raysearch leaderboard {spec.name} --mlflow-uri {uri}"):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def leaderboard(
    name: str = typer.Argument(..., help="Search name"),
    pareto: bool = typer.Option(False, "--pareto", help="Only the Pareto front (trials that ran to the end)"),
    top: Optional[int] = typer.Option(None, "--top", help="Show the best N"),
    mlflow_uri: str = typer.Option("sqlite:///mlflow.db", "--mlflow-uri"),
    by: Optional[str] = typer.Option(None, "--by", help="Comma-separated dimensions (a comparison's, e.g. "
                                     "scaling,rank): the best configuration of each cell, mean ± spread over seeds"),
) -> None:
    """Ranked table of a search's trials, read from MLflow."""
    from raysearch import api
    from raysearch.records.tables import cells_table, leaderboard_table

    try:
        if by:
            console.print(cells_table(api.cells(name, [d.strip() for d in by.split(",") if d.strip()],
                                                mlflow_uri=mlflow_uri), name))
        else:
            console.print(leaderboard_table(api.leaderboard(name, mlflow_uri=mlflow_uri, pareto=pareto, top=top),
                                            name, pareto=pareto))
    except api.RaysearchError as err:
        report_error(err)


def search_folder(name: str, storage_root: str) -> str:
    """`<storage>/<name>` as `run` wrote it (a local path resolved, a URI kept)."""
    from raysearch.search.storage import search_dir

    return search_dir(storage_root, name)


@app.command()
def report(
    name: str = typer.Argument(..., help="Search name"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Results folder the search ran with "
                                          "(default ./raysearch_results): its Optuna journal"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default <storage>/<name>/report.html)"),
    mlflow_uri: str = typer.Option("sqlite:///mlflow.db", "--mlflow-uri"),
    mlflow_ui: str = typer.Option("http://127.0.0.1:5000", "--mlflow-ui", help="Where `mlflow ui` serves the store "
                                  "(the page links each trial to its run there)"),
) -> None:
    """One self-contained HTML page of a search: Pareto front, learning curves, hyperparameter
    importance, rank allocations, leaderboard. Also logged on the search's MLflow run."""
    from raysearch import api

    try:
        page = api.report(name, storage=storage, out=out, mlflow_uri=mlflow_uri, mlflow_ui=mlflow_ui)
    except api.RaysearchError as err:
        report_error(err)
    console.print(f"report: {page.path} (open it in a browser; also on the search's MLflow run as report.html)",
                  highlight=False, markup=False, soft_wrap=True)
    console.print(f"MLflow: {page.mlflow_page}  (with `mlflow ui --backend-store-uri {redact(mlflow_uri)}` running)",
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def dashboard(
    name: str = typer.Argument(..., help="Search name"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Results folder the search ran with "
                                          "(default ./raysearch_results)"),
    port: int = typer.Option(8080, "--port", help="Port on 127.0.0.1"),
) -> None:
    """Serve the search's Optuna study with optuna-dashboard on 127.0.0.1 (Pareto front,
    history, parameter importances), read from the journal the search writes."""
    from raysearch.search import storage as storages
    folder = search_folder(name, storage or DEFAULT_STORAGE)
    journal = storages.journal_file(folder, name)
    if not journal.is_file():
        fail(f"dashboard: no Optuna journal for search '{name}' at {journal}. Pass --storage DIR, the folder "
             "the search ran with.")
    import optuna
    from optuna_dashboard import run_server

    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    console.print(f"optuna-dashboard for '{name}' at http://127.0.0.1:{port} (Ctrl-C to stop)", highlight=False)
    run_server(optuna.storages.JournalStorage(backend), host="127.0.0.1", port=port)


@app.command()
def export(
    name: str = typer.Argument(..., help="Search name"),
    out_dir: Path = typer.Argument(..., help="Folder to write adapter/ and experiment.yaml into"),
    best: bool = typer.Option(False, "--best", help="The best trial that ran to the end"),
    trial: Optional[str] = typer.Option(None, "--trial", help="Tune trial id (or prefix), MLflow run id or run name"),
    mlflow_uri: str = typer.Option("sqlite:///mlflow.db", "--mlflow-uri"),
) -> None:
    """Write a trial's adapter (plain PEFT LoRA) and an experiment file that retrains it."""
    if best == (trial is not None):
        fail("export: give exactly one of --best or --trial ID.")
    from raysearch import api

    try:
        done = api.export(name, out_dir, trial=trial, mlflow_uri=mlflow_uri)
    except api.RaysearchError as err:
        report_error(err)
    console.print(f"trial [bold]{done.trial_id}[/] ({done.status}): adapter in {done.adapter}, "
                  f"retrain with `raysearch run --space {done.experiment}`", highlight=False, soft_wrap=True)
    base = f"AutoModelForCausalLM.from_pretrained('{done.base}')" if done.base is not None else "base_model"
    if done.base is not None:
        console.print(f"its base is the pruned model in {done.base} (recipe: {done.adapter.parent / 'pruning.json'})",
                      highlight=False, markup=False, soft_wrap=True)
    console.print(f"load it with: PeftModel.from_pretrained({base}, "
                  f"'{done.adapter}')", highlight=False, markup=False, soft_wrap=True)


@app.command()
def evaluate(
    name: Optional[str] = typer.Argument(None, help="Search name (omit with --adapter/--space)"),
    best: bool = typer.Option(False, "--best", help="The search's best trial by validation that ran to the end"),
    trial: Optional[str] = typer.Option(None, "--trial", help="Tune trial id (or prefix), MLflow run id or run name"),
    base: bool = typer.Option(False, "--base", help="The model without an adapter (zero-shot)"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="An exported adapter folder (with --space)"),
    space: Optional[Path] = typer.Option(None, "--space", help="The experiment file of --adapter or --base"),
    data: Optional[Path] = typer.Option(None, "--data", help="Score these records instead of the test split"),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="causal_lm: generate | loglik | options (default: the task's)"),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="At most this many records per source"),
    mlflow_uri: str = typer.Option("sqlite:///mlflow.db", "--mlflow-uri"),
) -> None:
    """Score an adapter (or the bare model) on data the search never saw: the experiment's test
    split (task.test_fraction) or --data FILE. A search's trial gets test_<metric> on its MLflow run."""
    from raysearch import api

    try:
        done = api.evaluate(name, best=best, trial=trial, base=base, adapter=adapter, space=space, data=data,
                            scoring=scoring, max_examples=max_examples, mlflow_uri=mlflow_uri)
    except api.RaysearchError as err:
        report_error(err)
    print_evaluation(done.label, done.result)
    if done.run_id is not None:
        console.print(f"recorded as {done.recorded_as} on MLflow run {done.run_id}", highlight=False)


def print_evaluation(label: str, result) -> None:
    from raysearch.records.tables import evaluation_table

    console.print(evaluation_table(label, result))


def print_leaderboard(search) -> None:
    """The ended search's trials, best first, under its progress output."""
    from raysearch import api
    from raysearch.records.tables import leaderboard_table

    try:
        console.print(leaderboard_table(search.trials(), search.name, pareto=False))
    except api.RaysearchError as err:
        report_error(err)


if __name__ == "__main__":
    app()
