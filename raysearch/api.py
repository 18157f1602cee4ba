"""raysearch from Python: the command line's verbs as functions that return objects.

    import raysearch
    search = raysearch.run("search_spaces/demo.yaml", overrides=["search.num_trials=4"])
    search.trials()          # every trial: a pandas DataFrame, best first
    search.best              # the best trial that ran to the end: config, metrics, MLflow run id
    search.export("out")     # its adapter as plain PEFT, and a file that retrains it

The other verbs by a search's name: `leaderboard` (and `cells` for `--by`), `export`,
`evaluate`, `report`, `resume_search`, `load_search`.

Bad input raises `RaysearchError`, whose `problems` are the lines `raysearch run` prints and
whose `exit_code` is the one it exits with (2); nothing has been started or written then.
The CLI (raysearch/cli.py) is a thin layer over these functions. Heavy libraries (Ray, MLflow,
pandas) load only when a function needs them: `import raysearch` stays quick.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from raysearch.experiment.problems import SpecError
from raysearch.experiment.sections import DEFAULT_STORAGE

if TYPE_CHECKING:
    import pandas
    from rich.console import Console

    from raysearch.experiment.spec import Spec

BAD_INPUT = 2
DEFAULT_MLFLOW = "sqlite:///mlflow.db"


class RaysearchError(Exception):
    """Why raysearch did not start (or go on): `problems`, one line each, as the CLI prints
    them; `exit_code`, what `raysearch` exits with (2: bad input, nothing started)."""

    def __init__(self, message: str, problems: Sequence[Any] = (), exit_code: int = BAD_INPUT) -> None:
        self.message, self.problems, self.exit_code = message, [str(p) for p in problems], exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.problems)])


def load(experiment: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), **options: Any) -> Spec:
    """An experiment (a YAML file's path or its contents as a dict), overridden (`a.b=value`
    strings) and validated; `options`: name, num_trials, mlflow_uri, storage."""
    from raysearch.experiment.spec import load_spec

    try:
        return load_spec(experiment, overrides, **options)
    except SpecError as err:
        source = "experiment" if isinstance(experiment, Mapping) else str(experiment)
        raise RaysearchError(f"{source}: invalid experiment file", err.problems) from None


@dataclass
class Trial:
    """One trial of a search, as MLflow recorded it."""

    trial_id: str
    run_id: str
    status: str
    pareto: bool
    config: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class Search:
    """A search's results: read from its MLflow runs and results folder whenever asked."""

    name: str
    storage_dir: str
    mlflow_uri: str
    objectives: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> dict[str, Any] | None:
        """How the search ended (raysearch/search/outcome.py): trials by status, errors by cause."""
        from raysearch.search.outcome import read_outcome

        return read_outcome(self.storage_dir)

    @property
    def exit_code(self) -> int:
        """What `raysearch run` would exit with: 0, 3 (no trial finished), 130 (interrupted)."""
        from raysearch.search.outcome import exit_code

        return exit_code(self.outcome)

    def trials(self, pareto: bool = False) -> pandas.DataFrame:
        """Every trial (or the Pareto front's), best first: trial_id, run_id, status, pareto,
        the objectives, then each sampled hyperparameter and each logged metric."""
        return leaderboard(self.name, mlflow_uri=self.mlflow_uri, pareto=pareto)

    @property
    def front(self) -> pandas.DataFrame:
        """The Pareto front of the trials that ran to the end."""
        return self.trials(pareto=True)

    @property
    def best(self) -> Trial:
        """The best trial that ran to the end, by the first objective (ties: fewer parameters)."""
        from raysearch.records.mlflow_reader import find_trial

        try:
            row = find_trial(self.mlflow_uri, self.name, None)
        except ValueError as err:
            raise RaysearchError(str(err)) from None
        from raysearch.records.tables import number  # MLflow keeps params as text

        return Trial(row["trial_id"], row["run_id"], row["status"], bool(row["pareto"]),
                     {k: number(v) for k, v in row["params"].items()}, dict(row["metrics"]))

    def export(self, out_dir: str | Path, trial: str | None = None) -> Path:
        """Write a trial's adapter (`out_dir/adapter`, plain PEFT) and `out_dir/experiment.yaml`,
        which retrains it; the best trial unless `trial` (id, prefix, run id or run name).
        Returns the adapter folder."""
        return export(self.name, out_dir, trial=trial, mlflow_uri=self.mlflow_uri).adapter

    def evaluate(self, trial: str | None = None, *, base: bool = False, data: str | Path | None = None,
                 scoring: str | None = None, max_examples: int | None = None) -> Any:
        """Score a trial (the best unless `trial`; `base`: the model without an adapter) on the
        test split or `data`, as `raysearch evaluate` does (logged on the trial's MLflow run)."""
        return evaluate(self.name, best=trial is None and not base, trial=trial, base=base, data=data, scoring=scoring,
                        max_examples=max_examples, mlflow_uri=self.mlflow_uri).result

    def report(self, out: str | Path | None = None, mlflow_ui: str = "http://127.0.0.1:5000") -> Path:
        """Write the search's HTML page (default `<storage>/<name>/report.html`); returns its path."""
        return report(self.name, folder=self.storage_dir, out=out, mlflow_uri=self.mlflow_uri, mlflow_ui=mlflow_ui).path


# --- the read-only verbs: leaderboard, export, evaluate, report ----------------------------


def leaderboard(name: str, *, mlflow_uri: str = DEFAULT_MLFLOW, pareto: bool = False,
                top: int | None = None) -> pandas.DataFrame:
    """`raysearch leaderboard`: a search's trials best first (`pareto`: the front of those that
    ran to the end; `top`: the best N), one row each: trial_id, run_id, status, pareto, the
    objectives, each sampled hyperparameter (numbers as numbers) and each logged metric."""
    import pandas

    from raysearch.records.mlflow_reader import leaderboard as rows

    try:
        return pandas.DataFrame([_flat(row) for row in rows(mlflow_uri, name, pareto_only=pareto, top=top)])
    except ValueError as err:
        raise RaysearchError(str(err)) from None


def cells(name: str, by: Sequence[str], *, mlflow_uri: str = DEFAULT_MLFLOW) -> pandas.DataFrame:
    """`raysearch leaderboard --by`: each cell's best configuration (the first objective averaged
    over its seeds), with `trials`, `best`, `spread` over seeds, `seeds`, `config` and
    `trial_ids`; `attrs` holds the objective and its sense."""
    import pandas

    from raysearch.records.mlflow_reader import cell_table, leaderboard as rows, search_objectives

    try:
        trials = rows(mlflow_uri, name)
        known = sorted({k for r in trials for k in r["params"]})
        unknown = [d for d in by if d not in known]
        if unknown:
            raise ValueError(f"--by {','.join(by)}: no trial of search {name!r} has {unknown}; its params: {known}")
        objective, sense = next(iter(search_objectives(mlflow_uri, name).items()))
    except ValueError as err:
        raise RaysearchError(str(err)) from None
    frame = pandas.DataFrame(cell_table(trials, list(by), objective, sense))
    frame.attrs.update(objective=objective, sense=sense, by=list(by))
    return frame


@dataclass
class Exported:
    """What `export` wrote: the trial's adapter folder and the experiment file that retrains it."""

    trial_id: str
    status: str
    adapter: Path
    experiment: Path
    base: Path | None = None
    """A trial on a pruned base (`pruning:`): the pruned folder its adapter loads on (named in
    the adapter's config and in `pruning.json` beside it); None for the experiment's own model."""


def export(name: str, out_dir: str | Path, *, trial: str | None = None, mlflow_uri: str = DEFAULT_MLFLOW) -> Exported:
    """`raysearch export`: a trial's adapter (plain PEFT) and an experiment file that retrains
    it, into `out_dir` (new or empty); the best trial that ran to the end unless `trial`."""
    from raysearch.records.export_trial import export_trial

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise RaysearchError(f"export: {out} exists and is not empty; choose a new folder.")
    try:
        row, adapter, experiment, base = export_trial(mlflow_uri, name, trial, out)
    except (ValueError, SpecError) as err:
        raise RaysearchError(str(err)) from None
    return Exported(row["trial_id"], row["status"], Path(adapter), Path(experiment), base)


@dataclass
class Evaluation:
    """What `evaluate` scored (`label`), its result (per-source scores, `overall`, `correct`)
    and the MLflow run and metric it was recorded as (None for an adapter outside a search)."""

    label: str
    result: Any
    run_id: str | None
    recorded_as: str | None


def evaluate(name: str | None = None, *, best: bool = False, trial: str | None = None, base: bool = False,
             adapter: str | Path | None = None, space: str | Path | None = None, data: str | Path | None = None,
             scoring: str | None = None, max_examples: int | None = None,
             mlflow_uri: str = DEFAULT_MLFLOW) -> Evaluation:
    """`raysearch evaluate`: score a search's trial (`best` or `trial`) or its base model
    (`base`), or an exported `adapter` (or `base`) with its experiment file `space`, on the
    test split or on `data`."""
    chosen = sum([best, trial is not None, base and name is not None])
    if name is not None and chosen != 1:
        raise RaysearchError("evaluate: with a search name give exactly one of --best, --trial ID or --base.")
    if name is not None and (adapter is not None or space is not None):
        raise RaysearchError("evaluate: give a search name, or --adapter DIR / --base with --space FILE, not both.")
    if name is None and (space is None or (adapter is None) == (not base) or best or trial is not None):
        raise RaysearchError("evaluate: give a search name with --best, --trial ID or --base; or --space FILE with "
                             "--adapter DIR (an exported adapter) or --base.")
    if scoring is not None and scoring not in ("generate", "loglik", "options"):
        raise RaysearchError(f"evaluate: --scoring {scoring!r}: allowed: generate, loglik, options.")
    if max_examples is not None and max_examples <= 0:
        raise RaysearchError(f"evaluate: --max-examples {max_examples}: must be a positive number.")
    for option, path in (("--data", data), ("--space", space)):
        if path is not None and not Path(path).is_file():
            raise RaysearchError(f"evaluate: {option} {path}: no such file.")
    if adapter is not None and not Path(adapter).is_dir():
        raise RaysearchError(f"evaluate: --adapter {adapter}: no such folder.")
    from raysearch.records.score_trial import evaluate_command

    try:
        target, result = evaluate_command(name, best=best, trial=trial, base=base,
                                          adapter=Path(adapter) if adapter else None,
                                          space=Path(space) if space else None, data=Path(data) if data else None,
                                          scoring=scoring, max_examples=max_examples, mlflow_uri=mlflow_uri)
    except SpecError as err:
        raise RaysearchError(f"evaluate: invalid experiment file:\n{err}") from None
    except ValueError as err:
        raise RaysearchError(f"evaluate: {err}") from None
    recorded = f"{target.prefix}{result.metric}" if target.run_id is not None else None
    return Evaluation(target.label, result, target.run_id, recorded)


@dataclass
class Report:
    """The page `report` wrote, and the search's experiment page in the MLflow UI."""

    path: Path
    mlflow_page: str


def report(name: str, *, storage: str | None = None, folder: str | None = None, out: str | Path | None = None,
           mlflow_uri: str = DEFAULT_MLFLOW, mlflow_ui: str = "http://127.0.0.1:5000") -> Report:
    """`raysearch report`: the search's HTML page (default `<storage>/<name>/report.html`), also
    logged on its MLflow run. `folder`: the search's own folder instead of `storage`."""
    from raysearch.search import storage as storages
    from raysearch.records.report_page import write_report

    folder = folder or storages.search_dir(storage or DEFAULT_STORAGE, name)
    local = storages.local_path(folder)
    target = Path(out) if out else (local / "report.html" if local is not None else Path(f"{name}-report.html"))
    try:
        path, page = write_report(name, folder, mlflow_uri, target, mlflow_ui)
    except ValueError as err:
        raise RaysearchError(f"report: {err}") from None
    return Report(Path(path), page)


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    from raysearch.records.tables import number  # MLflow keeps params as text

    flat = {k: v for k, v in row.items() if k not in ("params", "metrics")}
    flat.update({k: number(v) for k, v in row.get("params", {}).items() if k not in flat})
    flat.update({k: v for k, v in row.get("metrics", {}).items() if k not in flat})
    return flat


def _console(progress: bool | Console) -> Console:
    from rich.console import Console

    if not isinstance(progress, bool):
        return progress
    return Console(quiet=not progress)


def has_results(storage_dir: str) -> bool:
    """Whether a search started in `storage_dir` (it writes its experiment file first; a
    folder without one is what a driver killed while starting Ray left, with nothing in it)."""
    from raysearch.search import storage
    try:
        return storage.read_text(storage_dir, storage.EXPERIMENT_FILE) is not None
    except OSError as err:  # an object store that cannot be reached or read
        raise RaysearchError(f"storage: cannot read {storage_dir}: {err}") from None


def check(spec: Spec, storage_dir: str, restart: bool = False) -> None:
    """What `run` checks on this machine before Ray, MLflow or any folder is touched."""
    if has_results(storage_dir) and not restart:
        raise RaysearchError(f"storage: results for search '{spec.name}' already exist in {storage_dir}. "
                             "Pass --resume to continue that search, --restart (or --overwrite) to delete them "
                             "and start over, or --name to start a new search.")
    from raysearch.experiment.preflight import machine_problems  # data, model, MLflow, storage, resources

    problems = machine_problems(spec, storage_dir)
    if problems:
        count = len(problems)
        raise RaysearchError(f"{count} problem{'s' if count != 1 else ''} before starting search '{spec.name}':",
                             problems)


def run(experiment: str | Path | Mapping[str, Any], *, overrides: Sequence[str] = (), name: str | None = None,
        num_trials: int | None = None, mlflow_uri: str | None = None, storage: str | None = None,
        restart: bool = False, resume: bool = False, progress: bool | Console = True) -> Search:
    """Run a search (`raysearch run`) and return it once it has ended. `resume`: continue the
    earlier results of this search if there are any; `restart`: delete them first.
    `progress`: False for no output, or a rich Console to print to. Ctrl-C stops the search
    (KeyboardInterrupt, re-raised once what finished is recorded); `resume=True` continues it."""
    spec = load(experiment, overrides, name=name, num_trials=num_trials, mlflow_uri=mlflow_uri, storage=storage)
    if resume and restart:
        raise RaysearchError("give one of resume and restart, not both.")
    if resume and has_results(spec.storage_dir):
        return resume_search(spec.name, storage=spec.storage or DEFAULT_STORAGE, mlflow_uri=mlflow_uri,
                             progress=progress)
    check(spec, spec.storage_dir, restart)
    return execute(spec, restart=restart, progress=progress)


def execute(spec: Spec, *, restart: bool = False, progress: bool | Console = True) -> Search:
    """Run a validated experiment that has passed `check` (what `run` does after both)."""
    from raysearch.search.cluster import ClusterSetupError
    from raysearch.search.driver import run_search  # heavy imports only once input is valid

    try:
        run_search(spec, spec.storage_dir, _console(progress), overwrite=restart)
    except ClusterSetupError as err:  # raised after joining the cluster, before anything is written
        raise RaysearchError(str(err)) from None
    return Search(spec.name, spec.storage_dir, spec.tracking.mlflow_uri, dict(spec.search.objectives))


def resume_search(name: str, *, storage: str | None = None, mlflow_uri: str | None = None,
                  retry_errored: bool = False, progress: bool | Console = True) -> Search:
    """Continue an interrupted search from its results folder (`raysearch resume`)."""
    from raysearch.experiment.preflight import machine_problems
    from raysearch.search.driver import ResumeError, saved_spec

    try:
        spec = saved_spec(name, storage or DEFAULT_STORAGE, mlflow_uri)
    except ResumeError as err:
        raise RaysearchError(f"resume: {err}") from None
    problems = machine_problems(spec, spec.storage_dir)
    if problems:
        raise RaysearchError("cannot resume:", problems)
    from raysearch.search.cluster import ClusterSetupError
    from raysearch.search.driver import resume_search as resume_saved

    try:
        resume_saved(spec, spec.storage_dir, _console(progress), retry_errored=retry_errored)
    except ClusterSetupError as err:
        raise RaysearchError(str(err)) from None
    return Search(spec.name, spec.storage_dir, spec.tracking.mlflow_uri, dict(spec.search.objectives))


def load_search(name: str, *, storage: str | None = None, mlflow_uri: str | None = None) -> Search:
    """A search that ran earlier, from its results folder (`<storage>/<name>`) and MLflow store
    (default: the one it ran with)."""
    from raysearch.search.driver import ResumeError, saved_spec

    try:
        spec = saved_spec(name, storage or DEFAULT_STORAGE, mlflow_uri)
    except ResumeError as err:
        raise RaysearchError(str(err)) from None
    return Search(spec.name, spec.storage_dir, spec.tracking.mlflow_uri, dict(spec.search.objectives))
